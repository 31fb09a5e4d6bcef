"""Lab 01's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import DynamicCache

from utils import measure
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab01
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_01_measuring_cost.ipynb",
                       {"torch": torch, "time": time, "DynamicCache": DynamicCache, "measure": measure})


def test_solution_passes_every_check(capsys):
    lab01.check_1(SOL["params_from_config"])
    lab01.check_2(SOL["forward_flops_per_token"])
    lab01.check_3(SOL["kv_bytes_per_token"])
    lab01.check_4(SOL["gemm_flops_per_second"], SOL["read_bytes_per_second"])
    lab01.check_5(SOL["linear_intensity"], SOL["attainable"])
    lab01.check_6(SOL["decode_ceiling"])
    lab01.check_7(SOL["greedy_decode"])
    assert capsys.readouterr().out.count("✅") == 7


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_untied_head_counted_for_tied_models():
    def wrong(cfg):
        c = SOL["params_from_config"](cfg)
        c["lm_head"] = cfg.vocab_size * cfg.hidden_size
        c["total"] = sum(v for k, v in c.items() if k != "total")
        return c

    msg = _rejects(lab01.check_1, wrong, match="Exercise 1")
    assert "lm_head" in msg and "expected 0" in msg


def test_check_1_rejects_mha_count_for_gqa():
    def wrong(cfg):
        d, L, h = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads * cfg.head_dim
        c = SOL["params_from_config"](cfg)
        c["attention"] = L * 4 * d * h  # as if every head had its own K and V
        c["total"] = sum(v for k, v in c.items() if k != "total")
        return c

    assert "attention" in _rejects(lab01.check_1, wrong)


def test_check_1_rejects_missing_final_norm_and_wrong_keys():
    def no_final_norm(cfg):
        c = SOL["params_from_config"](cfg)
        c["norms"] -= cfg.hidden_size
        c["total"] -= cfg.hidden_size
        return c

    assert "norms" in _rejects(lab01.check_1, no_final_norm)
    assert "keys should be" in _rejects(lab01.check_1, lambda cfg: {"total": 1})


# ---------------------------------------------------------------- exercise 2
def test_check_2_rejects_ignoring_attention_and_counting_the_lookup():
    def no_attention(cfg, context):
        c = SOL["params_from_config"](cfg)
        return 2 * (c["attention"] + c["mlp"] + cfg.vocab_size * cfg.hidden_size)

    def two_n(cfg, context):  # counts the untied embedding lookup as a matmul
        return 2 * SOL["params_from_config"](cfg)["total"] + 4 * cfg.num_hidden_layers * context * (
            cfg.num_attention_heads * cfg.head_dim)

    assert "FLOPs per token" in _rejects(lab01.check_2, no_attention)
    _rejects(lab01.check_2, two_n)


# ---------------------------------------------------------------- exercise 3
def test_check_3_rejects_query_heads_and_missing_values():
    _rejects(lab01.check_3, lambda cfg, b: 2 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * b,
             match="KV bytes/token")
    _rejects(lab01.check_3, lambda cfg, b: cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * b)


# ---------------------------------------------------------------- exercises 4-6
def test_check_4_rejects_missing_factor_two():
    msg = _rejects(lab01.check_4, lambda m, k, n, s: m * k * n / s, SOL["read_bytes_per_second"])
    assert "off by -50%" in msg


def test_check_5_rejects_weights_only_bytes_and_max():
    _rejects(lab01.check_5, lambda m, k, n, b: 2 * m * k * n / (b * k * n), SOL["attainable"], match="intensity")
    _rejects(lab01.check_5, SOL["linear_intensity"], lambda i, p, b: max(p, i * b), match="attainable")


def test_check_6_rejects_ignoring_the_kv_cache():
    _rejects(lab01.check_6, lambda n, bpp, ctx, kv, bw: bw / (n * bpp), match="ceiling")


# ---------------------------------------------------------------- exercise 7
def test_check_7_rejects_decoding_without_the_cache():
    def no_cache(model, prompt_ids, n_new):
        ids = prompt_ids
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(n_new):
                nxt = model(ids).logits[:, -1:].argmax(-1)
                ids = torch.cat([ids, nxt], dim=1)
        return ids[0, prompt_ids.shape[1]:], time.perf_counter() - t0

    assert "only the newest token" in _rejects(lab01.check_7, no_cache)


def test_check_7_rejects_wrong_tokens_and_shape():
    def sampled(model, prompt_ids, n_new):
        ids, s = SOL["greedy_decode"](model, prompt_ids, n_new)
        return (ids + 1) % model.config.vocab_size, s

    assert "differ from greedy" in _rejects(lab01.check_7, sampled)
    assert "tuple" in _rejects(lab01.check_7, lambda m, p, n: SOL["greedy_decode"](m, p, n)[0])


def test_stub_reports_not_done():
    def stub(cfg):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab01.check_1(stub)


def test_crash_inside_learner_code_is_a_one_line_verdict():
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab01.check_6(lambda *a: 1 / 0)
