"""utils.quant and notebook 05's from-scratch casts agree with PyTorch's own casts and quantizers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from utils import quant
from utils.results import REPO_ROOT

NF4_PUBLISHED = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


def _notebook_function(name: str):
    """Exec the code cell of notebook 05 that defines `name` (only that cell)."""
    nb = json.loads((REPO_ROOT / "notebooks" / "05_number_formats.ipynb").read_text())
    ns: dict = {"torch": torch, "math": math}
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.lstrip().startswith(f"def {name}("):
            exec(src.split("\n\n\nSPECS")[0], ns)
            return ns[name]
    raise LookupError(name)


def _probe() -> torch.Tensor:
    """Every fp16 bit pattern (contains the exact ties of every narrower format), plus random values and infinities."""
    every_fp16 = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(50_000, generator=g) * 10.0 ** torch.randint(-8, 8, (50_000,), generator=g)
    return torch.cat([every_fp16, rand, torch.tensor([math.inf, -math.inf, math.nan])])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("fmt,spec", [
    (torch.float8_e4m3fn, (3, -6, 448.0, True)), (torch.float8_e5m2, (2, -14, 57344.0, False)),
    (torch.float16, (10, -14, 65504.0, False)), (torch.bfloat16, (7, -126, torch.finfo(torch.bfloat16).max, False))])
def test_notebook_float_caster_matches_torch_casts(fmt, spec):
    round_to_format = _notebook_function("round_to_format")
    x = _probe()
    assert _same(round_to_format(x, *spec), x.to(fmt).float())


def test_probe_has_teeth_round_half_away_differs_from_torch():
    x = _probe()
    _, e = torch.frexp(x)
    step = torch.ldexp(torch.ones_like(x), e.clamp(min=-5) - 4)
    half_away = torch.sign(x) * torch.floor((x / step).abs() + 0.5) * step
    half_away = torch.where(half_away.abs() > 448, torch.sign(x) * 448, half_away)
    ref = x.to(torch.float8_e4m3fn).float()
    assert not _same(half_away, ref)


def test_round_significand_matches_bf16_and_fp16_casts():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1)) * 100
    assert torch.equal(quant.round_significand(x, 8), x.to(torch.bfloat16).float())
    x16 = x[(x.abs() > 2**-14) & (x.abs() < 60000)]
    assert torch.equal(quant.round_significand(x16, 11), x16.to(torch.float16).float())
    t = quant.round_significand(x, 4, "truncate")
    assert (t.abs() <= x.abs()).all() and not torch.equal(t, quant.round_significand(x, 4))
    with pytest.raises(ValueError, match="mode"):
        quant.round_significand(x, 4, "up")


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_int_matches_torch_per_block(bits, symmetric):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 40, generator=g) * torch.linspace(0.1, 3, 40)
    w[2, 3] = 9.0
    block = (2, 16)  # 3 x 3 blocks, the last column of blocks zero-padded
    got = quant.fake_quantize_int(w, bits, block, symmetric)
    q, scale, zero = quant.quantize_int(w, bits, block, symmetric)
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    for i in range(3):
        for j in range(3):
            sub = w[2 * i: 2 * i + 2, 16 * j: 16 * j + 16]
            ref = torch.fake_quantize_per_tensor_affine(sub, scale[i, j].item(), int(zero[i, j].item()), lo, hi)
            assert torch.equal(got[2 * i: 2 * i + 2, 16 * j: 16 * j + 16], ref), (i, j)
    assert q.min() >= lo and q.max() <= hi


def test_fake_quantize_int_per_channel_matches_torch_up_to_float_ties():
    w = torch.randn(256, 300, generator=torch.Generator().manual_seed(2))
    for bits, sym in [(8, True), (4, True), (4, False)]:
        got = quant.fake_quantize_int(w, bits, (1, -1), sym)
        _, s, z = quant.quantize_int(w, bits, (1, -1), sym)
        lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
        ref = torch.fake_quantize_per_channel_affine(w, s.flatten(), z.flatten().int(), 0, lo, hi)
        diff = (got - ref).abs()
        # torch multiplies by 1/scale, we divide: they may disagree by one step on an exact tie, nowhere else
        assert (diff > 1e-6).float().mean() < 1e-3
        assert (diff <= s.reshape(-1, 1) * 1.0001).all()


def test_scale_is_absmax_over_qmax_and_the_max_is_exact():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    _, scale, _ = quant.quantize_int(w, 4, (-1, -1))
    assert scale.item() == pytest.approx(w.abs().max().item() / 7, rel=1e-6)
    i = w.abs().argmax()
    assert quant.fake_quantize_int(w, 4).flatten()[i] == pytest.approx(w.flatten()[i].item(), rel=1e-6)


def test_fp8_quantization_uses_448_and_matches_scaled_mm():
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(32, 300, generator=g), torch.randn(40, 300, generator=g) * 0.05
    q, s = quant.quantize_fp8(w, (128, 128))
    assert q.dtype == torch.float8_e4m3fn and s.shape == (1, 3, 1)
    blocks = quant.to_blocks(w, (128, 128))
    assert torch.allclose(s, blocks.abs().amax(-1, keepdim=True) / 448)
    assert q.float().abs().amax(-1).eq(448).all()                 # every block's absmax lands exactly on 448
    _, s5 = quant.quantize_fp8(w, (-1, -1), "e5m2")
    assert s5.item() == pytest.approx(w.abs().max().item() / 57344)
    xq, xs = quant.quantize_fp8(x)
    wq, ws = quant.quantize_fp8(w)
    ref = torch._scaled_mm(xq.reshape(x.shape), wq.reshape(w.shape).T, scale_a=xs.reshape(()), scale_b=ws.reshape(()),
                           out_dtype=torch.float32)
    emu = quant.fake_quantize_fp8(x) @ quant.fake_quantize_fp8(w).T
    assert torch.allclose(emu, ref, rtol=1e-5, atol=1e-6)


def test_blocks_round_trip_and_padding():
    x = torch.arange(7 * 45, dtype=torch.float32).reshape(7, 45)
    for block in [(-1, -1), (1, -1), (-1, 1), (1, 16), (4, 4), (128, 128)]:
        assert torch.equal(quant.from_blocks(quant.to_blocks(x, block), (7, 45), block), x)
    assert quant.to_blocks(x, (1, 16)).shape == (7, 3, 16)
    assert quant.to_blocks(x, (1, 16))[0, 2, -3:].eq(0).all()        # zero padding at the end of each row


def test_nf4_codebook_matches_published_table_and_int4_codebook_equals_int4():
    code = quant.nf4_codebook()
    assert code.shape == (16,) and (code.diff() > 0).all() and 0.0 in code.tolist()
    assert torch.allclose(code, torch.tensor(NF4_PUBLISHED), atol=1e-4)
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(5))
    int4 = torch.arange(-7, 8).float() / 7
    assert torch.allclose(quant.fake_quantize_codebook(x, int4, (1, 64)), quant.fake_quantize_int(x, 4, (1, 64)),
                          atol=1e-6)
    assert quant.sqnr_db(x, quant.fake_quantize_codebook(x, code, (1, 64))) > quant.sqnr_db(
        x, quant.fake_quantize_int(x, 4, (1, 64)))


def test_helpers_validate_and_count_bits():
    assert quant.bits_per_weight(4, (576, 1536), (1, 32)) == pytest.approx(4.5)
    assert quant.bits_per_weight(8, (256, 256), (128, 128), scale_bits=32) == pytest.approx(8 + 4 * 32 / 65536)
    assert quant.sqnr_db(torch.ones(4), torch.ones(4)) == math.inf
    assert quant.block_shape("group", 64) == (1, 64) and quant.block_shape("tensor") == (-1, -1)
    with pytest.raises(ValueError, match="bits must be an integer 2..8, got 9"):
        quant.fake_quantize_int(torch.ones(2, 2), 9)
    with pytest.raises(ValueError, match="granularity"):
        quant.block_shape("row")
    with pytest.raises(ValueError, match="fmt"):
        quant.quantize_fp8(torch.ones(2, 2), fmt="e3m4")


# bitsandbytes' NF4 table, float32, as published in bitsandbytes/functional.py, get_4bit_type("nf4")
# (https://github.com/bitsandbytes-foundation/bitsandbytes, "Generated by: create_normal_map(offset=0.9677083,
# use_extra_value=True)"; the same 16 values are listed in the QLoRA paper's appendix, arXiv:2305.14314).
NF4_BITSANDBYTES_FP32 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def test_nf4_codebook_is_bitsandbytes_float32_table_bit_for_bit():
    code = quant.nf4_codebook()
    want = torch.tensor(NF4_BITSANDBYTES_FP32, dtype=torch.float32)
    assert code.dtype == torch.float32
    assert torch.equal(code.view(torch.int32), want.view(torch.int32))
    # the float64 construction (the first edition) is off by one ulp in most levels: the test can tell
    off = 0.9677083
    pos = torch.special.ndtri(torch.linspace(off, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(off, 0.5, 8, dtype=torch.float64)[:-1])
    v64 = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    assert (((v64 / v64.max()).float()) != want).sum() >= 5


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_fp8_tiny_and_zero_blocks_reach_the_format_max(fmt):
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(6))
    ref = quant.sqnr_db(x, quant.fake_quantize_fp8(x, (1, 128), fmt))
    fmax = torch.finfo(quant.FP8_FORMATS[fmt]).max
    for e in (-50, -100, 20):               # (the documented clamp starts below max * 2^-126: 2^-117 for e4m3)
        xs = x * 2.0**e                                          # a power of two: the same SQNR if the scale follows
        q, _ = quant.quantize_fp8(xs, (1, 128), fmt)
        assert q.float().abs().amax(-1).eq(fmax).all(), e
        assert quant.sqnr_db(xs, quant.fake_quantize_fp8(xs, (1, 128), fmt)) == pytest.approx(ref, abs=1e-9), e
    z = torch.zeros(3, 200)
    q, s = quant.quantize_fp8(z, (1, 128), fmt)
    assert torch.isfinite(s).all() and q.float().eq(0).all()
    assert torch.equal(quant.fake_quantize_fp8(z, (1, 128), fmt), z)


def test_signed_absmax_uses_all_16_codes_like_q4_0():
    import gguf
    import numpy as np

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(7))
    q, scale, _ = quant.quantize_int(w, 4, (1, 32), signed_absmax=True)
    assert q.min() == -8 and q.max() == 7 and q.unique().numel() == 16
    i = w.reshape(64, 8, 32).abs().argmax(-1, keepdim=True)
    assert q.gather(-1, i.reshape(64, 8, 1)).eq(-8).all()         # the signed absmax sits exactly on code -8
    # Q4_0's grid (d = m / -8): identical except where llama.cpp's trunc(x/d + 8.5) and half-even rounding differ
    qt = gguf.GGMLQuantizationType.Q4_0
    ref = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qt), qt))
    mine = quant.fake_quantize_int(w, 4, (1, 32), signed_absmax=True)
    d = (ref - mine).abs() / scale.abs().repeat_interleave(32, -1).reshape(64, 256)
    assert np.quantile(d.numpy(), 0.999) < 0.01                   # fp16 scale rounding only
    assert torch.equal(quant.fake_quantize_int(torch.zeros(2, 64), 4, (1, 32), signed_absmax=True), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="signed_absmax"):
        quant.quantize_int(w, 4, symmetric=False, signed_absmax=True)


def test_sqnr_gain_interval():
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(8))
    a = quant.fake_quantize_int(x, 4, (1, 64))
    b = quant.fake_quantize_int(x, 6, (1, 64))
    g = quant.sqnr_gain(x, a, b)
    assert g.low < g.estimate < g.high
    assert g.estimate == pytest.approx(quant.sqnr_db(x, b) - quant.sqnr_db(x, a), abs=1e-9)
    assert 9 < g.low and g.high < 15                                # two more bits: about 12 dB
    same = quant.sqnr_gain(x, a, a)
    assert same.estimate == 0
    with pytest.raises(ValueError, match="exact"):
        quant.sqnr_gain(x, a, x)
