"""Hidden tests of lab 06 (quantizing an LLM). Each `check_N(...)` prints a pass line or a one-line verdict.

Exercises, easy to hard: 1 RTN, 2 int4 packing, 3 GGUF Q4_0, 4 SmoothQuant scales, 5 AWQ's scale search, 6 GPTQ
(checked against a reference GPTQ on a fixed synthetic layer), 7 the model-level Δ ln PPL of a quantized SmolLM2.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checking import CheckFailed, expect_close, expect_tensor, run_check


def _weights(seed: int, shape=(48, 256)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w[:, 7] *= 8                                             # an outlier input channel
    return w


def reference_rtn(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Asymmetric group-wise RTN: w ≈ q·scale + min, q in [0, 2^bits - 1]."""
    out_f, in_f = w.shape
    wg = w.float().reshape(out_f, in_f // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-12) / (2**bits - 1)
    q = torch.clamp(torch.round((wg - lo) / scale), 0, 2**bits - 1)
    return (q * scale + lo).reshape(out_f, in_f)


def reference_gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, damp: float,
                   divide_by_diagonal: bool = True, grid_from_updated: bool = True) -> torch.Tensor:
    """GPTQ column by column (no lazy batches). The two flags switch on the classic mistakes, for diagnosis."""
    w = w.float().clone()
    w_orig = w.clone()
    h = h.float() + damp * torch.mean(torch.diag(h.float())) * torch.eye(h.shape[0])
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    qmax = 2**bits - 1
    out = torch.zeros_like(w)
    for j in range(w.shape[1]):
        if j % group == 0:
            span = (w if grid_from_updated else w_orig)[:, j:j + group]
            lo = span.amin(1, keepdim=True)
            scale = (span.amax(1, keepdim=True) - lo).clamp(min=1e-12) / qmax
        q = torch.clamp(torch.round((w[:, j:j + 1] - lo) / scale), 0, qmax) * scale + lo
        out[:, j:j + 1] = q
        e = (w[:, j:j + 1] - q) / (u[j, j] if divide_by_diagonal else 1.0)
        w[:, j + 1:] -= e @ u[j:j + 1, j + 1:]
    return out


def gptq_case(seed: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed synthetic layer where GPTQ matters: correlated inputs with an outlier channel; (w, x_fit, x_held)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 128, generator=g) * 0.05
    mix = torch.randn(128, 128, generator=g) / 11
    x = torch.randn(1024, 128, generator=g) @ mix
    x[:, 5] *= 10
    return w, x[0::2], x[1::2]


def _rel_out_err(x, w, q) -> float:
    return (((x @ w.T - x @ q.T) ** 2).mean() / (x @ w.T).pow(2).mean()).item()


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: group-wise asymmetric RTN."""

    def tests():
        for seed, bits, group in [(0, 4, 64), (1, 4, 32), (2, 3, 128), (3, 8, 256)]:
            w = _weights(seed)
            got = fn(w, bits, group)
            expect_tensor(f"rtn(w, bits={bits}, group={group})", got, shape=w.shape)
            want = reference_rtn(w, bits, group)
            err = (got.float() - want).abs().max().item()
            if err > 1e-6:
                levels = max(len(torch.unique(b)) for b in got.float().reshape(-1, group))
                raise CheckFailed(f"bits={bits}, group={group}: max difference from the expected weights {err:.3g}; "
                                  f"your groups use up to {levels} distinct values (expected at most {2**bits}, "
                                  f"including each group's min and max)")
        return "each group gets its own scale and minimum."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(pack, unpack, bpw) -> None:
    """Exercise 2: packing two 4-bit codes per byte, and the bits-per-weight account."""

    def tests():
        g = torch.Generator().manual_seed(2)
        q = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
        packed = pack(q)
        expect_tensor("pack(q) for q of shape (8, 64)", packed, shape=(8, 32), dtype=torch.uint8)
        want = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
        if not torch.equal(packed, want):
            if torch.equal(packed, (q[:, 1::2] | (q[:, 0::2] << 4)).to(torch.uint8)):
                raise CheckFailed("nibbles swapped: element 2i goes in the LOW 4 bits, element 2i+1 in the high 4 bits")
            raise CheckFailed("packed bytes differ from expected (byte i holds codes 2i (low) and 2i+1 (high))")
        back = unpack(packed)
        expect_tensor("unpack(pack(q))", back, shape=q.shape)
        if not torch.equal(back.to(torch.uint8), q):
            raise CheckFailed("unpack(pack(q)) does not give q back")
        for bits, group, with_min, want_bpw in [(4, 64, True, 4.5), (4, 32, True, 5.0), (4, 32, False, 4.5),
                                                (8, 32, False, 8.5), (4, 128, True, 4.25), (3, 64, True, 3.5)]:
            expect_close(f"bits_per_weight(bits={bits}, group={group}, with_min={with_min}) with fp16 scale/min",
                         bpw(bits, group, with_min), want_bpw, rtol=1e-9)
        return "two codes per byte, and scales/minimums counted in the bits."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(encode, decode) -> None:
    """Exercise 3: GGUF Q4_0, bit-exact against the gguf library."""
    import gguf

    def tests():
        g = torch.Generator().manual_seed(5)
        w = torch.randn(6, 128, generator=g)
        w[0, :32] = 0.0                                  # an all-zero block
        w[1, :32] = -w[1, :32].abs()                     # a block whose largest magnitude is negative
        want = torch.from_numpy(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0))
        got = encode(w)
        expect_tensor("q4_0_encode(w) for w of shape (6, 128)", got, shape=tuple(want.shape), dtype=torch.uint8)
        if not torch.equal(got, want):
            bad = (got != want).any(1).nonzero().flatten().tolist()
            d_ok = torch.equal(got.reshape(-1, 18)[:, :2], want.reshape(-1, 18)[:, :2])
            raise CheckFailed(f"bytes differ from gguf in rows {bad}; the fp16 scales "
                              f"{'match' if d_ok else 'differ (d = signed max-magnitude value / -8)'}; "
                              "codes: trunc(x/d + 8.5) clipped to 15, low nibble = element j")
        ref = gguf.quants.dequantize(want.numpy(), gguf.GGMLQuantizationType.Q4_0)
        back = decode(want, 128)
        expect_tensor("q4_0_decode(raw, 128)", back, shape=w.shape)
        if not np.array_equal(back.float().numpy(), ref):
            raise CheckFailed(f"decoded values differ from gguf by up to {np.abs(back.numpy() - ref).max():.3g}")
        return "bit-exact with gguf, including an all-zero block and a negative extreme."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(fn) -> None:
    """Exercise 4: SmoothQuant's migration scales s_j = max|X_j|^alpha / max|W_j|^(1-alpha)."""

    def tests():
        g = torch.Generator().manual_seed(4)
        x_absmax = torch.rand(64, generator=g) * 3 + 0.1
        x_absmax[9] = 60.0                                   # an outlier channel
        w = torch.randn(32, 64, generator=g) * 0.05
        for alpha in (0.0, 0.5, 0.8, 1.0):
            got = fn(x_absmax, w, alpha)
            expect_tensor(f"smooth_scales(x_absmax, w, alpha={alpha})", got, shape=(64,))
            want = (x_absmax.pow(alpha) / w.abs().amax(0).pow(1 - alpha)).clamp(min=1e-5)
            if not torch.allclose(got.float(), want, rtol=1e-5, atol=0):
                if torch.allclose(got.float(), (x_absmax.pow(alpha) / w.abs().amax(1).mean().pow(1 - alpha)),
                                  rtol=1e-5):
                    raise CheckFailed("max|W_j| is the maximum over the OUTPUT rows of input column j: amax(0)")
                raise CheckFailed(f"alpha={alpha}: scales differ from max|X_j|^alpha / max|W_j|^(1-alpha) by up to "
                                  f"{(got.float() - want).abs().max().item():.3g} (hint: the weight maximum is taken "
                                  "per input column j, over all output rows)")
        s = fn(x_absmax, w, 0.5)
        before = x_absmax.max() / x_absmax.median()
        after = (x_absmax / s).max() / (x_absmax / s).median()
        return f"alpha = 0.5 shrinks the outlier channel's ratio to the median from {before:.1f}x to {after:.1f}x."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def check_5(fn, w, x) -> None:
    """Exercise 5: AWQ's scale search."""

    def tests():
        out = fn(w, x, 4, 64, 20)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a tuple (quantized weight, best alpha)")
        q, alpha = out
        expect_tensor("awq(...)[0]", q, shape=w.shape)
        x_mean = x.float().abs().mean(0)
        y = x @ w.T
        errs = {}
        for i in range(20):
            a = i / 20
            s = x_mean.pow(a).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            errs[a] = (y - x @ (reference_rtn(w * s, 4, 64) / s).T).pow(2).mean().item()
        best = min(errs, key=errs.get)
        expect_close("best alpha", alpha, best, atol=1e-9)
        e_q, e_rtn = (y - x @ q.T).pow(2).mean().item(), errs[0.0]
        expect_close("output MSE of your quantized weight", e_q, errs[best], rtol=1e-4)
        return f"alpha = {best:.2f}; output MSE {e_q:.3g} vs plain RTN {e_rtn:.3g}."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(fn) -> None:
    """Exercise 6: GPTQ, against a reference GPTQ on a fixed synthetic layer (and then better than RTN)."""

    def tests():
        w, x_fit, x_held = gptq_case()
        h = x_fit.T @ x_fit
        for bits, group, damp in [(4, 32, 0.01), (3, 64, 0.1)]:
            got = fn(w, h, bits, group, damp)
            expect_tensor(f"gptq(w, h, bits={bits}, group={group}, damp={damp})", got, shape=w.shape)
            want = reference_gptq(w, h, bits, group, damp)
            close = ((got.float() - want).abs() <= 1e-4 * w.abs().max()).float().mean().item()
            if close < 0.99:
                hints = []
                if torch.allclose(got.float(), reference_gptq(w, h, bits, group, damp, divide_by_diagonal=False),
                                  atol=1e-5):
                    hints.append("the error of column j must be divided by U[j, j] before it is spread")
                if torch.allclose(got.float(), reference_gptq(w, h, bits, group, damp, grid_from_updated=False),
                                  atol=1e-5):
                    hints.append("compute each group's grid from the UPDATED weights, when the group is reached")
                if torch.allclose(got.float(), reference_rtn(w, bits, group), atol=1e-6):
                    hints.append("that is plain RTN: the later columns must be updated after each column")
                hint = "; ".join(hints) or ("check the dampening (damp · mean(diag H) on the diagonal) and "
                                            "U = upper Cholesky factor of H⁻¹")
                raise CheckFailed(f"bits={bits}, group={group}: only {close:.1%} of the weights match the reference "
                                  f"GPTQ (need 99%): {hint}")
        q = fn(w, h, 4, 32, 0.01)
        e_rtn, e_q = _rel_out_err(x_held, w, reference_rtn(w, 4, 32)), _rel_out_err(x_held, w, q)
        return f"matches the reference; held-out output error {e_q:.4f} vs RTN {e_rtn:.4f}."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def _mean_nll(model, ids: torch.Tensor, window: int) -> float:
    chunks = ids[: ids.numel() // window * window].view(-1, window)
    total, count = 0.0, 0
    with torch.inference_mode():
        for c in chunks:
            logits = model(c[None]).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, c[1:], reduction="sum").item()
            count += window - 1
    return total / count


def check_7(fn, model, ids: torch.Tensor, window: int = 128) -> None:
    """Exercise 7: Δ ln PPL of the whole model with every block Linear RTN-quantized at W4 g64."""

    def tests():
        lins = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
        before = {n: m.weight.detach().clone() for n, m in lins.items()}
        got = fn(model, lambda w: reference_rtn(w, 4, 64), ids, window)
        changed = [n for n, m in lins.items() if not torch.equal(m.weight, before[n])]
        if changed:
            for n, m in lins.items():
                m.weight.data.copy_(before[n])
            raise CheckFailed(f"{len(changed)} Linear weights were not restored after the measurement "
                              f"(first: {changed[0]}): put the original weights back")
        if not isinstance(got, float) or not math.isfinite(got):
            raise CheckFailed(f"return Δ ln PPL as a finite Python float, got {got!r}")
        base = _mean_nll(model, ids, window)
        for n, m in lins.items():
            m.weight.data.copy_(reference_rtn(before[n], 4, 64))
        quant = _mean_nll(model, ids, window)
        for n, m in lins.items():
            m.weight.data.copy_(before[n])
        want = quant - base
        tol = 1e-3 * abs(want) + 1e-4
        if abs(got - want) > tol and abs(got - (math.exp(want) - 1)) < 1e-3 * abs(math.exp(want) - 1) + 1e-4:
            raise CheckFailed("you returned the relative change of PPL; return Δ ln PPL = mean NLL(quantized) − "
                              "mean NLL(baseline)")
        expect_close("Δ ln PPL (nats per token) of RTN W4 g64 (hint: mean NLL over the scored tokens, "
                     "quantized minus baseline, windows scored independently)", got, want, rtol=1e-3, atol=1e-4)
        return (f"Δ ln PPL = {want:+.3f} nats per token: PPL {math.exp(base):.1f} -> {math.exp(quant):.1f} "
                f"on {ids.numel() // window * (window - 1)} tokens.")

    run_check(7, tests)
