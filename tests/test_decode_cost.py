"""utils.decode_cost: synthetic KV caches, decode-step timing, the byte and FLOP model of a step."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from utils import decode_cost

CFG = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)


def test_synthetic_cache_has_the_asked_shapes():
    cache = decode_cost.synthetic_cache(CFG, batch=3, context=5, dtype=torch.bfloat16)
    assert cache.get_seq_length() == 5
    k = cache.layers[0].keys
    assert tuple(k.shape) == (3, 2, 5, 8) and k.dtype == torch.bfloat16
    nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert nbytes == 3 * 5 * decode_cost.kv_bytes_per_token(CFG, 2)
    with pytest.raises(ValueError, match="batch and context"):
        decode_cost.synthetic_cache(CFG, 0, 5)


def test_decode_step_times_keeps_the_context_fixed():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CFG).eval()
    seen = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["cache"].get_seq_length()), with_kwargs=True)
    try:
        t = decode_cost.decode_step_times(model, batch=2, context=6, steps=3, warmup=1)
    finally:
        handle.remove()
    assert len(t.times) == 3 and seen == [6, 6, 6, 6]
    with pytest.raises(ValueError, match="steps >= 1"):
        decode_cost.decode_step_times(model, 1, 4, steps=0)


def test_step_flops_and_bytes():
    assert decode_cost.step_flops(1000, CFG, batch=2, context=10) == 2 * (2 * 1000 + 4 * 2 * 10 * 4 * 8)
    assert decode_cost.step_bytes(500, CFG, batch=2, context=10, bytes_per_element=4) == 500 + 20 * 2 * 2 * 2 * 8 * 4


def test_quiet_native_stderr_restores_fd2(capfd):
    import os

    with decode_cost.quiet_native_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    err = capfd.readouterr().err
    assert "hidden" not in err and "shown" in err
