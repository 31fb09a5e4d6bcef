"""GGUF block formats as llama.cpp writes them: Q4_K encode/decode from scratch, and a re-encode helper.

Q4_K (ggml ``block_q4_K``, 144 bytes per super-block of 256 weights = 4.5 bits/weight): fp16 ``d`` and fp16
``dmin``, then 12 bytes holding eight 6-bit sub-block scales and eight 6-bit sub-block mins, then 128 bytes of
4-bit codes. Sub-block ``j`` (32 weights) decodes as ``d*sc[j]*q - dmin*m[j]``.

`q4_k_encode` follows ggml's reference quantizer ``quantize_row_q4_K_ref`` / ``make_qkx2_quants``
(ggml ``src/ggml-quants.c``; what ``llama-quantize`` runs for Q4_K when no importance matrix is given) operation
by operation in float32, including its summation order, so the bytes are identical. gguf-py implements only the
decoder for Q4_K, so tests check `q4_k_decode` against ``gguf.quants.dequantize`` and `q4_k_encode` against
bytes produced by the compiled C reference (``tests/data/q4_k_ggml_ref.npz``, made by
``tests/tools/make_q4_k_fixture.py``). The reference is plain float32 C: built as ggml-base is on x86-64 (no FMA
contraction) it matches this module; a build that lets the compiler fuse multiply-adds (e.g. ``-march=native``, or
aarch64) can round a few sub-blocks differently, so "bit-exact" means "with llama.cpp's default x86-64 build".
K-quants need rows of a multiple of 256; llama-quantize stores other rows asked for Q4_K as Q5_0 (`gguf_type_for`).
"""

from __future__ import annotations

import numpy as np
import torch

QK_K = 256
Q4_K_BLOCK_BYTES = 2 + 2 + 12 + QK_K // 2
BITS_PER_WEIGHT = {"Q8_0": 34 * 8 / 32, "Q5_0": 22 * 8 / 32, "Q4_1": 20 * 8 / 32, "Q4_0": 18 * 8 / 32,
                   "Q4_K": Q4_K_BLOCK_BYTES * 8 / QK_K}
FORMATS = tuple(BITS_PER_WEIGHT)

_F = np.float32


def _as_rows(w: np.ndarray | torch.Tensor, block: int) -> np.ndarray:
    """A float32 numpy copy of `w` as 2-D rows whose length is a multiple of `block`, or a ValueError."""
    a = w.detach().cpu().float().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D array of weights, got shape {a.shape}")
    if a.shape[1] % block:
        raise ValueError(f"row length must be a multiple of {block} for this format, got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError("weights must be finite (found NaN or inf)")
    return a


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 strictly in order in float32, as ggml's scalar loops do (numpy's sum is pairwise)."""
    acc = a[0].astype(_F, copy=True)
    for row in a[1:]:
        acc += row
    return acc


def _make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
                      nstep: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants (use_mad=false) on the columns of `x` [32, n] (one sub-block per column):
    returns codes L [32, n], scale [n] and the min [n] (>= 0), with ggml's float32 operation order."""
    nmax_f = _F(nmax)
    mn = np.minimum(x.min(axis=0), _F(0))
    mx = x.max(axis=0)
    flat = mx == mn
    sum_w = _seq_sum(w)
    sum_x = _seq_sum(w * x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = nmax_f / (mx - mn)
        scale = _F(1) / iscale
        L = np.clip(np.rint(iscale * (x - mn)), 0, nmax)
        diff = scale * L + mn - x
        best = _seq_sum(w * (diff * diff))
        for step in range(nstep + 1):
            # As in ggml, `min` is the running best, so later steps measure from an updated min.
            iscale = (_F(rmin) + _F(rdelta) * _F(step) + nmax_f) / (mx - mn)
            la = np.clip(np.rint(iscale * (x - mn)), 0, nmax)
            wl = w * la
            sum_l, sum_l2, sum_xl = _seq_sum(wl), _seq_sum(wl * la), _seq_sum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, _F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            diff = this_scale * la + this_min - x
            cur = _seq_sum(w * (diff * diff))
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better, la, L)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L = np.where(flat, _F(0), L)
    scale = np.where(flat, _F(0), scale)
    return L.astype(np.uint8), scale.astype(_F), (-mn).astype(_F)


def _nearest_u8(v: np.ndarray) -> np.ndarray:
    """ggml's ``uint8_t l = nearest_int(v)``: round half to even, then wrap to 8 bits as the C cast does."""
    return (np.rint(v).astype(np.int64) & 0xFF).astype(np.uint8)


def q4_k_encode(w: np.ndarray | torch.Tensor, chunk: int = 256) -> np.ndarray:
    """fp32 weights [rows, k] (k a multiple of 256) -> uint8 [rows, k/256*144], byte-identical to ggml's Q4_K.

    Super-blocks are independent: they are encoded `chunk` at a time, so the search's many passes stay in cache."""
    a = _as_rows(w, QK_K)
    rows, k = a.shape
    flat = a.reshape(-1, QK_K)
    out = np.concatenate([_q4_k_encode_blocks(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
    return out.reshape(rows, (k // QK_K) * Q4_K_BLOCK_BYTES)


def _q4_k_encode_blocks(a: np.ndarray) -> np.ndarray:
    """Super-blocks [n, 256] -> their Q4_K bytes [n, 144]."""
    x = a.reshape(-1, 8, 32)                                   # super-blocks x sub-blocks x weights
    nb = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(-1, 32).T)            # [32, sub-blocks]: fast in-order sums
    av_x = np.sqrt(_seq_sum(sub * sub) / _F(32))
    weights = av_x + np.abs(sub)
    L, scales, mins = _make_qkx2_quants(sub, weights)
    L, scales, mins = L.T.reshape(nb, 8, 32), scales.reshape(nb, 8), mins.reshape(nb, 8)

    max_scale = scales.max(axis=1)
    max_scale = np.where(max_scale > 0, max_scale, _F(0))
    max_min = mins.max(axis=1)
    max_min = np.where(max_min > 0, max_min, _F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _F(63) / max_scale, _F(0))
        inv_min = np.where(max_min > 0, _F(63) / max_min, _F(0))
    ls = np.minimum(_nearest_u8(inv_scale[:, None] * scales), 63)
    lm = np.minimum(_nearest_u8(inv_min[:, None] * mins), 63)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d16 = (max_scale / _F(63)).astype(np.float16)
    dmin16 = (max_min / _F(63)).astype(np.float16)

    # Re-round every weight against the scales as stored (6-bit x fp16), as the reference does.
    d = d16.astype(_F)[:, None] * ls.astype(_F)
    dm = dmin16.astype(_F)[:, None] * lm.astype(_F)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint((x + dm[..., None]) / d[..., None]), 0, 15)
    zero = (d == 0)[..., None]
    L = np.where(zero, L, np.where(zero, _F(0), q).astype(np.uint8))   # a zero scale keeps make_qkx2's codes

    pairs = L.reshape(nb, 4, 2, 32)                              # chunks of 64: low nibble j, high nibble j + 32
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([d16[:, None].view(np.uint8), dmin16[:, None].view(np.uint8), packed, qs], axis=1)


def q4_k_decode(raw: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """uint8 Q4_K bytes [rows, k/256*144] -> float32 [rows, k], as ggml's dequantize_row_q4_K."""
    b = raw.cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    if b.dtype != np.uint8:
        raise ValueError(f"Q4_K data must be uint8 bytes, got {b.dtype}")
    if k % QK_K or b.size % Q4_K_BLOCK_BYTES:
        raise ValueError(f"k must be a multiple of {QK_K} and the data whole {Q4_K_BLOCK_BYTES}-byte blocks; "
                         f"got k={k}, {b.size} bytes")
    blocks = np.ascontiguousarray(b).reshape(-1, Q4_K_BLOCK_BYTES)
    nb = blocks.shape[0]
    d = blocks[:, 0:2].copy().view(np.float16).astype(_F)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(_F)
    s = blocks[:, 4:16]
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    qs = blocks[:, 16:].reshape(nb, 4, 1, 32)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32).astype(_F)
    out = (d * sc.astype(_F))[..., None] * q - (dmin * m.astype(_F))[..., None]
    return out.reshape(-1, k)


def gguf_type_for(fmt: str, k: int) -> str:
    """The type llama-quantize actually writes for rows of length `k` asked to be `fmt`: K-quants need
    k % 256 == 0, else Q4_K falls back to Q5_0 (llama.cpp ``src/llama-quant.cpp``, ``convert_incompatible_tensor``)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "Q4_K" and k % QK_K:
        return "Q5_0"
    if k % 32:
        raise ValueError(f"row length must be a multiple of 32 for {fmt}, got {k}")
    return fmt


def requantize(w: torch.Tensor, fmt: str, *, fallback: bool = True) -> torch.Tensor:
    """Encode fp32 weights [rows, k] as GGUF `fmt` (Q8_0, Q5_0, Q4_0, Q4_1, Q4_K) and decode back: the weights a
    llama.cpp file of that type holds. With `fallback`, rows llama.cpp cannot store as Q4_K (k % 256 != 0) use
    its Q5_0 fallback; otherwise they raise. Types other than Q4_K go through gguf-py's encoder (ggml's reference)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight [rows, k], got shape {tuple(w.shape)}")
    k = int(w.shape[1])
    real = gguf_type_for(fmt, k) if fallback else fmt
    if real not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if real == "Q4_K":
        back = q4_k_decode(q4_k_encode(w), k)
    else:
        import gguf

        qtype = gguf.GGMLQuantizationType[real]
        back = gguf.quants.dequantize(gguf.quants.quantize(_as_rows(w, 32), qtype), qtype).reshape(w.shape)
    return torch.from_numpy(np.ascontiguousarray(back)).to(w.dtype)
