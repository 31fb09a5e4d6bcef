"""Hidden tests of lab 05 (number formats). Each `check_N(fn)` prints a pass line or a one-line verdict.

References are PyTorch's own implementations where one exists (`torch.fake_quantize_per_tensor_affine`, the
float8 casts) and `utils.quant` otherwise (itself tested against PyTorch in tests/test_number_formats.py).
"""

from __future__ import annotations

import math

import torch

from .. import quant
from ..checking import CheckFailed, expect_close, expect_tensor, run_check

NF4_PUBLISHED = (-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs() -> list[tuple[str, torch.Tensor]]:
    """Small test tensors: normal, lopsided, with an outlier, and a grid full of exact rounding ties."""
    g = _gen(5)
    normal = torch.randn(64, 48, generator=g)
    lopsided = torch.rand(200, generator=g) * 3 - 0.5
    outlier = torch.randn(300, generator=g)
    outlier[17] = 40.0
    ties = torch.arange(-70, 71, dtype=torch.float32) / 10   # absmax 7: with 4 bits the scale is 1, x/scale = k/10
    return [("N(0,1) 64x48", normal), ("lopsided U(-0.5, 2.5)", lopsided), ("N(0,1) with an outlier of 40", outlier),
            ("tie grid -7.0..7.0 step 0.1", ties)]


def _max_step_error(what: str, got: torch.Tensor, want: torch.Tensor, step: float) -> None:
    diff = (got.double() - want.double()).abs()
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{what}: your result contains NaN or inf")
    if diff.max() > 1e-3 * max(step, 1e-12):
        i = int(diff.argmax())
        n = int((diff > 1e-3 * step).sum())
        raise CheckFailed(f"{what}: {n} of {got.numel()} values differ from the reference, e.g. element {i}: expected "
                          f"{want.flatten()[i].item():.6g}, got {got.flatten()[i].item():.6g} "
                          f"({diff.flatten()[i].item() / step:.2g} quantization steps off)")


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: symmetric absmax quantization vs torch.fake_quantize_per_tensor_affine."""

    def tests():
        for bits in (8, 4, 3):
            qmax = 2 ** (bits - 1) - 1
            for name, x in _inputs():
                out = fn(x.clone(), bits)
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise CheckFailed("return a tuple (q, scale)")
                q, scale = out
                expect_tensor(f"q for {name}", q, shape=x.shape)
                want_scale = x.abs().max().item() / qmax
                expect_close(f"scale for {name}, {bits} bits (max|x| / (2^(bits-1) - 1))", scale, want_scale, rtol=1e-5)
                q = q.float()
                if q.min() < -qmax or q.max() > qmax or not torch.equal(q, q.round()):
                    raise CheckFailed(f"{bits}-bit codes must be integers in [{-qmax}, {qmax}]; got values from "
                                      f"{q.min().item():g} to {q.max().item():g}")
                ref = torch.fake_quantize_per_tensor_affine(x, want_scale, 0, -qmax, qmax)
                _max_step_error(f"q * scale for {name}, {bits} bits, vs torch.fake_quantize_per_tensor_affine",
                                q * float(scale), ref, want_scale)
        return "matches torch.fake_quantize_per_tensor_affine, ties included."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(fn) -> None:
    """Exercise 2: asymmetric zero-point quantization vs torch.fake_quantize_per_tensor_affine."""

    def tests():
        for bits in (8, 4):
            qmax = 2**bits - 1
            positive = torch.rand(100, generator=_gen(9)) * 2 + 0.5
            # (not the tie grid: there x/scale and torch's x*(1/scale) can differ by a float ulp at a tie)
            for name, x in _inputs()[:3] + [("all positive U(0.5, 2.5)", positive)]:
                out = fn(x.clone(), bits)
                if not (isinstance(out, tuple) and len(out) == 3):
                    raise CheckFailed("return a tuple (q, scale, zero_point)")
                q, scale, zero = out
                lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
                want_scale = (hi - lo) / qmax
                expect_close(f"scale for {name}, {bits} bits ((max - min) / (2^bits - 1), range including 0)",
                             scale, want_scale, rtol=1e-5)
                want_zero = round(-lo / want_scale)
                expect_close(f"zero_point for {name}, {bits} bits", zero, want_zero, rtol=0, atol=0)
                expect_tensor(f"q for {name}", q, shape=x.shape)
                q = q.float()
                if q.min() < 0 or q.max() > qmax or not torch.equal(q, q.round()):
                    raise CheckFailed(f"{bits}-bit codes must be integers in [0, {qmax}]; got values from "
                                      f"{q.min().item():g} to {q.max().item():g}")
                ref = torch.fake_quantize_per_tensor_affine(x, want_scale, int(want_zero), 0, qmax)
                _max_step_error(f"(q - zero_point) * scale for {name}, {bits} bits, vs torch", (q - float(zero)) *
                                float(scale), ref, want_scale)
        return "matches torch.fake_quantize_per_tensor_affine; all 2^bits codes in use."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(fn) -> None:
    """Exercise 3: SQNR in dB."""

    def tests():
        g = _gen(3)
        x = torch.randn(1000, generator=g)
        for noise in (0.1, 0.01, 1.0, 3.0):
            x_hat = x + noise * torch.randn(1000, generator=g)
            want = 10 * math.log10(x.double().pow(2).sum().item() / (x - x_hat).double().pow(2).sum().item())
            expect_close(f"SQNR of N(0,1) plus noise of std {noise}", fn(x, x_hat), want, rtol=1e-6, atol=1e-6)
        x8 = torch.full((10,), 1e-3)
        expect_close("SQNR of a tiny signal (1e-3) with 1e-4 of error", fn(x8, x8 * 1.1), 20.0, rtol=1e-6)
        return "10·log10 of the power ratio: each bit buys about 6 dB."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(fn) -> None:
    """Exercise 4: group-wise symmetric quantization with zero-padding, vs utils.quant."""

    def tests():
        g = _gen(4)
        cases = [(torch.randn(8, 64, generator=g), 4, 16), (torch.randn(5, 100, generator=g), 4, 32),
                 (torch.randn(3, 50, generator=g) * torch.logspace(-2, 2, 50), 3, 8),
                 (torch.randn(7, 45, generator=g), 8, 128)]
        zeros = torch.randn(4, 64, generator=g)
        zeros[1, :32] = 0
        cases.append((zeros, 4, 32))
        for w, bits, gs in cases:
            what = f"{bits}-bit groups of {gs} on a {w.shape[0]}x{w.shape[1]} matrix"
            got = fn(w.clone(), bits, gs)
            expect_tensor(what, got, shape=w.shape)
            want = quant.fake_quantize_int(w, bits, (1, gs))
            if torch.isnan(got).any():
                raise CheckFailed(f"{what}: NaN in the result (an all-zero group must give scale 0 -> values 0)")
            diff = (got - want).abs()
            if diff.max() > 1e-5 * w.abs().max():
                r, c = divmod(int(diff.argmax()), w.shape[1])
                raise CheckFailed(f"{what}: element [{r}, {c}] expected {want[r, c].item():.6g}, got "
                                  f"{got[r, c].item():.6g} (group {c // gs} of row {r}; groups run along each row "
                                  "and the last one is zero-padded)")
        return "one scale per group of each row, padding handled."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def _e4m3_probe() -> torch.Tensor:
    every_fp16 = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    g = _gen(6)
    rand = torch.randn(20_000, generator=g) * 10.0 ** torch.randint(-4, 4, (20_000,), generator=g)
    return torch.cat([every_fp16, rand, torch.tensor([math.inf, -math.inf, 1e30, -1e30])])


def check_5(fn) -> None:
    """Exercise 5: a from-scratch e4m3 caster vs torch's float8_e4m3fn cast."""

    def tests():
        x = _e4m3_probe()
        got = fn(x.clone())
        expect_tensor("to_e4m3(x)", got, shape=x.shape)
        got = got.float()
        ref = x.to(torch.float8_e4m3fn).float()
        same = (got == ref) | (got.isnan() & ref.isnan())
        if not same.all():
            bad = (~same).nonzero().flatten()
            i = int(bad[0])
            kinds = []
            xs = x[bad]
            if (xs.abs() > 448).any():
                kinds.append("overflow (e4m3fn saturates at ±448, even for inf)")
            if (xs.abs() < 2**-6).any():
                kinds.append("subnormals (spacing 2^-9 below 2^-6)")
            step = torch.ldexp(torch.ones_like(xs), torch.frexp(xs)[1].clamp(min=-5) - 4)
            ratio = (xs / step) % 1
            if ((ratio == 0.5) & (xs.abs() <= 448)).any():
                kinds.append("exact ties (round half to even, not away from zero)")
            raise CheckFailed(f"{bad.numel()} of {x.numel()} values differ from torch's cast, e.g. "
                              f"x = {x[i].item():.9g}: expected {ref[i].item():.9g}, got {got[i].item():.9g}. "
                              "Wrong values include: "
                              f"{'; '.join(kinds) or 'ordinary values (check the spacing 2^(e-4))'}")
        return "bit-identical to torch's float8_e4m3fn cast on every fp16 value."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(fn) -> None:
    """Exercise 6: DeepSeek-V3-style 128x128 FP8 e4m3 block scaling (scale = amax / 448)."""

    def tests():
        g = _gen(7)
        w1 = torch.randn(300, 200, generator=g) * 0.02
        w1[5, 7] = 3.0                                   # an outlier affects only its own block
        cases = [(w1, 128), (torch.randn(256, 128, generator=g), 128), (torch.randn(70, 50, generator=g) * 5, 32)]
        for w, b in cases:
            what = f"{w.shape[0]}x{w.shape[1]} weight, blocks of {b}"
            out = fn(w.clone(), b)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise CheckFailed("return a tuple (w_fp8, scales)")
            w8, scales = out
            nb = (math.ceil(w.shape[0] / b), math.ceil(w.shape[1] / b))
            expect_tensor(f"w_fp8 ({what})", w8, shape=w.shape, dtype=torch.float8_e4m3fn)
            expect_tensor(f"scales ({what})", scales, shape=nb)
            _, want_scales = quant.quantize_fp8(w, (b, b))
            want_scales = want_scales.reshape(nb)
            ratio = (scales.float() / want_scales)
            if not torch.allclose(scales.float(), want_scales, rtol=1e-5, atol=0):
                i = int((ratio - 1).abs().argmax())
                r = ratio.flatten()[i].item()
                hint = (" (that is 1/scale: divide amax by 448, then divide w by the scale)" if r < 1e-2 or r > 1e2
                        else f" (ratio {r:.4g}; 448/{448 / r:.4g} — the e4m3 maximum is 448)" if abs(r - 1) > 1e-3
                        else "")
                raise CheckFailed(f"scales ({what}): block {divmod(i, nb[1])} expected {want_scales.flatten()[i]:.6g}, "
                                  f"got {scales.float().flatten()[i]:.6g}{hint}")
            want8 = quant.fake_quantize_fp8(w, (b, b))
            full = scales.float().repeat_interleave(b, 0).repeat_interleave(b, 1)
            deq = w8.float() * full[: w.shape[0], : w.shape[1]]
            if not torch.allclose(deq, want8, rtol=1e-6, atol=0):
                i = int((deq - want8).abs().argmax())
                raise CheckFailed(f"dequantized w_fp8 * scale ({what}) differs at element {divmod(i, w.shape[1])}: "
                                  f"expected {want8.flatten()[i]:.6g}, got {deq.flatten()[i]:.6g}")
        return "128x128 blocks, scale = amax/448, an outlier only costs its own block."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def check_7(codebook_fn, quantize_fn) -> None:
    """Exercise 7: the NF4 codebook (vs the published table) and nearest-level quantization."""

    def tests():
        code = codebook_fn()
        expect_tensor("nf4_codebook()", code, shape=(16,))
        pub = torch.tensor(NF4_PUBLISHED)
        diff = (code.float() - pub).abs()
        if diff.max() > 1e-4:
            i = int(diff.argmax())
            raise CheckFailed(f"NF4 level {i}: the published table (QLoRA / bitsandbytes) has {pub[i]:.4f}, you have "
                              f"{code[i].item():.4f} (normal quantiles of linspace(offset, 0.5, 9)[:-1] and "
                              "linspace(offset, 0.5, 8)[:-1], plus 0, sorted, divided by the max)")
        g = _gen(8)
        for name, x in (("N(0,1) 32x64", torch.randn(32, 64, generator=g)),
                        ("U(-1, 3) 16x128", torch.rand(16, 128, generator=g) * 4 - 1)):
            got = quantize_fn(x.clone(), pub, 64)
            expect_tensor(f"nf4_quantize on {name}", got, shape=x.shape)
            want = quant.fake_quantize_codebook(x.reshape(-1, 64), pub, (1, 64)).reshape(x.shape)
            wrong = ((got - want).abs() > 1e-6 * x.abs().max()).float().mean().item()
            if wrong > 1e-3:
                raise CheckFailed(f"nf4_quantize on {name}: {wrong:.1%} of the values are not at the nearest "
                                  "level × their block's absmax (blocks of 64 consecutive values)")
        return "codebook matches the published NF4 table; nearest-level snapping per block of 64."

    run_check(7, tests)
