"""Hidden tests of lab 01 (measuring cost). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import functools
import math

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
def _split_terms(f, T1: int, T2: int) -> tuple[float, float]:
    """(constant part, slope per context token) of a per-token FLOP count that is linear in the context."""
    slope = (f(T2) - f(T1)) / (T2 - T1)
    return f(T1) - slope * T1, slope


def check_2(fn) -> None:
    """Exercise 2: forward FLOPs per token (weights + attention scores) vs torch's flop counter, term by term."""

    def tests():
        for i in range(3):
            cfg, model = _configs()[i], _model(i)
            counted = {}
            for T in (8, 24, 40):
                ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
                with torch.inference_mode():
                    counted[T] = count_flops(lambda m=model, x=ids: m(x))[0] / T
            got = {T: float(fn(cfg, T)) for T in counted}
            want_c, want_s = _split_terms(counted.__getitem__, 8, 40)
            got_c, got_s = _split_terms(got.__getitem__, 8, 40)
            if abs(got[24] - (got_c + got_s * 24)) > 1e-6 * abs(counted[24]):
                raise CheckFailed(f"for {_describe(cfg)} your count is not a straight line in the context (values at "
                                  f"8, 24, 40 tokens: {got[8]:.6g}, {got[24]:.6g}, {got[40]:.6g}); per token, FLOPs "
                                  "are a constant (the weights) plus a term proportional to the context (attention)")
            c_ok = abs(got_c - want_c) <= 1e-6 * abs(want_c)
            s_ok = abs(got_s - want_s) <= 1e-6 * abs(want_s)
            const = (f"the constant part (weight matmuls, independent of the context) is {got_c:,.0f} FLOPs/token, "
                     f"expected {want_c:,.0f} ({got_c / want_c:.4g}x): every weight matrix used as a matmul costs 2 "
                     "FLOPs per weight per token, the output head included, the embedding lookup not")
            slope = (f"the part that grows with the context is {got_s:,.0f} FLOPs per context token, expected "
                     f"{want_s:,.0f} ({got_s / want_s:.4g}x): Q·Kᵀ and scores·V are 2·context·head_dim FLOPs each, "
                     "per query head and layer")
            if not c_ok and not s_ok:
                raise CheckFailed(f"for {_describe(cfg)} both terms are off: {const}; and {slope}")
            if not c_ok:
                raise CheckFailed(f"for {_describe(cfg)} {const} (the context term is right)")
            if not s_ok:
                raise CheckFailed(f"for {_describe(cfg)} {slope} (the constant part is right)")
        return "your formula equals what FlopCounterMode counts, term by term, at every context length."

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
PREFILL_DELAY, STEP_DELAY = 0.3, 0.01


def check_7(fn) -> None:
    """Exercise 7: greedy decoding with a KV cache; the timing covers the decode steps only, not the prefill."""
    import time

    def tests():
        model = _model(1)
        cfg = _configs()[1]
        n_new = 6
        prompt = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                 do_sample=False, pad_token_id=0)[0, 10:]
        lengths = []

        def hook(mod, args, kwargs):
            ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
            lengths.append(ids.shape[-1])
            # a known cost per call: the first call (the prompt's forward pass) is slow, each later call is quick
            time.sleep(PREFILL_DELAY if len(lengths) == 1 else STEP_DELAY)

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            out = fn(model, prompt, n_new)
        finally:
            handle.remove()
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a tuple (new_token_ids, seconds)")
        new_ids, seconds = out
        new_ids = torch.as_tensor(new_ids).flatten()
        if new_ids.numel() != n_new:
            raise CheckFailed(f"asked for {n_new} new tokens, got {new_ids.numel()}")
        if not torch.equal(new_ids.cpu(), ref):
            raise CheckFailed(f"tokens differ from greedy generate(): got {new_ids.tolist()}, expected {ref.tolist()}")
        if not (isinstance(seconds, float) and seconds > 0):
            raise CheckFailed(f"seconds should be a positive float, got {seconds!r}")
        if seconds >= PREFILL_DELAY:
            raise CheckFailed(f"your timing ({seconds:.3f} s) includes the prefill: in this check the prompt's "
                              f"forward pass takes {PREFILL_DELAY} s and each decode step {STEP_DELAY} s. Start the "
                              "clock after the prompt has been processed (and don't time model.generate, which runs "
                              "the prefill)")
        if not lengths or lengths[0] != 10:
            raise CheckFailed(f"the first call should process the whole 10-token prompt, saw lengths {lengths}")
        if any(n != 1 for n in lengths[1:]):
            raise CheckFailed(f"after the prompt, each call should feed only the newest token (the cache holds the "
                              f"rest); your calls fed {lengths} tokens")
        steps = n_new - 1
        if seconds < 0.9 * steps * STEP_DELAY:
            raise CheckFailed(f"your timing ({seconds:.3f} s) is shorter than the {steps} decode steps take "
                              f"({steps} x {STEP_DELAY} s here): time all of the n_new - 1 calls after the prompt")
        return "same tokens as generate(), one token per step, and only the decode steps timed."

    run_check(7, tests)


# --------------------------------------------------------------------------- exercise 8
def _seconds(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise CheckFailed(f"{what} should be a finite number of seconds, got {type(x).__name__}: {x!r}")
    return float(x)


def check_8(bounds) -> None:
    """Exercise 8: the step-time bounds of a decode step at batch b (perfect overlap, no overlap)."""
    _check_8(bounds)


def measure_8(bounds, measured: dict[int, float], t1: float, flops_per_token: float, peak_flops: float,
              band: float = 1.5) -> None:
    """Exercise 8 on this machine: the bounds, then the measured largest-batch step inside them (`band`x wider)."""
    _check_8(bounds, measured, t1, flops_per_token, peak_flops, band)


def _check_8(bounds, measured: dict[int, float] | None = None, t1: float | None = None,
             flops_per_token: float | None = None, peak_flops: float | None = None, band: float = 1.5) -> None:
    def tests():
        for b, t, f, p in [(1, 0.08, 2.7e8, 1e11), (4, 0.08, 2.7e8, 1e11), (64, 0.08, 2.7e8, 1e11),
                           (32, 0.05, 2.7e8, 1.5e10), (2, 0.05, 2.7e8, 1.5e10)]:
            out = bounds(b, t, f, p)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise CheckFailed(f"return a tuple (low, high) of seconds, got {out!r}")
            low, high = _seconds(out[0], "low"), _seconds(out[1], "high")
            compute = b * f / p
            for name, got, want, why in [
                ("low", low, max(t, compute), "perfect overlap: the step takes the longer of the batch-1 step and the "
                 "batch's FLOPs at the compute roof, max(t1, batch x FLOPs/token / P)"),
                ("high", high, t + compute, "no overlap: the batch-1 step plus the batch's FLOPs at the compute roof"),
            ]:
                if abs(got - want) > 1e-9 * want:
                    raise CheckFailed(f"{name} bound for batch {b}, t1 = {t} s, {f:.3g} FLOPs/token, P = {p:.3g} "
                                      f"FLOP/s: expected {want:.4g} s, got {got:.4g} s — {why}")
        if measured is None:
            return "your bounds are the roofline's (perfect overlap) and the no-overlap sum."
        if not measured or any(not (isinstance(v, float) and v > 0) for v in measured.values()):
            raise CheckFailed(f"measured should map batch sizes to positive seconds, got {measured!r}")
        b_max = max(measured)
        low, high = bounds(b_max, t1, flops_per_token, peak_flops)
        got = measured[b_max]
        if not low / band <= got <= high * band:
            raise CheckFailed(f"at batch {b_max} the measured step took {got * 1e3:.1f} ms, outside your bounds "
                              f"{low * 1e3:.1f}-{high * 1e3:.1f} ms widened {band:g}x. Use t1 and P measured on this "
                              "machine (P with the decode-shaped product), and re-measure if the machine is busy")
        where = "inside" if low <= got <= high else "within the tolerance band of"
        return (f"at batch {b_max} the step took {got * 1e3:.0f} ms, {where} your predicted "
                f"{low * 1e3:.0f}-{high * 1e3:.0f} ms.")

    run_check(8, tests)
