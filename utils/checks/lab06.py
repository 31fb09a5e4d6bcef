"""Hidden tests of lab 06 (quantizing an LLM). Each `check_N(...)` prints a pass line or a one-line verdict."""

from __future__ import annotations

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
def check_3(fn, w, x_fit, x_held) -> None:
    """Exercise 3: GPTQ for one layer beats RTN on held-out inputs."""

    def tests():
        q = fn(w, x_fit.T @ x_fit, 4, 64, 0.1)
        expect_tensor("gptq(w, H, ...)", q, shape=w.shape)
        levels = max(len(torch.unique(b)) for b in q.float().reshape(-1, 64)[:200])
        if levels > 16:
            raise CheckFailed(f"a group of 64 holds {levels} distinct values; a 4-bit grid has at most 16")
        rtn = reference_rtn(w, 4, 64)
        e_rtn, e_q = _rel_out_err(x_held, w, rtn), _rel_out_err(x_held, w, q)
        if torch.equal(q, rtn) or e_q >= e_rtn:
            raise CheckFailed(f"held-out output error {e_q:.4f} is not below RTN's {e_rtn:.4f}: are the error "
                              "updates applied to the not-yet-quantized columns?")
        return f"held-out output error {e_q:.4f} vs RTN {e_rtn:.4f} ({1 - e_q / e_rtn:.0%} lower)."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(fn, w, x) -> None:
    """Exercise 4: AWQ's scale search."""

    def tests():
        out = fn(w, x, 4, 64, 20)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a tuple (quantized weight, best alpha)")
        q, alpha = out
        expect_tensor("awq(...)[0]", q, shape=w.shape)
        # reference search
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

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def check_5(encode, decode) -> None:
    """Exercise 5: GGUF Q4_0, bit-exact against the gguf library."""
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
                              f"{'match' if d_ok else 'differ (d = signed max-magnitude value / -8)'}"
                              f"{'' if d_ok else ''}; codes: trunc(x/d + 8.5) clipped to 15, low nibble = element j")
        ref = gguf.quants.dequantize(want.numpy(), gguf.GGMLQuantizationType.Q4_0)
        back = decode(want, 128)
        expect_tensor("q4_0_decode(raw, 128)", back, shape=w.shape)
        if not np.array_equal(back.float().numpy(), ref):
            raise CheckFailed(f"decoded values differ from gguf by up to {np.abs(back.numpy() - ref).max():.3g}")
        return "bit-exact with gguf, including an all-zero block and a negative extreme."

    run_check(5, tests)
