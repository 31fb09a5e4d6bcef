"""Hidden tests of lab 02 (attention and the KV cache). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..checking import CheckFailed, expect_allclose, expect_close, expect_tensor, run_check
from ..checking import seeded_randn as _rand

SHARP_STD = 0.2


# --------------------------------------------------------------------------- exercise 1
def _hf_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    H, d = x.shape[1], x.shape[-1]
    cfg = LlamaConfig(hidden_size=H * d, num_attention_heads=H, head_dim=d,
                      rope_parameters={"rope_type": "default", "rope_theta": theta})
    cos, sin = LlamaRotaryEmbedding(config=cfg)(x, positions[None])
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def check_1(fn) -> None:
    """Exercise 1: RoPE against transformers' Llama rotary embedding."""

    def tests():
        for (B, H, T, d), start, theta in [((1, 2, 5, 8), 0, 10_000.0), ((2, 3, 7, 16), 11, 100_000.0),
                                           ((1, 1, 4, 64), 1000, 500.0)]:
            x = _rand(B, H, T, d, seed=d)
            pos = torch.arange(start, start + T)
            expect_allclose(f"rope(x of shape {(B, H, T, d)}, positions {start}..{start + T - 1}, theta={theta:g})",
                             fn(x, pos, theta), _hf_rope(x, pos, theta), atol=1e-4)
        # the property that makes RoPE useful: q.k depends only on the distance
        q, k = _rand(1, 1, 1, 32, seed=1), _rand(1, 1, 1, 32, seed=2)
        a = (fn(q, torch.tensor([3]), 10_000.0) * fn(k, torch.tensor([1]), 10_000.0)).sum()
        b = (fn(q, torch.tensor([103]), 10_000.0) * fn(k, torch.tensor([101]), 10_000.0)).sum()
        expect_close("q.k at positions (103, 101) vs (3, 1)", b, a.item(), rtol=1e-4, atol=1e-4)
        return "matches transformers, and q·k depends only on the distance between positions."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(fn) -> None:
    """Exercise 2: repeat_kv against transformers."""
    from transformers.models.llama.modeling_llama import repeat_kv

    def tests():
        for shape, n_rep in [((1, 2, 3, 4), 3), ((2, 3, 5, 8), 2), ((1, 4, 2, 4), 1), ((1, 1, 3, 2), 4)]:
            x = _rand(*shape, seed=n_rep)
            want = repeat_kv(x, n_rep)
            got = fn(x, n_rep)
            expect_tensor(f"repeat_kv(x {shape}, n_rep={n_rep})", got, shape=want.shape)
            if not torch.equal(got, want):
                head = next(h for h in range(want.shape[1]) if not torch.equal(got[:, h], want[:, h]))
                raise CheckFailed(f"repeat_kv(x {shape}, n_rep={n_rep}): output head {head} should be a copy of KV "
                                  f"head {head // n_rep} (query heads are grouped consecutively)")
        return "each KV head now serves a consecutive group of query heads."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def _reference_attention(q, k, v, scale=None):
    T, S = q.shape[-2], k.shape[-2]
    mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def check_3(fn) -> None:
    """Exercise 3: causal attention where the queries are the last T of S positions."""

    def tests():
        for B, H, T, S, d in [(1, 2, 6, 6, 8), (2, 3, 1, 9, 16), (1, 2, 3, 10, 8)]:
            q, k, v = _rand(B, H, T, d, seed=1), _rand(B, H, S, d, seed=2), _rand(B, H, S, d, seed=3)
            what = f"attention with {T} queries over {S} keys" + (" (decode: queries at the end)" if T < S else "")
            expect_allclose(what, fn(q, k, v), _reference_attention(q, k, v), atol=1e-5)
        return "causal mask aligned to the end, scaled by 1/sqrt(d)."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(fn) -> None:
    """Exercise 4: one decode step with a (GQA) KV cache, token by token == full causal attention."""
    from transformers.models.llama.modeling_llama import repeat_kv

    def tests():
        B, H, Hkv, T, d = 2, 6, 2, 7, 8
        q, k, v = _rand(B, H, T, d, seed=4), _rand(B, Hkv, T, d, seed=5), _rand(B, Hkv, T, d, seed=6)
        want = _reference_attention(q, repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv))
        cache, outs = None, []
        for t in range(T):
            res = fn(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], cache)
            if not (isinstance(res, tuple) and len(res) == 2):
                raise CheckFailed("return a tuple (output, cache)")
            out, cache = res
            if not (isinstance(cache, tuple) and len(cache) == 2):
                raise CheckFailed(f"the cache should be a tuple (keys, values), got {type(cache).__name__}")
            expect_tensor(f"cached keys after {t + 1} tokens", cache[0], shape=(B, Hkv, t + 1, d))
            expect_tensor(f"cached values after {t + 1} tokens", cache[1], shape=(B, Hkv, t + 1, d))
            expect_tensor(f"output of step {t}", out, shape=(B, H, 1, d))
            outs.append(out)
        expect_allclose("outputs of all steps, concatenated, vs full causal attention", torch.cat(outs, dim=2), want)
        return f"the cache holds only the {Hkv} KV heads and grows by one token per step."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
@functools.cache
def _tiny_models():
    from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig

    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8)).eval()
    ds_cfg = DeepseekV3Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
                              n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                              first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=16,
                              qk_rope_head_dim=8, v_head_dim=16, rope_interleave=False)
    ds = AutoModelForCausalLM.from_config(ds_cfg).eval()
    return llama, ds


def _cache_bytes_per_token(model, T: int = 9) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(torch.arange(T)[None], cache=cache, use_cache=True)
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) / T


def check_5(fn) -> None:
    """Exercise 5: KV bytes per token for MHA/GQA/MQA/MLA: DeepSeek-V2's Table 9 and real transformers caches."""

    def tests():
        lite = dict(n_layers=27, n_heads=16, head_dim=128, d_c=512, d_rope=64)
        expect_close("MHA elements/token for DeepSeek-V2-Lite's shape (Table 9: 110.6K)",
                     fn("MHA", bytes_per_element=1, **lite), 110_592, rtol=0)
        expect_close("MLA elements/token for DeepSeek-V2-Lite (Table 9: 15.6K)",
                     fn("MLA", bytes_per_element=1, **lite), 15_552, rtol=0)
        expect_close("MLA elements/token for DeepSeek-V2's 60 layers (Table 9: 34.6K)",
                     fn("MLA", n_layers=60, n_heads=128, head_dim=128, d_c=512, d_rope=64, bytes_per_element=1),
                     34_560, rtol=0)
        expect_close("MQA bytes/token, 10 layers, 8 heads of 64, bf16",
                     fn("MQA", n_layers=10, n_heads=8, head_dim=64, bytes_per_element=2), 2 * 64 * 10 * 2, rtol=0)
        llama, ds = _tiny_models()
        lc = llama.config
        expect_close("GQA bytes/token of a real transformers Llama cache (6 query heads, 2 KV heads, fp32)",
                     fn("GQA", n_layers=lc.num_hidden_layers, n_heads=lc.num_attention_heads, head_dim=lc.head_dim,
                        n_kv_heads=lc.num_key_value_heads, bytes_per_element=4),
                     _cache_bytes_per_token(llama), rtol=0)
        dc = ds.config
        expect_close("MLA bytes/token of a real transformers DeepSeek-V3 cache (fp32)",
                     fn("MLA", n_layers=dc.num_hidden_layers, n_heads=dc.num_attention_heads,
                        head_dim=dc.qk_nope_head_dim, d_c=dc.kv_lora_rank, d_rope=dc.qk_rope_head_dim,
                        bytes_per_element=4),
                     _cache_bytes_per_token(ds), rtol=0)
        return "Table 9's numbers and real caches (numel x element_size) agree with your formulas."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercises 6 and 7
def check_6(fn) -> None:
    """Exercise 6: absorb W_UK into the query: scores against the latents equal the naive scores."""

    def tests():
        for B, H, T, S, dn, dc in [(1, 2, 3, 5, 8, 12), (2, 4, 1, 9, 16, 6)]:
            q_nope, c, w_uk = _rand(B, H, T, dn, seed=1), _rand(B, S, dc, seed=2), _rand(H, dn, dc, seed=3)
            k_nope = torch.einsum("bsc,hnc->bhsn", c, w_uk)
            naive = q_nope @ k_nope.transpose(-1, -2)
            q_lat = fn(q_nope, w_uk)
            expect_tensor(f"absorbed query (B={B}, H={H}, T={T}, d_nope={dn}, d_c={dc})", q_lat,
                          shape=(B, H, T, dc))
            expect_allclose("scores q_latent · c vs q_nope · (W_UK c)", q_lat @ c[:, None].transpose(-1, -2), naive,
                             atol=1e-4)
        return "the query now lives in latent space; keys are never built."

    run_check(6, tests)


def _mla_case(q_lora_rank):
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    cfg = DeepseekV3Config(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32, n_routed_experts=4,
                           num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                           first_k_dense_replace=1, q_lora_rank=q_lora_rank, kv_lora_rank=24, qk_nope_head_dim=16,
                           qk_rope_head_dim=8, v_head_dim=12, rope_interleave=False)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _sharpen(model.model.layers[0].self_attn)
    return cfg, model


def _sharpen(module, std: float = SHARP_STD) -> None:
    """Redraw every weight matrix with std 0.2: attention far from uniform, so RoPE and position bugs show.

    At the library's std-0.02 init attention is nearly uniform and a wrong RoPE moves an MLA layer's output by only
    a few times the tolerance; at std 0.2 by more than 100x (tests/test_lab02_checks.py shows the margins).
    """
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            if p.dim() >= 2:
                p.copy_(_rand(*p.shape, seed=100 + i) * std)


def _absorbed_mla(attn, cfg, x, absorb_query, merge_output, rope):
    """MLA forward that uses the learner's absorb_query and absorbed output weight (and RoPE)."""
    B, T, _ = x.shape
    H, dn, dr, dv, dc = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                         cfg.kv_lora_rank)
    if attn.q_proj is not None:
        q = attn.q_proj(x)
    else:
        q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x)))
    q_nope, q_rope = q.view(B, T, H, dn + dr).transpose(1, 2).split([dn, dr], dim=-1)
    c, k_rope = attn.kv_a_proj_with_mqa(x).split([dc, dr], dim=-1)
    c = attn.kv_a_layernorm(c)
    theta = cfg.rope_parameters["rope_theta"]
    pos = torch.arange(T)
    q_rope, k_rope = rope(q_rope, pos, theta), rope(k_rope[:, None], pos, theta)
    w_uk, w_uv = attn.kv_b_proj.weight.view(H, dn + dv, dc).split([dn, dv], dim=1)
    q_lat = absorb_query(q_nope, w_uk)
    keys = torch.cat([c[:, None], k_rope], dim=-1)
    o_lat = _reference_attention(torch.cat([q_lat, q_rope], dim=-1), keys.expand(-1, H, -1, -1),
                                 c[:, None].expand(-1, H, -1, -1), scale=attn.scaling)
    w_o = merge_output(attn.o_proj.weight, w_uv)
    expect_tensor("absorbed output weight", w_o, shape=(attn.o_proj.weight.shape[0], H * dc))
    return o_lat.transpose(1, 2).reshape(B, T, H * dc) @ w_o.T


def check_7(merge_output, absorb_query, rope) -> None:
    """Exercise 7: fold W_UV into W_O; with exercises 1 and 6, an absorbed MLA equals transformers' DeepSeek-V3."""

    def tests():
        H, dv, dc, D = 3, 5, 7, 11
        w_o, w_uv = _rand(D, H * dv, seed=1), _rand(H, dv, dc, seed=2)
        o_lat = _rand(2, 4, H, dc, seed=3)
        naive = torch.einsum("bthc,hvc->bthv", o_lat, w_uv).reshape(2, 4, H * dv) @ w_o.T
        got = merge_output(w_o, w_uv)
        expect_tensor(f"merged output weight for D={D}, H={H}, d_v={dv}, d_c={dc}", got, shape=(D, H * dc))
        expect_allclose("o_latent @ merged.T vs (W_UV o_latent) @ W_O.T", o_lat.reshape(2, 4, H * dc) @ got.T, naive,
                         atol=1e-4)
        for q_lora_rank in (None, 32):
            cfg, model = _mla_case(q_lora_rank)
            attn = model.model.layers[0].self_attn
            x = _rand(2, 6, cfg.hidden_size, seed=4)
            with torch.inference_mode():
                ref, _ = attn(x, position_embeddings=model.model.rotary_emb(x, torch.arange(6)[None]),
                              attention_mask=None)
                got = _absorbed_mla(attn, cfg, x, absorb_query, merge_output, rope)
            kind = "with" if q_lora_rank else "without"
            expect_allclose(f"absorbed MLA ({kind} query compression) vs transformers' DeepSeek-V3 attention", got,
                             ref, atol=1e-4)
        return "your absorbed MLA reproduces transformers' DeepSeek-V3 attention from the latent cache alone."

    run_check(7, tests)


# --------------------------------------------------------------------------- exercise 8
def _kv_sample() -> torch.Tensor:
    """Keys-like data: tokens and heads of very different magnitudes, and two outlier channels."""
    x = _rand(2, 3, 16, 64, seed=8)
    x = x * torch.logspace(-2, 1, 16)[None, None, :, None]          # token magnitudes from 0.01 to 10
    x[..., 5] *= 8
    x[..., 40] *= -6
    return x


def check_8(quantize, dequantize) -> None:
    """Exercise 8: int8/int4 KV quantizer with one fp16 scale per token and head, by its error and bytes."""

    def tests():
        x = _kv_sample()
        lines = []
        for bits in (8, 4):
            qmax = 2 ** (bits - 1) - 1
            res = quantize(x, bits)
            if not (isinstance(res, tuple) and len(res) == 2):
                raise CheckFailed(f"quantize_kv(x, {bits}) should return a tuple (q, scale)")
            q, scale = res
            expect_tensor(f"q for {bits} bits", q, shape=x.shape, dtype=torch.int8)
            expect_tensor(f"scale for {bits} bits (one per token and head)", scale, shape=(*x.shape[:-1], 1),
                          dtype=torch.float16)
            if q.abs().max().item() > qmax:
                raise CheckFailed(f"{bits} bits: integers must lie in [-{qmax}, {qmax}], got {q.abs().max().item()}")
            want_scale = (x.abs().amax(-1, keepdim=True) / qmax).to(torch.float16)
            expect_allclose(f"scale for {bits} bits vs max|x| / {qmax} per token and head", scale.float(),
                            want_scale.float(), atol=1e-3 * want_scale.float().abs().max().item())
            back = dequantize(q, scale)
            expect_tensor(f"dequantize_kv(q, scale) for {bits} bits", back, shape=x.shape, dtype=torch.float32)
            step = scale.float()
            excess = ((back - x).abs() - step / 2 * 1.001 - 1e-6).amax().item()
            if excess > 0:
                worst = ((back - x).abs() / step).max().item()
                raise CheckFailed(f"{bits} bits: some element is off by {worst:.2f} of its token's step (allowed "
                                  "0.5: round to the nearest level, with the scale of that token and head)")
            nbytes = q.numel() * bits / 8 + scale.numel() * scale.element_size()
            rel = ((back - x).norm() / x.norm()).item()
            lines.append(f"int{bits}: {nbytes / x.numel():.3f} bytes/element, relative error {rel:.1%}")
        return "; ".join(lines) + " (fp32: 4 bytes/element)."

    run_check(8, tests)


# --------------------------------------------------------------------------- exercise 9
def check_9(fn) -> None:
    """Exercise 9: an absorbed MLA decode step with the latent cache == transformers' DeepSeek-V3 attention."""
    from transformers import DynamicCache

    def tests():
        for q_lora_rank in (None, 32):
            cfg, model = _mla_case(q_lora_rank)
            attn = model.model.layers[0].self_attn
            T = 7
            x = _rand(2, T, cfg.hidden_size, seed=9)
            kind = "with" if q_lora_rank else "without"
            with torch.inference_mode():
                hf_cache = DynamicCache(config=cfg)
                ref, _ = attn(x, position_embeddings=model.model.rotary_emb(x, torch.arange(T)[None]),
                              attention_mask=None, cache=hf_cache)
                cache, outs = None, []
                for t in range(T):
                    res = fn(attn, cfg, x[:, t:t + 1], t, cache)
                    if not (isinstance(res, tuple) and len(res) == 2):
                        raise CheckFailed("return a tuple (output, cache)")
                    out, cache = res
                    expect_tensor(f"output of step {t}", out, shape=(2, 1, cfg.hidden_size))
                    if not (isinstance(cache, tuple) and len(cache) == 2):
                        raise CheckFailed("the cache should be a tuple (latents, rope_keys)")
                    expect_tensor(f"cached latents after {t + 1} tokens (only d_c per token: no per-head K/V)",
                                  cache[0], shape=(2, t + 1, cfg.kv_lora_rank))
                    expect_tensor(f"cached RoPE keys after {t + 1} tokens", cache[1],
                                  shape=(2, t + 1, cfg.qk_rope_head_dim))
                    outs.append(out)
            layer = hf_cache.layers[0]
            expect_allclose(f"your cached latents vs transformers' DynamicCache keys ({kind} query compression)",
                            cache[0], layer.keys[:, 0], atol=1e-4)
            expect_allclose(f"your cached RoPE keys vs transformers' DynamicCache values ({kind} query "
                            "compression; rotated at each token's own position?)", cache[1], layer.values[:, 0],
                            atol=1e-4)
            expect_allclose(f"outputs of {T} decode steps vs transformers' attention over the whole sequence "
                            f"({kind} query compression)", torch.cat(outs, dim=1), ref, atol=1e-4)
        return ("token by token from the latent cache alone, your step reproduces transformers' DeepSeek-V3 "
                "attention and caches exactly what its DynamicCache holds.")

    run_check(9, tests)


# --------------------------------------------------------------------------- exercise 10
def check_10(fn) -> None:
    """Exercise 10: batch x context where KV bytes equal weight bytes."""

    def tests():
        smol_weights, smol_kv = 4 * 134_515_008, 4 * 2 * 3 * 64 * 30     # SmolLM2-135M fp32, GQA-3
        expect_close("SmolLM2 fp32 (538 MB of weights, 46,080 KV bytes/token)", fn(smol_weights, smol_kv),
                     smol_weights / smol_kv, rtol=1e-6)
        expect_close("the same model stored as MHA (3x the KV bytes)", fn(smol_weights, 3 * smol_kv),
                     smol_weights / (3 * smol_kv), rtol=1e-6)
        expect_close("1 GB of weights, 1 KB per token", fn(1e9, 1e3), 1e6, rtol=1e-6)
        return (f"SmolLM2's fp32 cache passes its weights at {smol_weights / smol_kv:,.0f} cached tokens over the "
                "batch (e.g. batch 8 x 1,460 tokens); now measure it.")

    run_check(10, tests)
