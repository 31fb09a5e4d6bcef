"""Fake quantization helpers shared by notebooks 05 and 06: integer, FP8 and NF4 formats at any block granularity.

A *block* is the set of weights that share one scale, given as ``(rows, cols)`` over a 2-D tensor; ``-1``
means "the whole dimension". So per-tensor is ``(-1, -1)``, per-output-channel ``(1, -1)``, per-group of 128
along the input dimension ``(1, 128)``, DeepSeek-V3's weight blocks ``(128, 128)`` and its activation tiles
``(1, 128)``. Shapes that do not divide evenly are zero-padded to whole blocks and cropped afterwards (as
DeepSeek-V3's weight files do). Every ``fake_quantize_*`` returns the dequantized tensor in the input's shape
and dtype, so the error of a format is simply ``x - fake_quantize_*(x, ...)``.

Notebook 05 builds the same functions from scratch, visibly; this module is the tested copy later notebooks import.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FP8_FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
GRANULARITIES = ("tensor", "channel", "group", "block")


def block_shape(granularity: str, group_size: int = 128) -> tuple[int, int]:
    """The ``(rows, cols)`` block for a named granularity: tensor, channel, group (1 x g) or block (g x g)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    return {"tensor": (-1, -1), "channel": (1, -1), "group": (1, group_size), "block": (group_size, group_size)}[
        granularity]


def _resolve(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2:
        raise ValueError(f"block must be (rows, cols), got {block!r}")
    out = []
    for n, b in zip(shape, block):
        if b == -1:
            b = n
        if b < 1:
            raise ValueError(f"block sizes must be positive or -1, got {block!r}")
        out.append(b)
    return out[0], out[1]


def to_blocks(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a 2-D tensor to whole blocks and return it as (n_block_rows, n_block_cols, rows*cols)."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D tensor, got shape {tuple(x.shape)}")
    br, bc = _resolve(tuple(x.shape), block)
    R, C = x.shape
    xp = F.pad(x, (0, (-C) % bc, 0, (-R) % br))
    nr, nc = xp.shape[0] // br, xp.shape[1] // bc
    return xp.reshape(nr, br, nc, bc).permute(0, 2, 1, 3).reshape(nr, nc, br * bc)


def from_blocks(xb: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Inverse of `to_blocks`: reassemble the blocks and crop the padding back to `shape`."""
    br, bc = _resolve(tuple(shape), block)
    nr, nc, _ = xb.shape
    return xb.reshape(nr, nc, br, bc).permute(0, 2, 1, 3).reshape(nr * br, nc * bc)[: shape[0], : shape[1]]


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer 2..8, got {bits!r}")


def quantize_int(x: torch.Tensor, bits: int, block: tuple[int, int] = (-1, -1), symmetric: bool = True,
                 *, signed_absmax: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest integer quantization per block: (q, scale, zero_point), q of shape (nr, nc, elems).

    Symmetric (absmax): q in [-(2^(b-1)-1), 2^(b-1)-1], scale = absmax / (2^(b-1)-1), zero_point = 0.
    Asymmetric (zero-point): q in [0, 2^b-1], scale = (max - min) / (2^b-1) over a range that includes 0
    (so 0 is exact, as in PyTorch's MinMaxObserver), zero_point = round(-min / scale).
    `signed_absmax=True` (symmetric only) is llama.cpp's Q4_0 rule, which uses all 2^b codes: scale =
    m / -2^(b-1) with m the block's value of largest magnitude *with its sign*, q in [-2^(b-1), 2^(b-1)-1], so m
    lands exactly on code -2^(b-1) and the other sign gets one code more than the symmetric grid.
    Rounding is round-half-to-even (`torch.round`), as in `torch.fake_quantize_per_tensor_affine`.
    """
    _check_bits(bits)
    if signed_absmax and not symmetric:
        raise ValueError("signed_absmax is a symmetric (zero_point = 0) scheme; use symmetric=True")
    xb = to_blocks(x.float(), block)
    if signed_absmax:
        qmin = -(2 ** (bits - 1))
        m = torch.gather(xb, -1, xb.abs().argmax(-1, keepdim=True))
        scale = m / qmin
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)     # an all-zero block: codes 0
        q = torch.round(xb / scale).clamp(qmin, -qmin - 1)
        zero = torch.zeros_like(scale)
    elif symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (xb.abs().amax(-1, keepdim=True) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(xb / scale).clamp(-qmax, qmax)
        zero = torch.zeros_like(scale)
    else:
        qmax = 2**bits - 1
        lo = xb.amin(-1, keepdim=True).clamp(max=0)
        hi = xb.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / qmax).clamp(min=torch.finfo(torch.float32).tiny)
        zero = torch.round(-lo / scale).clamp(0, qmax)
        q = (torch.round(xb / scale) + zero).clamp(0, qmax)
    return q, scale, zero


def fake_quantize_int(x: torch.Tensor, bits: int, block: tuple[int, int] = (-1, -1), symmetric: bool = True,
                      *, signed_absmax: bool = False) -> torch.Tensor:
    """Quantize to `bits`-bit integers per block and dequantize back (same shape and dtype as `x`)."""
    q, scale, zero = quantize_int(x, bits, block, symmetric, signed_absmax=signed_absmax)
    return from_blocks((q - zero) * scale, tuple(x.shape), block).to(x.dtype)


def quantize_fp8(x: torch.Tensor, block: tuple[int, int] = (-1, -1), fmt: str = "e4m3"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each block so its absmax lands on the format's max (448 for e4m3), cast: (x_fp8 blocks, fp32 scales).

    scale = absmax / max, computed for every block however small, so a block of tiny values (2^-50, say) still
    uses the whole format. Two guards: an all-zero block gets scale 1 (its codes are 0), and the scale never goes
    below fp32's smallest normal 2^-126 (a subnormal scale would be inexact and could push x / scale past the
    max), so only blocks with absmax below max * 2^-126 (about 5e-36 for e4m3) fall short of the format's max.
    """
    if fmt not in FP8_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FP8_FORMATS)}, got {fmt!r}")
    dtype = FP8_FORMATS[fmt]
    xb = to_blocks(x.float(), block)
    amax = xb.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, amax / torch.finfo(dtype).max, torch.ones_like(amax))
    scale = scale.clamp(min=torch.finfo(torch.float32).tiny)
    return (xb / scale).to(dtype), scale


def fake_quantize_fp8(x: torch.Tensor, block: tuple[int, int] = (-1, -1), fmt: str = "e4m3") -> torch.Tensor:
    """FP8 quantize per block (absmax scaling) and dequantize back to `x`'s shape and dtype."""
    q, scale = quantize_fp8(x, block, fmt)
    return from_blocks(q.float() * scale, tuple(x.shape), block).to(x.dtype)


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels (QLoRA, arXiv:2305.14314), bit-identical to bitsandbytes' float32 table.

    bitsandbytes' `create_normal_map(offset=0.9677083, use_extra_value=True)`: quantile points from a float32
    `torch.linspace`, the normal quantile of each in float64 (scipy's `norm.ppf`; here `torch.special.ndtri`),
    rounded to float32, sorted with an exact 0, divided by the max in float32. 8 positive + 7 negative levels.
    """
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()
    neg = (-torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())).float()
    v = torch.cat([pos, neg, torch.zeros(1)]).sort().values
    return v / v.max()


def fake_quantize_codebook(x: torch.Tensor, codebook: torch.Tensor, block: tuple[int, int] = (1, 64)) -> torch.Tensor:
    """Absmax-scale each block to [-1, 1], snap every value to the nearest codebook level, scale back."""
    code = codebook.float().sort().values
    xb = to_blocks(x.float(), block)
    absmax = xb.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(xb / absmax, mids)
    return from_blocks(code[idx] * absmax, tuple(x.shape), block).to(x.dtype)


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2); inf when exact."""
    x, x_hat = x.double(), x_hat.double()
    noise = (x - x_hat).pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(x.pow(2).sum().item() / noise)


def sqnr_gain(x: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor, rows_per_block: int = 16,
              level: float = 0.95, seed: int = 0):
    """SQNR(x_b) - SQNR(x_a) in dB (> 0: b is closer to x), as an `evidence.Interval`.

    The interval resamples blocks of `rows_per_block` consecutive rows of the 2-D `x` (output channels of a weight,
    tokens of an activation, blocks of samples) with `evidence.block_bootstrap`; the point estimate is the pooled
    10 log10(sum (x - x_a)^2 / sum (x - x_b)^2).
    """
    import numpy as np

    from . import evidence

    if x.ndim != 2 or x_a.shape != x.shape or x_b.shape != x.shape:
        raise ValueError(f"x, x_a, x_b must be 2-D of one shape, got {tuple(x.shape)}, {tuple(x_a.shape)}, "
                         f"{tuple(x_b.shape)}")
    ea = (x.double() - x_a.double()).pow(2).sum(1).numpy()
    eb = (x.double() - x_b.double()).pow(2).sum(1).numpy()
    if ea.sum() == 0 or eb.sum() == 0:
        raise ValueError("one of the reconstructions is exact: its SQNR is infinite, there is no finite gain")
    stat = lambda sa, sb, c: 10 * np.log10(sa.sum(-1) / sb.sum(-1))
    low, high = evidence.block_bootstrap([ea, eb], stat, block=rows_per_block, level=level, seed=seed)
    return evidence.Interval(float(10 * np.log10(ea.sum() / eb.sum())), low, high, level)


def bits_per_weight(bits: float, shape: tuple[int, int], block: tuple[int, int], scale_bits: int = 16,
                    zero_bits: int = 0) -> float:
    """Storage per weight including one scale (and optional zero point) per block, padding not counted."""
    br, bc = _resolve(tuple(shape), block)
    n_blocks = math.ceil(shape[0] / br) * math.ceil(shape[1] / bc)
    return bits + n_blocks * (scale_bits + zero_bits) / (shape[0] * shape[1])


def round_significand(x: torch.Tensor, bits: int, mode: str = "nearest") -> torch.Tensor:
    """Keep `bits` significant binary digits of every value (exponent range unchanged): nearest-even or truncate."""
    if not 1 <= bits <= 24:
        raise ValueError(f"bits must be 1..24, got {bits}")
    if mode not in ("nearest", "truncate"):
        raise ValueError(f"mode must be 'nearest' or 'truncate', got {mode!r}")
    m, e = torch.frexp(x)  # x = m * 2**e with 0.5 <= |m| < 1
    s = torch.ldexp(m, torch.tensor(bits, dtype=e.dtype))
    s = torch.round(s) if mode == "nearest" else torch.trunc(s)
    return torch.ldexp(s, e - bits).to(x.dtype)
