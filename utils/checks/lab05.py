"""Hidden tests of lab 05 (number formats). Each `check_N(fn)` prints a pass line or a one-line verdict.

References are PyTorch's own implementations where one exists (`torch.fake_quantize_per_tensor_affine`, the
float8 casts) and `utils.quant` otherwise (itself tested against PyTorch in tests/test_number_formats.py).
"""

from __future__ import annotations

import math

import torch

from .. import quant
from ..checking import CheckFailed, expect_close, expect_tensor, run_check

# bitsandbytes' float32 NF4 table as published in bitsandbytes/functional.py, get_4bit_type("nf4")
# (https://github.com/bitsandbytes-foundation/bitsandbytes; QLoRA, arXiv:2305.14314, lists the same values)
NF4_PUBLISHED = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0)


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
            # (not the first tie grid: there x/scale and torch's x*(1/scale) can differ by a float ulp at a tie;
            # this one has a power-of-two scale, 7.5 / 15 = 0.5, so every x/scale is exact and half of them are ties)
            ties = torch.arange(-16, 15, dtype=torch.float32) / 4
            cases = _inputs()[:3] + [("all positive U(0.5, 2.5)", positive)]
            if bits == 4:
                cases.append(("tie grid -4.0..3.5 step 0.25 (scale 0.5: x/scale hits every k + 0.5)", ties))
            for name, x in cases:
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
                try:
                    _max_step_error(f"(q - zero_point) * scale for {name}, {bits} bits, vs torch", (q - float(zero)) *
                                    float(scale), ref, want_scale)
                except CheckFailed as e:
                    if "tie" in name:
                        raise CheckFailed(f"{e} — exact halves must round to the even neighbour (torch.round), "
                                          "not away from zero or up (floor(v + 0.5))") from None
                    raise
        return "matches torch.fake_quantize_per_tensor_affine, ties to even included; all 2^bits codes in use."

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
            got = fn(x, x_hat)
            try:
                expect_close(f"SQNR of N(0,1) plus noise of std {noise}", got, want, rtol=1e-6, atol=1e-6)
            except CheckFailed as e:
                g_ = float(got)
                hint = (" — hint: both sums are powers already, so use 10·log10, not 20·log10" if abs(g_ - 2 * want)
                        < 1e-3 * abs(want) else " — hint: signal over noise, not noise over signal" if abs(g_ + want)
                        < 1e-3 * abs(want) else " — hint: the ratio of Σx² to Σ(x − x̂)², in decibels (10·log10)")
                raise CheckFailed(f"{e}{hint}") from None
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
        tiny = torch.randn(64, 96, generator=g) * 2.0**-50    # absmax ~ 3e-15: must still reach 448
        zero_block = torch.randn(64, 96, generator=g)
        zero_block[:32, 32:64] = 0                             # one all-zero block of 32x32
        cases = [(w1, 128), (torch.randn(256, 128, generator=g), 128), (torch.randn(70, 50, generator=g) * 5, 32),
                 (tiny, 32), (zero_block, 32)]
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
            zero = quant.to_blocks(w, (b, b)).abs().amax(-1).reshape(nb) == 0
            if zero.any():
                zs = scales.float()[zero]
                if not (torch.isfinite(zs).all() and (zs > 0).all()):
                    raise CheckFailed(f"scales ({what}): an all-zero block got scale {zs.flatten()[0].item():g}; "
                                      "amax / 448 is 0 there, and dividing by it gives NaN — give such a block "
                                      "scale 1 (its codes are all 0 either way)")
                if not torch.isfinite(w8.float()).all():
                    raise CheckFailed(f"w_fp8 ({what}): NaN in an all-zero block — give that block scale 1")
                want_scales = torch.where(zero, scales.float(), want_scales)
            ratio = (scales.float() / want_scales)
            if not torch.allclose(scales.float(), want_scales, rtol=1e-5, atol=0):
                if w.abs().max() < 1e-10 and ratio.max() > 10:
                    raise CheckFailed(f"scales ({what}): your scales are clamped (got {scales.float().min():.3g}, "
                                      f"expected {want_scales.min():.3g}): a block of tiny values must still map "
                                      "its absmax to 448 — guard only the all-zero block, don't clamp at 1e-12")
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
        return ("128x128 blocks, scale = amax/448 however small the block, an all-zero block stays 0, an outlier "
                "only costs its own block.")

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def check_7(codebook_fn, quantize_fn) -> None:
    """Exercise 7: the NF4 codebook (vs the published table) and nearest-level quantization."""

    def tests():
        code = codebook_fn()
        expect_tensor("nf4_codebook()", code, shape=(16,))
        pub = torch.tensor(NF4_PUBLISHED, dtype=torch.float32)
        if code.dtype != torch.float32:
            raise CheckFailed(f"nf4_codebook() must return float32 (bitsandbytes' table is float32), got {code.dtype}")
        diff = (code - pub).abs()
        if diff.max() > 1e-4:
            i = int(diff.argmax())
            raise CheckFailed(f"NF4 level {i}: the published table (QLoRA / bitsandbytes) has {pub[i]:.4f}, you have "
                              f"{code[i].item():.4f} (normal quantiles of linspace(offset, 0.5, 9)[:-1] and "
                              "linspace(offset, 0.5, 8)[:-1], plus 0, sorted, divided by the max)")
        if not torch.equal(code.view(torch.int32), pub.view(torch.int32)):
            n = int((code != pub).sum())
            raise CheckFailed(f"{n} of 16 levels are within 1e-4 of bitsandbytes' float32 table but not bit-identical "
                              "— follow its dtypes: float32 linspace, quantiles in float64, then .float(), then divide "
                              "by the max in float32")
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


# --------------------------------------------------------------------------- exercise 8
def check_8(fn) -> None:
    """Exercise 8: DeepSeek-V3's 1x128 activation tiles in FP8 e4m3 (one scale per token per 128 channels)."""

    def tests():
        g = _gen(10)
        x1 = torch.randn(16, 576, generator=g)
        x1[3, 200] = 1e3                                   # an outlier costs only its own tile
        x2 = torch.randn(8, 300, generator=g) * 0.1        # 300 = 2 tiles of 128 + one of 44
        x3 = torch.randn(6, 256, generator=g)
        x3[1] = 0                                          # an all-zero token
        x3[4] *= 2.0**-50                                  # a token of tiny values: must still reach 448
        for x, tile in ((x1, 128), (x2, 128), (x3, 64)):
            T, C = x.shape
            what = f"{T}x{C} activation, tiles of 1x{tile}"
            out = fn(x.clone(), tile)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise CheckFailed("return a tuple (x_fp8, scales)")
            x8, scales = out
            nt = math.ceil(C / tile)
            expect_tensor(f"x_fp8 ({what})", x8, shape=x.shape, dtype=torch.float8_e4m3fn)
            if torch.is_tensor(scales) and tuple(scales.shape) in ((T,), (T, 1)):
                raise CheckFailed(f"scales ({what}): shape {tuple(scales.shape)} is one scale per token; a 1x{tile} "
                                  f"tile is one token and {tile} consecutive channels, so expect shape ({T}, {nt})")
            if torch.is_tensor(scales) and tuple(scales.shape) == (math.ceil(T / tile), C):
                raise CheckFailed(f"scales ({what}): shape {tuple(scales.shape)} tiles the tokens ({tile}x1, the "
                                  f"backward-pass layout); forward activations use 1x{tile}: expect shape ({T}, {nt})")
            expect_tensor(f"scales ({what})", scales, shape=(T, nt))
            scales = scales.float()
            _, want = quant.quantize_fp8(x, (1, tile))
            want = want.reshape(T, nt)
            zero = quant.to_blocks(x, (1, tile)).abs().amax(-1).reshape(T, nt) == 0
            if not (torch.isfinite(scales).all() and (scales > 0).all()):
                raise CheckFailed(f"scales ({what}): {int((~torch.isfinite(scales) | (scales <= 0)).sum())} scales are "
                                  "0, negative, inf or NaN — an all-zero tile needs scale 1, not amax / 448 = 0")
            want = torch.where(zero, scales, want)
            if not torch.allclose(scales, want, rtol=1e-5, atol=0):
                bad = ((scales - want).abs() > 1e-5 * want).nonzero()[0].tolist()
                r = (scales[tuple(bad)] / want[tuple(bad)]).item()
                hint = (" — a token of tiny values must still map its absmax to 448: guard only the all-zero tile, "
                        "don't clamp the scale" if r > 10 else " — the e4m3 maximum is 448 (scale = amax / 448)"
                        if abs(r - 1) > 1e-3 else "")
                raise CheckFailed(f"scales ({what}): token {bad[0]}, tile {bad[1]} expected {want[tuple(bad)]:.6g}, "
                                  f"got {scales[tuple(bad)]:.6g}{hint}")
            deq = x8.float() * scales.repeat_interleave(tile, 1)[:, :C]
            ref = quant.fake_quantize_fp8(x, (1, tile))
            if not torch.allclose(deq, ref, rtol=1e-6, atol=0):
                i = int((deq - ref).abs().argmax())
                raise CheckFailed(f"x_fp8 * scale ({what}) differs at [token, channel] {list(divmod(i, C))}: expected "
                                  f"{ref.flatten()[i]:.6g}, got {deq.flatten()[i]:.6g} (divide x by its own tile's "
                                  "scale before casting)")
        return "one scale per token per 128 channels, edge tiles, zero and tiny tokens handled."

    run_check(8, tests)


# --------------------------------------------------------------------------- exercise 9
def _accumulate_ref(p: torch.Tensor, bits: int, mode: str, promote_every: int | None, reset: bool = True,
                    round_total: bool = False) -> torch.Tensor:
    """The reference (and, with reset/round_total changed, two classic mistakes)."""
    n, k = p.shape
    total, acc = torch.zeros(n), torch.zeros(n)
    for j in range(k):
        acc = quant.round_significand(acc + p[:, j], bits, mode)
        if promote_every and (j + 1) % promote_every == 0:
            total = total + acc
            if round_total:
                total = quant.round_significand(total, bits, mode)
            if reset:
                acc = torch.zeros(n)
    if not promote_every:
        return acc
    total = total + acc
    return quant.round_significand(total, bits, mode) if round_total else total


def check_9(fn) -> None:
    """Exercise 9: a limited-precision running sum, with and without FP32 promotion every N elements."""

    def tests():
        g = _gen(11)
        cases = [(torch.randn(64, 300, generator=g), 14, "truncate", 128),
                 (torch.randn(64, 300, generator=g), 14, "nearest", None),
                 (torch.rand(16, 512, generator=g), 14, "truncate", None),
                 (torch.randn(32, 100, generator=g), 8, "truncate", 32),
                 (torch.rand(16, 512, generator=g), 10, "nearest", 128)]
        for p, bits, mode, every in cases:
            what = f"{p.shape[0]} sums of {p.shape[1]} products, {bits}-bit {mode}" + (
                f", promoted every {every}" if every else ", no promotion")
            got = fn(p.clone(), bits=bits, mode=mode, promote_every=every)
            expect_tensor(f"accumulate ({what})", got, shape=(p.shape[0],))
            got = got.double()
            want = _accumulate_ref(p, bits, mode, every).double()
            tol = 1e-6 * p.abs().sum(-1).double()                 # fp32 rounding of the total, not 2^-bits
            if ((got - want).abs() <= tol).all():
                continue
            same = lambda ref, got=got, tol=tol: bool(((got - ref.double()).abs() <= tol).all())
            hint = "compare with the reference step by step on a short row"
            if same(p.double().sum(-1)):
                hint = "that is the exact sum: round the running sum to `bits` bits after every add"
            elif same(quant.round_significand(p.sum(-1), bits, mode)):
                hint = "you rounded only the result: round the running sum after every single add"
            elif every and same(_accumulate_ref(p, bits, mode, None)):
                hint = (f"that is the result without promotion: every {every} products add the partial sum into an "
                        "fp32 total and restart it at 0")
            elif every and same(_accumulate_ref(p, bits, mode, every, reset=False)):
                hint = "after promoting, restart the low-precision partial sum at 0 (it was added twice)"
            elif every and same(_accumulate_ref(p, bits, mode, every, round_total=True)):
                hint = "the fp32 total is a plain float32 add: do not round it to `bits` bits"
            elif same(_accumulate_ref(p, bits, "nearest" if mode == "truncate" else "truncate", every)):
                hint = f"wrong rounding rule: mode={mode!r} (quant.round_significand(v, bits, mode))"
            elif every and p.shape[1] % every and same(_accumulate_ref(p[:, : p.shape[1] // every * every], bits,
                                                                      mode, every)):
                hint = f"the last {p.shape[1] % every} products (an incomplete chunk) were dropped: add what is left"
            i = int((got - want).abs().argmax())
            raise CheckFailed(f"accumulate ({what}): sum {i} expected {want[i].item():.8g}, got {got[i].item():.8g} "
                              f"— {hint}")
        return "a running sum rounded to `bits` bits after every add; fp32 promotion every N, last chunk included."

    run_check(9, tests)
