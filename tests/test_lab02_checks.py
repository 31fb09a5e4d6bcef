"""Lab 02's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab02
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_02_attention_and_kv_cache.ipynb", {"torch": torch, "F": F})


def test_solution_passes_every_check(capsys):
    lab02.check_1(SOL["rope"])
    lab02.check_2(SOL["repeat_kv"])
    lab02.check_3(SOL["causal_attention"])
    lab02.check_4(SOL["attend_with_cache"])
    lab02.check_5(SOL["kv_bytes_per_token"])
    lab02.check_6(SOL["absorb_query"])
    lab02.check_7(SOL["absorbed_output_weight"], SOL["absorb_query"], SOL["rope"])
    lab02.check_8(SOL["quantize_kv"], SOL["dequantize_kv"])
    lab02.check_9(SOL["mla_decode_step"])
    lab02.check_10(SOL["crossover_tokens"])
    assert capsys.readouterr().out.count("✅") == 10


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_interleaved_pairs_and_wrong_frequencies():
    def interleaved(x, positions, theta=10_000.0):  # GPT-J / Meta-original layout: pairs (2i, 2i+1)
        d = x.shape[-1]
        inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
        a = positions.float()[:, None] * inv
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1).flatten(-2)

    def per_dim_freq(x, positions, theta=10_000.0):  # exponent i/d instead of 2i/d
        d = x.shape[-1]
        inv = 1.0 / theta ** (torch.arange(0, d // 2).float() / d)
        a = torch.cat([positions.float()[:, None] * inv] * 2, -1)
        return x * a.cos() + torch.cat([-x[..., d // 2:], x[..., :d // 2]], -1) * a.sin()

    assert "max |difference|" in _rejects(lab02.check_1, interleaved, match="Exercise 1")
    _rejects(lab02.check_1, per_dim_freq)
    _rejects(lab02.check_1, lambda x, p, t=10_000.0: x)


# ---------------------------------------------------------------- exercise 2
def test_check_2_rejects_tiling_instead_of_grouping():
    msg = _rejects(lab02.check_2, lambda x, n: x.repeat(1, n, 1, 1))
    assert "consecutively" in msg
    _rejects(lab02.check_2, lambda x, n: x, match="shape")


# ---------------------------------------------------------------- exercise 3
def test_check_3_rejects_start_aligned_mask_no_mask_and_wrong_scale():
    start_aligned = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    no_mask = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    no_scale = lambda q, k, v: SOL["causal_attention"](q * q.shape[-1] ** 0.5, k, v)
    assert "decode" in _rejects(lab02.check_3, start_aligned)
    _rejects(lab02.check_3, no_mask)
    _rejects(lab02.check_3, no_scale)


# ---------------------------------------------------------------- exercise 4
def test_check_4_rejects_caching_repeated_heads_and_forgetting_the_past():
    def caches_repeated(q, k, v, cache):
        n = q.shape[1] // k.shape[1]
        return SOL["attend_with_cache"](q, SOL["repeat_kv"](k, n), SOL["repeat_kv"](v, n), cache)

    def forgets(q, k, v, cache):
        out, _ = SOL["attend_with_cache"](q, k, v, None)
        return out, (k, v)

    assert "cached keys" in _rejects(lab02.check_4, caches_repeated)
    _rejects(lab02.check_4, forgets, match="cached keys after 2 tokens")
    assert "tuple" in _rejects(lab02.check_4, lambda q, k, v, c: q)


# ---------------------------------------------------------------- exercise 5
def test_check_5_rejects_mla_with_separate_values_and_gqa_with_query_heads():
    def mla_twice(kind, n_layers, n_heads, head_dim, n_kv_heads=0, d_c=0, d_rope=0, bytes_per_element=2):
        if kind == "MLA":
            return 2 * (d_c + d_rope) * n_layers * bytes_per_element
        return SOL["kv_bytes_per_token"](kind, n_layers, n_heads, head_dim, n_kv_heads, d_c, d_rope,
                                         bytes_per_element)

    def gqa_query_heads(kind, n_layers, n_heads, head_dim, n_kv_heads=0, d_c=0, d_rope=0, bytes_per_element=2):
        if kind == "GQA":
            n_kv_heads = n_heads
        return SOL["kv_bytes_per_token"](kind, n_layers, n_heads, head_dim, n_kv_heads, d_c, d_rope,
                                         bytes_per_element)

    assert "Table 9" in _rejects(lab02.check_5, mla_twice)
    assert "transformers Llama cache" in _rejects(lab02.check_5, gqa_query_heads)


# ---------------------------------------------------------------- exercises 6 and 7
def test_check_6_rejects_wrong_contraction():
    summed_heads = lambda q, w: torch.einsum("bhtn,gnc->bhtc", q, w)   # mixes all heads' W_UK
    _rejects(lab02.check_6, summed_heads, match="scores")
    _rejects(lab02.check_6, lambda q, w: q, match="shape")


def test_check_7_rejects_wrong_merge_and_reports_bad_rope():
    def no_uv(w_o, w_uv):  # ignores W_UV
        H, dv, dc = w_uv.shape
        return w_o.view(-1, H, dv)[..., :1].expand(-1, H, dc).reshape(-1, H * dc)

    def transposed(w_o, w_uv):  # heads and latent dims swapped in the flattening
        H, dv, dc = w_uv.shape
        return torch.einsum("dhv,hvc->dch", w_o.view(-1, H, dv), w_uv).reshape(-1, H * dc)

    _rejects(lab02.check_7, no_uv, SOL["absorb_query"], SOL["rope"])
    _rejects(lab02.check_7, transposed, SOL["absorb_query"], SOL["rope"])
    msg = _rejects(lab02.check_7, SOL["absorbed_output_weight"], SOL["absorb_query"], lambda x, p, t=1e4: x)
    assert "transformers' DeepSeek-V3" in msg


def test_stub_reports_not_done():
    def stub(x, positions, theta=10_000.0):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab02.check_1(stub)


def test_crash_inside_learner_code_is_a_one_line_verdict():
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab02.check_6(lambda q, w: 1 / 0)


# ---------------------------------------------------------------- exercise 7: the margin of the RoPE check
def test_check_7_rejects_wrong_rope_by_more_than_100x_its_tolerance():
    """At the checks' std-0.2 init a wrong RoPE moves the absorbed MLA output far beyond check_7's atol (1e-4)."""

    def interleaved(x, positions, theta=10_000.0):
        d = x.shape[-1]
        a = positions.float()[:, None] / theta ** (torch.arange(0, d, 2).float() / d)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1).flatten(-2)

    wrong = {"no RoPE": lambda x, p, t=1e4: x, "interleaved pairs": interleaved,
             "wrong frequencies (angles x7)": lambda x, p, t=1e4: SOL["rope"](x, p * 7, t)}
    for q_lora_rank in (None, 32):
        cfg, model = lab02._mla_case(q_lora_rank)
        attn = model.model.layers[0].self_attn
        x = lab02._rand(2, 6, cfg.hidden_size, seed=4)
        with torch.inference_mode():
            ref, _ = attn(x, position_embeddings=model.model.rotary_emb(x, torch.arange(6)[None]), attention_mask=None)
            good = lab02._absorbed_mla(attn, cfg, x, SOL["absorb_query"], SOL["absorbed_output_weight"], SOL["rope"])
            assert (good - ref).abs().max() < 1e-4
            for name, rope in wrong.items():
                bad = lab02._absorbed_mla(attn, cfg, x, SOL["absorb_query"], SOL["absorbed_output_weight"], rope)
                margin = (bad - ref).abs().max().item() / 1e-4
                print(f"{name}, q_lora_rank={q_lora_rank}: {margin:,.0f}x the tolerance")
                assert margin > 100, f"{name}: only {margin:.1f}x the tolerance"
                _rejects(lab02.check_7, SOL["absorbed_output_weight"], SOL["absorb_query"], rope)


# ---------------------------------------------------------------- exercise 8
def _quantizer(scale_fn, round_fn=torch.round, dtype=torch.int8):
    def quantize(x, bits):
        qmax = 2 ** (bits - 1) - 1
        scale = scale_fn(x, qmax).to(torch.float16)
        return round_fn(x / scale.float()).clamp(-qmax - 1, qmax).to(dtype), scale
    return quantize


def test_check_8_rejects_per_tensor_scale_off_by_one_range_truncation_and_float_storage():
    per_token = lambda x, qmax: x.abs().amax(-1, keepdim=True) / qmax
    per_tensor = lambda x, qmax: (x.abs().amax() / qmax).expand(*x.shape[:-1], 1)   # one scale, broadcast
    off_by_one = lambda x, qmax: x.abs().amax(-1, keepdim=True) / (qmax + 1)         # 2^(bits-1): max clips
    deq = SOL["dequantize_kv"]
    assert "per token and head" in _rejects(lab02.check_8, _quantizer(per_tensor), deq, match="Exercise 8")
    _rejects(lab02.check_8, _quantizer(off_by_one), deq)
    _rejects(lab02.check_8, _quantizer(per_token, round_fn=torch.trunc), deq)          # truncates: error up to 1 step
    _rejects(lab02.check_8, _quantizer(per_token, dtype=torch.float32), deq, match="dtype")
    _rejects(lab02.check_8, SOL["quantize_kv"], lambda q, s: q.float(), match="step")    # forgot the scale


# ---------------------------------------------------------------- exercise 9
def test_check_9_rejects_unrotated_cache_lost_position_missing_norm_and_wrong_scale():
    rope, absorb = SOL["rope"], SOL["absorb_query"]
    step = SOL["mla_decode_step"]

    def position_zero(attn, cfg, x, pos, cache):                  # decodes every token at position 0
        return step(attn, cfg, x, 0, cache)

    def no_norm(attn, cfg, x, pos, cache):                        # caches the latent before kv_a_layernorm
        orig = attn.kv_a_layernorm.forward
        attn.kv_a_layernorm.forward = lambda t: t
        try:
            return step(attn, cfg, x, pos, cache)
        finally:
            attn.kv_a_layernorm.forward = orig

    def naive_cache(attn, cfg, x, pos, cache):                    # caches per-head keys instead of the latent
        out, (c, kr) = step(attn, cfg, x, pos, cache)
        return out, (attn.kv_b_proj(c), kr)

    def wrong_scale(attn, cfg, x, pos, cache):                    # 1/sqrt(d_nope) instead of attn.scaling
        orig = attn.scaling
        attn.scaling = cfg.qk_nope_head_dim ** -0.5
        try:
            return step(attn, cfg, x, pos, cache)
        finally:
            attn.scaling = orig

    _rejects(lab02.check_9, position_zero, match="RoPE keys|outputs")
    _rejects(lab02.check_9, no_norm, match="latents")
    _rejects(lab02.check_9, naive_cache, match="shape")
    _rejects(lab02.check_9, wrong_scale, match="outputs")
    assert rope is not None and absorb is not None


# ---------------------------------------------------------------- exercise 10
def test_check_10_rejects_per_sequence_and_inverted_crossover():
    _rejects(lab02.check_10, lambda w, kv: kv / w, match="Exercise 10")
    _rejects(lab02.check_10, lambda w, kv: w / (2 * kv))          # counts K and V twice
    _rejects(lab02.check_10, lambda w, kv: w / kv / 8)            # per sequence of a batch of 8
