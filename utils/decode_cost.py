"""Decode-step timing at a chosen batch and context, with a synthetic KV cache (no prefill needed).

A decode step's cost depends on the shapes it reads (weights, and a KV cache of `batch x context` tokens), not on the
cache's values, so the cache is filled with constants instead of running a prefill of `batch x context` tokens.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch

from .timing import Timing, benchmark


def kv_bytes_per_token(config, bytes_per_element: int) -> int:
    """KV-cache bytes one token adds over all layers (keys and values of the KV heads)."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * bytes_per_element


def synthetic_cache(config, batch: int, context: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A DynamicCache holding `context` tokens for each of `batch` sequences (constant keys and values)."""
    from transformers import DynamicCache

    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got batch={batch}, context={context}")
    cache = DynamicCache(config=config)
    shape = (batch, config.num_key_value_heads, context, config.head_dim)
    for layer in range(config.num_hidden_layers):
        k = torch.full(shape, 0.01, dtype=dtype, device=device)
        cache.update(k, k.clone(), layer)
    return cache


def decode_step_times(model, batch: int, context: int, steps: int = 4, warmup: int = 1) -> Timing:
    """Seconds of single decode steps (one new token for each of `batch` sequences) against a `context`-token cache.

    After every step the cache is cropped back to `context`, so each timed step sees the same shapes.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    p = next(model.parameters())
    cache = synthetic_cache(model.config, batch, context, p.dtype, str(p.device))
    nxt = torch.zeros(batch, 1, dtype=torch.long, device=p.device)

    def step():
        with torch.inference_mode():
            model(nxt, cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)

    return benchmark(step, warmup=warmup, repeats=steps, device=str(p.device))


def step_flops(n_matmul_params: int, config, batch: int, context: int) -> float:
    """Matmul FLOPs of one decode step: 2 per weight per token, plus Q·Kᵀ and scores·V over the context."""
    attn = 4 * config.num_hidden_layers * context * config.num_attention_heads * config.head_dim
    return batch * (2 * n_matmul_params + attn)


def step_bytes(weight_bytes: int, config, batch: int, context: int, bytes_per_element: int) -> float:
    """Bytes a decode step must read at least: every weight once, plus the KV cache of every sequence."""
    return weight_bytes + batch * context * kv_bytes_per_token(config, bytes_per_element)


@contextmanager
def quiet_native_stderr():
    """Silence what native code writes to file descriptor 2 inside the block (e.g. the profiler's USDT log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
