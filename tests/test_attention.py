"""Acceptance tests of notebook 02: its own Llama forward == transformers on SmolLM2, and its MLA == transformers'
DeepSeek-V3 attention with copied weights. The notebook's classes and functions are imported without running it."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "02_attention_and_kv_cache.ipynb"


NB = load_definitions(NOTEBOOK, {"torch": torch, "F": F, "nn": nn, "math": math, "time": time})


def _deepseek(q_lora_rank):
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    cfg = DeepseekV3Config(vocab_size=128, hidden_size=96, num_hidden_layers=2, num_attention_heads=3,
                           num_key_value_heads=3, intermediate_size=128, moe_intermediate_size=32, n_routed_experts=4,
                           num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                           first_k_dense_replace=1, q_lora_rank=q_lora_rank, kv_lora_rank=40, qk_nope_head_dim=24,
                           qk_rope_head_dim=8, v_head_dim=20, rope_interleave=False)
    torch.manual_seed(0)
    return cfg, AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_mla_matches_transformers_deepseek_v3_attention(q_lora_rank):
    cfg, model = _deepseek(q_lora_rank)
    hf = model.model.layers[1].self_attn
    mla = NB["MLA"](cfg.hidden_size, cfg.num_attention_heads, kv_lora_rank=cfg.kv_lora_rank,
                    qk_nope_dim=cfg.qk_nope_head_dim, qk_rope_dim=cfg.qk_rope_head_dim, v_dim=cfg.v_head_dim,
                    q_lora_rank=q_lora_rank, rope_theta=cfg.rope_parameters["rope_theta"], eps=cfg.rms_norm_eps).eval()
    missing, unexpected = mla.load_state_dict(hf.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 17, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, _ = hf(x, position_embeddings=model.model.rotary_emb(x, torch.arange(17)[None]), attention_mask=None)
        naive, absorbed = mla(x), mla(x, absorb=True)
        cache = NB["LatentCache"]()
        prefill = mla(x[:, :9], cache=cache, absorb=True)
        steps = [mla(x[:, t:t + 1], cache=cache, absorb=True) for t in range(9, 17)]
    assert (naive - ref).abs().max() < 1e-5
    assert (absorbed - ref).abs().max() < 1e-5
    assert (torch.cat([prefill, *steps], dim=1) - ref).abs().max() < 1e-5
    # only the latent and the shared RoPE key are cached
    assert cache.nbytes() == 2 * 17 * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4


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
