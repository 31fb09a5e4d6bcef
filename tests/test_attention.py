"""Acceptance tests of notebook 02: its own Llama forward == transformers (a tiny Llama and SmolLM2), and its MLA ==
transformers' DeepSeek-V3 attention with copied weights. The notebook's classes and functions are imported without
running it.

At the library's default init (std 0.02) attention is nearly uniform, so a forward pass without RoPE moves the output
by only ~5e-4 and a check at that init cannot tell. The checks here re-initialise the weights with std 0.2, where the
attention's entropy is about half of uniform, and show each check's margin: a mutation (RoPE dropped, KV heads
grouped wrongly) must move the output by at least 100x the tolerance."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "02_attention_and_kv_cache.ipynb"


NB = load_definitions(NOTEBOOK, {"torch": torch, "F": F, "nn": nn, "math": math, "time": time, "copy": copy})
TOL = 1e-4        # max |difference| allowed between our code and transformers (outputs of size ~5 at std 0.2)
MARGIN = 100      # a mutation must move the output by at least MARGIN x TOL
SHARP_STD = 0.2   # init std of every weight matrix: attention far from uniform


def _sharpen(module: nn.Module, std: float = SHARP_STD, seed: int = 0) -> None:
    """Re-initialise every weight matrix of `module` from N(0, std^2) (norm weights stay 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


class _mutated:
    """Temporarily replace a function of the notebook (its methods look it up in NB at call time)."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __enter__(self):
        self.orig, NB[self.name] = NB[self.name], self.fn

    def __exit__(self, *exc):
        NB[self.name] = self.orig


def _relative_entropy(run) -> float:
    """Mean entropy of the attention rows that `run()` computes, as a fraction of uniform attention's (1 = uniform)."""
    fractions, orig = [], NB["attention"]

    def recording(q, k, v, scale=None, **mask):
        T, S = q.shape[-2], k.shape[-2]
        allowed = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
        scores = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
        p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        h = -(p * p.clamp_min(1e-30).log()).sum(-1)
        n = allowed.sum(-1).float()
        fractions.append((h[..., n > 1] / n[n > 1].log()).mean().item())
        return orig(q, k, v, scale, **mask)

    with _mutated("attention", recording):
        run()
    return sum(fractions) / len(fractions)


def _check_margin(what: str, diff: float, mutated: float) -> None:
    print(f"{what}: |diff| {diff:.1e} < tol {TOL:.0e}; mutated {mutated:.2e} = {mutated / TOL:,.0f}x tol")
    assert diff < TOL, f"{what}: {diff:.2e}"
    assert mutated > MARGIN * TOL, f"{what}: the mutation moved the output by only {mutated:.2e}"


def _deepseek(q_lora_rank):
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    cfg = DeepseekV3Config(vocab_size=128, hidden_size=96, num_hidden_layers=2, num_attention_heads=3,
                           num_key_value_heads=3, intermediate_size=128, moe_intermediate_size=32, n_routed_experts=4,
                           num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                           first_k_dense_replace=1, q_lora_rank=q_lora_rank, kv_lora_rank=40, qk_nope_head_dim=24,
                           qk_rope_head_dim=8, v_head_dim=20, rope_interleave=False)
    torch.manual_seed(0)
    return cfg, AutoModelForCausalLM.from_config(cfg).eval()


def _mla_pair(q_lora_rank, cls="MLA"):
    cfg, model = _deepseek(q_lora_rank)
    hf = model.model.layers[1].self_attn
    _sharpen(hf)
    mla = NB[cls](cfg.hidden_size, cfg.num_attention_heads, kv_lora_rank=cfg.kv_lora_rank,
                  qk_nope_dim=cfg.qk_nope_head_dim, qk_rope_dim=cfg.qk_rope_head_dim, v_dim=cfg.v_head_dim,
                  q_lora_rank=q_lora_rank, rope_theta=cfg.rope_parameters["rope_theta"], eps=cfg.rms_norm_eps).eval()
    missing, unexpected = mla.load_state_dict(hf.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 17, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, _ = hf(x, position_embeddings=model.model.rotary_emb(x, torch.arange(17)[None]), attention_mask=None)
    return cfg, mla, x, ref


@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_mla_matches_transformers_deepseek_v3_attention(q_lora_rank):
    cfg, mla, x, ref = _mla_pair(q_lora_rank)
    with torch.inference_mode():
        entropy = _relative_entropy(lambda: mla(x))
        naive, absorbed = mla(x), mla(x, absorb=True)
        cache = NB["LatentCache"]()
        prefill = mla(x[:, :9], cache=cache, absorb=True)
        steps = [mla(x[:, t:t + 1], cache=cache, absorb=True) for t in range(9, 17)]
        with _mutated("apply_rope", lambda t, cos, sin: t):
            no_rope = (mla(x, absorb=True) - ref).abs().max().item()
        stale = NB["LatentCache"]()   # a decode that forgets the position offset: every token at position 0
        mla(x[:, :9], cache=stale, absorb=True)
        with _mutated("rope_tables", lambda pos, dim, theta: NB["__orig_rope_tables"](pos - pos[0], dim, theta)):
            wrong_pos = (mla(x[:, 9:10], cache=stale, absorb=True) - ref[:, 9:10]).abs().max().item()
    assert entropy < 0.75, f"attention is too close to uniform for the check to tell (entropy {entropy:.2f})"
    _check_margin("MLA naive vs transformers, RoPE dropped", (naive - ref).abs().max().item(), no_rope)
    _check_margin("MLA absorbed vs transformers, RoPE dropped", (absorbed - ref).abs().max().item(), no_rope)
    _check_margin("MLA latent-cache decode vs transformers, position offset lost",
                  (torch.cat([prefill, *steps], dim=1) - ref).abs().max().item(), wrong_pos)
    # only the latent and the shared RoPE key are cached
    assert cache.nbytes() == 2 * 17 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4


NB["__orig_rope_tables"] = NB["rope_tables"]


@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_trainable_mla_matches_transformers_and_trains(q_lora_rank):
    """TrainableMLA (the fused training path) with and without query compression, forward and backward."""
    cfg, mla, x, ref = _mla_pair(q_lora_rank, cls="TrainableMLA")
    with torch.inference_mode():
        with _mutated("apply_rope", lambda t, cos, sin: t):
            no_rope = (mla(x) - ref).abs().max().item()
    out = mla(x)
    _check_margin("TrainableMLA vs transformers, RoPE dropped", (out - ref).abs().max().item(), no_rope)
    out.pow(2).mean().backward()
    names = {n for n, p in mla.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {n for n, _ in mla.named_parameters()}, f"parameters without a gradient: " \
        f"{sorted({n for n, _ in mla.named_parameters()} - names)}"
    assert ("q_a_proj.weight" in names) == (q_lora_rank is not None)


def _tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _sharpen(model)
    return cfg, model, {k: v.detach() for k, v in model.state_dict().items()}


def test_llama_forward_matches_transformers_at_a_sharp_init():
    cfg, model, W = _tiny_llama()
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    f = NB["llama_forward"]
    with torch.inference_mode():
        ref = model(ids).logits
        entropy = _relative_entropy(lambda: f(W, cfg, ids))
        ours = f(W, cfg, ids)
        cache = NB["KVCache"](cfg.num_hidden_layers)
        stepwise = torch.cat([f(W, cfg, ids[:, :10], cache)] + [f(W, cfg, ids[:, t:t + 1], cache)
                                                                 for t in range(10, 24)], dim=1)
        with _mutated("apply_rope", lambda t, cos, sin: t):
            no_rope = (f(W, cfg, ids) - ref).abs().max().item()
        with _mutated("repeat_kv", lambda t, n: t.repeat(1, n, 1, 1)):   # query heads paired with the wrong KV head
            wrong_groups = (f(W, cfg, ids) - ref).abs().max().item()
    assert entropy < 0.75, f"attention is too close to uniform for the check to tell (entropy {entropy:.2f})"
    _check_margin("llama_forward vs transformers, RoPE dropped", (ours - ref).abs().max().item(), no_rope)
    _check_margin("llama_forward vs transformers, KV heads grouped wrongly", (ours - ref).abs().max().item(),
                  wrong_groups)
    _check_margin("llama_forward decode with KVCache vs transformers, RoPE dropped",
                  (stepwise - ref).abs().max().item(), no_rope)


def test_mla_cache_formula_matches_transformers_cache():
    from transformers import DynamicCache

    cfg, model = _deepseek(None)
    cache = DynamicCache(config=cfg)
    with torch.inference_mode():
        model(torch.arange(11)[None], cache=cache, use_cache=True)
    nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    want = NB["kv_elements_per_token"]("MLA", cfg.num_hidden_layers, d_c=cfg.kv_lora_rank,
                                       d_rope=cfg.qk_rope_head_dim)
    assert nbytes == 11 * 4 * want


def test_kv_elements_reproduce_deepseek_v2_table_9():
    f = NB["kv_elements_per_token"]
    assert f("MHA", 27, 16, 128) == 110_592
    assert f("MLA", 27, d_c=512, d_rope=64) == 15_552
    assert f("MLA", 60, d_c=512, d_rope=64) == 34_560
    assert f("GQA", 95, 64, 128, n_kv_heads=8) == 194_560
    with pytest.raises(ValueError, match="kind"):
        f("MLQ", 1)


def test_grouped_attention_cache_matches_full_sequence():
    attn = NB["GroupedAttention"](64, 4, 2).eval()
    x = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = attn(x)
        cache = NB["KVCache"](1)
        steps = torch.cat([attn(x[:, :6], cache=cache)] + [attn(x[:, t:t + 1], cache=cache) for t in range(6, 10)], 1)
    assert (steps - full).abs().max() < 1e-5
    assert cache.nbytes() == 2 * 10 * 2 * 16 * 4


@pytest.mark.slow
def test_llama_forward_matches_transformers_on_smollm2():
    from utils.model import load_smollm2

    model, tok = load_smollm2()
    cfg = model.config
    W = {k: v.detach() for k, v in model.state_dict().items()}
    ids = tok("Shall I compare thee to a summer's day? Thou art more lovely and more temperate:",
              return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = model(ids).logits
        ours = NB["llama_forward"](W, cfg, ids)
        cache = NB["KVCache"](cfg.num_hidden_layers)
        stepwise = torch.cat([NB["llama_forward"](W, cfg, ids[:, :8], cache)]
                             + [NB["llama_forward"](W, cfg, ids[:, t:t + 1], cache) for t in range(8, ids.shape[1])],
                             dim=1)
    assert (ours - ref).abs().max() < 1e-3
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    assert (stepwise - ref).abs().max() < 1e-3
    assert cache.nbytes() == ids.shape[1] * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4


def test_cache_levers_of_section_4_at_their_limits():
    """The cache-shrinking levers are exact where they must be: full rank, one group per head, 16 bits."""
    cfg, model, W = _tiny_llama()
    ids = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    f = NB["llama_forward"]
    with torch.inference_mode():
        ref = f(W, cfg, ids)
        covs = NB["kv_covariances"](W, cfg, ids)
        full_rank = f(NB["low_rank_kv"](W, cfg, covs, 2 * cfg.num_key_value_heads * cfg.head_dim), cfg, ids)
        low_rank = f(NB["low_rank_kv"](W, cfg, covs, 4), cfg, ids)
        same_heads = f(*NB["mean_pool_kv_heads"](W, cfg, cfg.num_key_value_heads), ids)
        pooled_W, pooled_cfg = NB["mean_pool_kv_heads"](W, cfg, 1)
        pooled = f(pooled_W, pooled_cfg, ids)
        int8 = f(W, cfg, ids, kv_fn=NB["quantize_kv"](8))
        window_all = f(W, cfg, ids, window=20)
        window_4 = f(W, cfg, ids, window=4, sinks=2)
    assert (full_rank - ref).abs().max() < 1e-3 < (low_rank - ref).abs().max()
    assert (same_heads - ref).abs().max() < 1e-5 and pooled_cfg.num_key_value_heads == 1
    assert pooled_W["model.layers.0.self_attn.k_proj.weight"].shape == (cfg.head_dim, cfg.hidden_size)
    assert (pooled - ref).abs().max() > 1e-2
    assert 0 < (int8 - ref).abs().max() < 0.05 * ref.abs().max()
    assert (window_all - ref).abs().max() < 1e-5 and (window_4[:, :4] - ref[:, :4]).abs().max() < 1e-5
    assert (window_4[:, 10:] - ref[:, 10:]).abs().max() > 1e-2


def test_window_mask_sees_recent_tokens_and_sinks_only():
    q = k = torch.zeros(1, 1, 8, 4)
    v = torch.eye(8)[None, None]                    # attention weights come out as the output rows
    w = NB["attention"](q, k, v, window=3, sinks=1)[0, 0]
    allowed = w > 0
    for t in range(8):
        want = {s for s in range(t + 1) if t - s < 3 or s < 1}
        assert {s for s in range(8) if allowed[t, s]} == want


def test_decode_step_with_static_cache_matches_llama_forward():
    cfg, model, W = _tiny_llama()
    ids = torch.randint(0, cfg.vocab_size, (2, 13), generator=torch.Generator().manual_seed(3))
    L = cfg.num_hidden_layers
    with torch.inference_mode():
        grow = NB["KVCache"](L)
        NB["llama_forward"](W, cfg, ids[:, :12], grow)
        static = NB["StaticKVCache"](L, 2, cfg.num_key_value_heads, 16, cfg.head_dim, length=12)
        for i in range(L):
            static.k[i, :, :, :12], static.v[i, :, :, :12] = grow.k[i], grow.v[i]
        got = NB["decode_step"](W, cfg, ids[:, 12:13], static)
        want = NB["llama_forward"](W, cfg, ids[:, 12:13], grow)
    assert (got - want).abs().max() < 1e-4 and len(static) == 13


def test_mla_naive_and_absorbed_decode_steps_agree():
    mla = NB["MLA"](64, 4, kv_lora_rank=24, qk_nope_dim=16, qk_rope_dim=8, v_dim=12).eval()
    _sharpen(mla)
    h = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        c, k_rope = mla.kv_a_proj_with_mqa(h).split([24, 8], dim=-1)
        c = mla.kv_a_layernorm(c)
        cos, sin = NB["rope_tables"](torch.arange(9), 8, mla.theta)
        k_rope = NB["apply_rope"](k_rope, cos, sin)
        k_nope, v = mla.kv_b_proj(c).view(1, 9, 4, 28).transpose(1, 2).split([16, 12], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, 4, -1, -1)], dim=-1)
        x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(5))
        naive = NB["mla_step_naive"](mla, x, k, v, 9)
        absorbed = NB["mla_step_absorbed"](mla, x, c, k_rope, 9)
        with _mutated("apply_rope", lambda t, cos, sin: t):
            no_rope = (NB["mla_step_absorbed"](mla, x, c, k_rope, 9) - naive).abs().max().item()
    _check_margin("MLA absorbed vs naive decode step, RoPE dropped", (absorbed - naive).abs().max().item(), no_rope)


def test_token_shift_adds_the_previous_positions_input():
    shift = NB["TokenShift"](8, nn.Identity())
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = shift(x)
    assert torch.allclose(out[:, 0], x[:, 0])                                  # nothing before the first token
    assert torch.allclose(out[:, 1:], x[:, 1:] + x[:, :-1] @ shift.shift.weight.T, atol=1e-6)


def test_grouped_attention_window_sees_exactly_the_last_tokens():
    attn = NB["GroupedAttention"](16, 2, 1, window=3).eval()
    x = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))
    moved = x.clone()
    moved[:, 2] += 1.0                                                         # change token 2 only
    with torch.no_grad():
        d = (attn(moved) - attn(x)).abs().amax(-1)[0]
    assert (d[:2] == 0).all() and (d[2:5] > 1e-4).all() and (d[5:] == 0).all(), d   # seen by positions 2, 3, 4
