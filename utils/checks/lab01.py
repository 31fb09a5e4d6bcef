"""Hidden tests of lab 01 (measuring cost). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import functools

import torch

from ..checking import CheckFailed, expect_close, expect_keys, run_check
from ..measure import count_flops, params_by_component

COMPONENTS = ("embedding", "attention", "mlp", "norms", "lm_head", "total")


@functools.cache
def _configs():
    """Small Llama configs that differ in the ways that matter: tied or not, MHA or GQA, head_dim != hidden/heads."""
    from transformers import LlamaConfig

    return (
        LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, head_dim=16, tie_word_embeddings=False),
        LlamaConfig(vocab_size=500, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                    num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
        LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True),
    )


@functools.cache
def _model(i: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(i)
    return AutoModelForCausalLM.from_config(_configs()[i], attn_implementation="eager").eval()


def _describe(cfg) -> str:
    kind = "MHA" if cfg.num_key_value_heads == cfg.num_attention_heads else f"GQA/{cfg.num_key_value_heads} KV heads"
    return f"config(L={cfg.num_hidden_layers}, d={cfg.hidden_size}, {kind}, tied={cfg.tie_word_embeddings})"


# --------------------------------------------------------------------------- exercise 1
def _true_components(model) -> dict[str, int]:
    g = params_by_component(model)
    out = {"embedding": g["embedding"], "attention": g["attention"], "mlp": g["mlp"], "norms": g["norms"],
           "lm_head": g.get("lm_head (untied)", 0)}
    out["total"] = sum(out.values())
    return out


def check_1(fn, smollm2_model=None) -> None:
    """Exercise 1: parameters by component from the config alone."""

    def tests():
        cases = [(_configs()[i], _model(i)) for i in range(3)]
        if smollm2_model is not None:
            cases.append((smollm2_model.config, smollm2_model))
        for cfg, model in cases:
            got = fn(cfg)
            expect_keys(f"params for {_describe(cfg)}", got, COMPONENTS)
            want = _true_components(model)
            for k in COMPONENTS:
                expect_close(f"'{k}' parameters for {_describe(cfg)}", got[k], want[k], rtol=0)
        return "your counts match the real models (tied and untied, MHA and GQA)."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(fn) -> None:
    """Exercise 2: forward FLOPs per token (weights + attention scores) vs torch's flop counter."""

    def tests():
        for i in range(3):
            cfg, model = _configs()[i], _model(i)
            for T in (8, 40):
                ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
                with torch.inference_mode():
                    counted, _ = count_flops(lambda m=model, x=ids: m(x))
                got = fn(cfg, T)
                expect_close(f"FLOPs per token at context {T} for {_describe(cfg)}", got, counted / T, rtol=1e-6)
        return "your formula equals what FlopCounterMode counts, at every context length."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(fn) -> None:
    """Exercise 3: KV-cache bytes per token, against a real cache."""
    from transformers import DynamicCache

    def tests():
        for i in range(3):
            cfg, model = _configs()[i], _model(i)
            for dtype in (torch.float32, torch.bfloat16):
                m = model.to(dtype)
                cache = DynamicCache(config=cfg)
                T = 12
                with torch.inference_mode():
                    m(torch.arange(T).unsqueeze(0), cache=cache, use_cache=True)
                nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
                model.to(torch.float32)
                bpe = torch.empty(0, dtype=dtype).element_size()
                expect_close(f"KV bytes/token for {_describe(cfg)} in {dtype}", fn(cfg, bpe), nbytes / T, rtol=0)
        return "matches numel x element_size of real caches."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(gemm_rate, read_rate) -> None:
    """Exercise 4: FLOP/s of a GEMM and bytes/s of a read, from a measured time."""

    def tests():
        for m, k, n, s in [(1, 576, 1536, 1e-4), (256, 576, 1536, 2e-3), (1024, 1024, 1024, 0.01)]:
            expect_close(f"FLOP/s of a {m}x{k} @ {k}x{n} matmul in {s} s", gemm_rate(m, k, n, s), 2 * m * k * n / s)
        for nbytes, s in [(2**20, 1e-4), (512 * 2**20, 0.02)]:
            expect_close(f"bytes/s for reading {nbytes} bytes in {s} s", read_rate(nbytes, s), nbytes / s)
        return "rates computed correctly."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def check_5(intensity, attainable) -> None:
    """Exercise 5: arithmetic intensity of a Linear and the roofline bound."""

    def tests():
        for m, k, n, b in [(1, 576, 1536, 4), (256, 576, 1536, 4), (64, 4096, 4096, 2), (1, 4096, 11008, 0.5)]:
            want = 2 * m * k * n / (b * (m * k + k * n + m * n))
            expect_close(f"intensity of M={m}, K={k}, N={n} at {b} bytes/element", intensity(m, k, n, b), want,
                         rtol=1e-9)
        P, B = 200e9, 30e9
        for i in (0.25, 1.0, 6.0, 100.0):
            expect_close(f"attainable FLOP/s at intensity {i} (P=200 GFLOP/s, B=30 GB/s)", attainable(i, P, B),
                         min(P, i * B), rtol=1e-9)
        return "decode sits at ~0.5 FLOP/byte in fp32, prefill far to the right."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(fn) -> None:
    """Exercise 6: the decode bandwidth ceiling, weights plus KV cache."""

    def tests():
        cases = [(134.5e6, 4, 0, 46080, 30e9), (134.5e6, 2, 4096, 23040, 30e9), (7e9, 0.5, 32768, 131072, 100e9)]
        for n_params, bpp, context, kv_per_tok, bw in cases:
            want = bw / (n_params * bpp + context * kv_per_tok)
            expect_close(f"ceiling for {n_params:.3g} params x {bpp} B, context {context}, KV {kv_per_tok} B/token",
                         fn(n_params, bpp, context, kv_per_tok, bw), want, rtol=1e-9)
        return "bytes per token decide the ceiling; at long context the KV cache joins the weights."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def check_7(fn) -> None:
    """Exercise 7: greedy decoding with a KV cache (same tokens as generate, one new token per call)."""

    def tests():
        model = _model(1)
        cfg = _configs()[1]
        prompt = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                                 pad_token_id=0)[0, 10:]
        lengths = []
        hook = model.register_forward_pre_hook(
            lambda mod, args, kwargs: lengths.append(
                (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[-1]),
            with_kwargs=True)
        try:
            out = fn(model, prompt, 6)
        finally:
            hook.remove()
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a tuple (new_token_ids, seconds)")
        new_ids, seconds = out
        new_ids = torch.as_tensor(new_ids).flatten()
        if new_ids.numel() != 6:
            raise CheckFailed(f"asked for 6 new tokens, got {new_ids.numel()}")
        if not torch.equal(new_ids.cpu(), ref):
            raise CheckFailed(f"tokens differ from greedy generate(): got {new_ids.tolist()}, expected {ref.tolist()}")
        if not (isinstance(seconds, float) and seconds > 0):
            raise CheckFailed(f"seconds should be a positive float, got {seconds!r}")
        if not lengths or lengths[0] != 10:
            raise CheckFailed(f"the first call should process the whole 10-token prompt, saw lengths {lengths}")
        if any(n != 1 for n in lengths[1:]):
            raise CheckFailed(f"after the prompt, each call should feed only the newest token (the cache holds the "
                              f"rest); your calls fed {lengths} tokens")
        return "same tokens as generate(), one token per step thanks to the cache."

    run_check(7, tests)
