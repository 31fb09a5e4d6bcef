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
    lab01.check_8(SOL["step_time_bounds"])
    assert capsys.readouterr().out.count("✅") == 8


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

    msg = _rejects(lab01.check_2, no_attention)
    assert "grows with the context" in msg and "constant part is right" in msg
    msg = _rejects(lab01.check_2, two_n)
    assert "constant part" in msg and "context term is right" in msg


def test_check_2_names_both_terms_and_rejects_a_curve():
    def both_wrong(cfg, context):  # MHA-style attention with the kv heads, and no head matmul
        c = SOL["params_from_config"](cfg)
        return 2 * (c["attention"] + c["mlp"]) + 4 * cfg.num_hidden_layers * context * cfg.num_key_value_heads * (
            cfg.head_dim) * 3

    assert "both terms are off" in _rejects(lab01.check_2, both_wrong)

    def causal_half_squared(cfg, context):  # quadratic in the context
        return SOL["forward_flops_per_token"](cfg, context) + context**2

    assert "not a straight line" in _rejects(lab01.check_2, causal_half_squared)


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
        with torch.inference_mode():
            ids = torch.cat([prompt_ids, model(prompt_ids).logits[:, -1:].argmax(-1)], dim=1)
            t0 = time.perf_counter()
            for _ in range(n_new - 1):
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


def test_check_7_rejects_a_timing_that_includes_the_prefill():
    def timed_with_prefill(model, prompt_ids, n_new):
        t0 = time.perf_counter()
        ids, _ = SOL["greedy_decode"](model, prompt_ids, n_new)
        return ids, time.perf_counter() - t0

    def timed_generate(model, prompt_ids, n_new):  # tokens are right, but generate() runs the prefill inside the timing
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=n_new,
                                 do_sample=False, pad_token_id=0)
        return out[0, prompt_ids.shape[1]:], time.perf_counter() - t0

    assert "includes the prefill" in _rejects(lab01.check_7, timed_with_prefill)
    assert "includes the prefill" in _rejects(lab01.check_7, timed_generate)


def test_check_7_rejects_timing_only_one_step():
    def one_step(model, prompt_ids, n_new):
        new = []
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            nxt = model(prompt_ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            new.append(nxt)
            seconds = 0.0
            for i in range(n_new - 1):
                t0 = time.perf_counter()
                nxt = model(nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
                if i == 0:
                    seconds = time.perf_counter() - t0
                new.append(nxt)
        return torch.cat(new, dim=1)[0], seconds

    assert "shorter than the 5 decode steps" in _rejects(lab01.check_7, one_step)


# ---------------------------------------------------------------- exercise 8
def test_check_8_rejects_wrong_bounds():
    right = SOL["step_time_bounds"]
    assert "low bound" in _rejects(lab01.check_8, lambda b, t, f, p: (b * f / p, right(b, t, f, p)[1]))  # no floor
    assert "high bound" in _rejects(lab01.check_8, lambda b, t, f, p: (right(b, t, f, p)[0],) * 2)      # high = low
    assert "bound for batch 4" in _rejects(lab01.check_8, lambda b, t, f, p: (max(t, f / p), t + f / p))  # no batch
    assert "tuple" in _rejects(lab01.check_8, lambda b, t, f, p: t)


def test_check_8_grades_the_measurement_with_a_band():
    right = SOL["step_time_bounds"]
    t1, F, P = 0.08, 2.7e8, 5e10           # knee near batch 15; batch 32: low 0.173 s, high 0.253 s
    lab01.measure_8(right, {1: 0.08, 32: 0.30}, t1, F, P)                    # inside the 1.5x band
    assert "outside your bounds" in _rejects(lab01.measure_8, right, {1: 0.08, 32: 0.6}, t1, F, P)
    assert "outside your bounds" in _rejects(lab01.measure_8, right, {1: 0.08, 32: 0.05}, t1, F, P)
    assert "positive seconds" in _rejects(lab01.measure_8, right, {1: 0.08, 32: -1.0}, t1, F, P)


def test_stub_reports_not_done():
    def stub(cfg):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab01.check_1(stub)


def test_crash_inside_learner_code_is_a_one_line_verdict():
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab01.check_6(lambda *a: 1 / 0)
