"""Lab 05's checks accept the worked solution and reject typical mistakes (wrong rounding, wrong scale, ...)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils import quant
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab05
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_05_number_formats.ipynb",
                       {"torch": torch, "math": math, "F": F, "quant": quant})


def test_solution_passes_every_check(capsys):
    lab05.check_1(SOL["absmax_quantize"])
    lab05.check_2(SOL["zeropoint_quantize"])
    lab05.check_3(SOL["sqnr_db"])
    lab05.check_4(SOL["group_quantize"])
    lab05.check_5(SOL["to_e4m3"])
    lab05.check_6(SOL["fp8_block_quantize"])
    lab05.check_7(SOL["nf4_codebook"], SOL["nf4_quantize"])
    lab05.check_8(SOL["act_tile_quantize"])
    lab05.check_9(SOL["accumulate"])
    assert capsys.readouterr().out.count("✅") == 9


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_round_half_away_from_zero():
    def half_away(x, bits):
        q, s = SOL["absmax_quantize"](x, bits)
        qmax = 2 ** (bits - 1) - 1
        return (torch.sign(x) * torch.floor(x.abs() / s + 0.5)).clamp(-qmax, qmax), s

    msg = _rejects(lab05.check_1, half_away, match="Exercise 1")
    assert "tie grid" in msg and "quantization steps off" in msg


def test_check_1_rejects_truncation_and_wrong_scale():
    def trunc(x, bits):
        q, s = SOL["absmax_quantize"](x, bits)
        return torch.trunc(x / s).clamp(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1), s

    def qmax_power_of_two(x, bits):  # scale = absmax / 2^(b-1): a classic off-by-one
        s = x.abs().max().item() / 2 ** (bits - 1)
        return torch.round(x / s).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), s

    _rejects(lab05.check_1, trunc, match="differ from the reference")
    assert "scale for" in _rejects(lab05.check_1, qmax_power_of_two)
    assert "tuple" in _rejects(lab05.check_1, lambda x, b: SOL["absmax_quantize"](x, b)[0])


# ---------------------------------------------------------------- exercise 2
def test_check_2_rejects_range_without_zero_and_wrong_zero_point():
    def no_zero_in_range(x, bits):
        qmax = 2**bits - 1
        lo, hi = x.min().item(), x.max().item()
        s = (hi - lo) / qmax
        z = int(round(-lo / s))
        return (torch.round(x / s) + z).clamp(0, qmax), s, z

    def floor_zero(x, bits):
        q, s, z = SOL["zeropoint_quantize"](x, bits)
        lo = min(x.min().item(), 0.0)
        z2 = math.floor(-lo / s)
        return (torch.round(x / s) + z2).clamp(0, 2**bits - 1), s, z2

    assert "scale for all positive" in _rejects(lab05.check_2, no_zero_in_range)
    _rejects(lab05.check_2, floor_zero, match="zero_point")


def test_check_2_rejects_round_half_away_and_half_up_at_ties():
    def rounding(fn):
        def quantize(x, bits):
            qmax = 2**bits - 1
            lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
            s = (hi - lo) / qmax
            z = int(round(-lo / s))
            return (fn(x / s) + z).clamp(0, qmax), s, z
        return quantize

    half_away = rounding(lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5))
    half_up = rounding(lambda v: torch.floor(v + 0.5))
    for wrong in (half_away, half_up):
        msg = _rejects(lab05.check_2, wrong, match="tie grid")
        assert "even neighbour" in msg


def test_check_2_rejects_symmetric_codes():
    def signed_codes(x, bits):
        q, s, z = SOL["zeropoint_quantize"](x, bits)
        return q - 2 ** (bits - 1), s, z

    assert "codes must be integers in [0" in _rejects(lab05.check_2, signed_codes)


# ---------------------------------------------------------------- exercise 3
def test_check_3_rejects_20log10_and_rms_ratio():
    def twenty(x, xh):
        return 20 * math.log10(x.double().pow(2).sum().item() / (x - xh).double().pow(2).sum().item())

    def no_log(x, xh):
        return x.double().pow(2).sum().item() / (x - xh).double().pow(2).sum().item()

    assert "off by +100%" in _rejects(lab05.check_3, twenty)
    _rejects(lab05.check_3, no_log, match="SQNR")


# ---------------------------------------------------------------- exercise 4
def test_check_4_rejects_groups_across_rows_and_per_row_scales():
    def flat_groups(w, bits, gs):  # groups over the flattened tensor: wrong when cols % gs != 0
        flat = F.pad(w.flatten(), (0, (-w.numel()) % gs)).reshape(-1, gs)
        qmax = 2 ** (bits - 1) - 1
        s = (flat.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-30)
        return (torch.round(flat / s).clamp(-qmax, qmax) * s).flatten()[: w.numel()].reshape(w.shape)

    def per_row(w, bits, gs):
        qmax = 2 ** (bits - 1) - 1
        s = (w.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-30)
        return torch.round(w / s).clamp(-qmax, qmax) * s

    def nan_on_zero_group(w, bits, gs):
        rows, cols = w.shape
        g = F.pad(w, (0, (-cols) % gs)).reshape(rows, -1, gs)
        qmax = 2 ** (bits - 1) - 1
        s = g.abs().amax(-1, keepdim=True) / qmax
        return (torch.round(g / s).clamp(-qmax, qmax) * s).reshape(rows, -1)[:, :cols]

    assert "zero-padded" in _rejects(lab05.check_4, flat_groups, match="5x100")
    _rejects(lab05.check_4, per_row, match="groups of 16")
    assert "NaN" in _rejects(lab05.check_4, nan_on_zero_group)


# ---------------------------------------------------------------- exercise 5
def _e4m3_with(round_fn, saturate=True):
    def cast(x):
        x = x.float()
        _, e = torch.frexp(x)
        step = torch.ldexp(torch.ones_like(x), e.clamp(min=-5) - 4)
        y = round_fn(x / step) * step
        return torch.where(y.abs() > 448, torch.sign(x) * (448 if saturate else math.inf), y)
    return cast


def test_check_5_rejects_wrong_rounding_modes():
    half_away = _e4m3_with(lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5))
    msg = _rejects(lab05.check_5, half_away, match="Exercise 5")
    assert "exact ties" in msg
    _rejects(lab05.check_5, _e4m3_with(torch.trunc), match="differ from torch's cast")
    _rejects(lab05.check_5, _e4m3_with(torch.floor))


def test_check_5_rejects_overflow_to_inf_and_missing_subnormals():
    assert "saturates" in _rejects(lab05.check_5, _e4m3_with(torch.round, saturate=False))

    def flush_subnormals(x):
        y = SOL["to_e4m3"](x)
        return torch.where(x.abs() < 2**-6, torch.zeros_like(y), y)

    assert "subnormals" in _rejects(lab05.check_5, flush_subnormals)

    def e5m2_instead(x):
        return x.to(torch.float8_e5m2).float()

    _rejects(lab05.check_5, e5m2_instead)


# ---------------------------------------------------------------- exercise 6
def _fp8_blocks_with_scale(fmax: float, per_tensor: bool = False, inverse: bool = False):
    def fn(w, block=128):
        R, C = w.shape
        wp = F.pad(w.float(), (0, (-C) % block, 0, (-R) % block))
        nr, nc = wp.shape[0] // block, wp.shape[1] // block
        amax = wp.reshape(nr, block, nc, block).abs().amax(dim=(1, 3))
        if per_tensor:
            amax = torch.full_like(amax, w.abs().max().item())
        scales = fmax / amax if inverse else amax / fmax
        full = scales.repeat_interleave(block, 0).repeat_interleave(block, 1)[:R, :C]
        return (w.float() / full).to(torch.float8_e4m3fn), scales
    return fn


def test_check_6_rejects_wrong_scales():
    assert "448" in _rejects(lab05.check_6, _fp8_blocks_with_scale(127.0), match="scales")      # int8's max
    assert "448" in _rejects(lab05.check_6, _fp8_blocks_with_scale(240.0))                      # e4m3fnuz's max
    assert "1/scale" in _rejects(lab05.check_6, _fp8_blocks_with_scale(448.0, inverse=True))
    _rejects(lab05.check_6, _fp8_blocks_with_scale(448.0, per_tensor=True), match="block")


def test_check_6_rejects_clamped_scale_and_nan_on_an_all_zero_block():
    def clamped(w, block=128):                  # the first edition's solution: tiny blocks never reach 448
        R, C = w.shape
        wp = F.pad(w.float(), (0, (-C) % block, 0, (-R) % block))
        nr, nc = wp.shape[0] // block, wp.shape[1] // block
        scales = (wp.reshape(nr, block, nc, block).abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)
        full = scales.repeat_interleave(block, 0).repeat_interleave(block, 1)[:R, :C]
        return (w.float() / full).to(torch.float8_e4m3fn), scales

    assert "don't clamp" in _rejects(lab05.check_6, clamped, match="64x96")
    assert "all-zero block" in _rejects(lab05.check_6, _fp8_blocks_with_scale(448.0), match="scale 1")


def test_check_6_rejects_wrong_dtype_and_shape():
    def e5m2(w, block=128):
        q, s = SOL["fp8_block_quantize"](w, block)
        return q.float().to(torch.float8_e5m2), s

    def flat_scales(w, block=128):
        q, s = SOL["fp8_block_quantize"](w, block)
        return q, s.flatten()

    _rejects(lab05.check_6, e5m2, match="dtype")
    _rejects(lab05.check_6, flat_scales, match="shape")


# ---------------------------------------------------------------- exercise 7
def test_check_7_rejects_uniform_grid_and_plain_quantiles():
    def uniform():
        return torch.linspace(-1, 1, 16)

    def plain_quantiles():  # 16 equal-probability quantiles without the exact zero
        v = torch.special.ndtri(torch.linspace(1 / 32, 31 / 32, 16, dtype=torch.float64))
        return (v / v.max()).float()

    _rejects(lab05.check_7, uniform, SOL["nf4_quantize"], match="published table")
    _rejects(lab05.check_7, plain_quantiles, SOL["nf4_quantize"], match="NF4 level")


def test_check_7_rejects_the_float64_construction():
    def float64_codebook():                     # the first edition: within 1e-4, but not bitsandbytes' bits
        off = 0.9677083
        pos = torch.special.ndtri(torch.linspace(off, 0.5, 9, dtype=torch.float64)[:-1])
        neg = -torch.special.ndtri(torch.linspace(off, 0.5, 8, dtype=torch.float64)[:-1])
        v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
        return (v / v.max()).float()

    assert "bit-identical" in _rejects(lab05.check_7, float64_codebook, SOL["nf4_quantize"])
    assert "float32" in _rejects(lab05.check_7, lambda: SOL["nf4_codebook"]().double(), SOL["nf4_quantize"])


def test_check_7_rejects_floor_snapping_and_per_tensor_scale():
    def floor_snap(x, code, block=64):
        xb = x.reshape(-1, block)
        a = xb.abs().amax(-1, keepdim=True)
        idx = (torch.bucketize(xb / a, code, right=True) - 1).clamp(0, 15)
        return (code[idx] * a).reshape(x.shape)

    def per_tensor(x, code, block=64):
        a = x.abs().max()
        return (code[(x / a).unsqueeze(-1).sub(code).abs().argmin(-1)] * a).reshape(x.shape)

    assert "nearest level" in _rejects(lab05.check_7, SOL["nf4_codebook"], floor_snap)
    _rejects(lab05.check_7, SOL["nf4_codebook"], per_tensor, match="block")


# ---------------------------------------------------------------- exercise 8
def _tiles(block_fn, guard_zero: bool = True, clamp: float | None = None):
    def fn(x, tile=128):
        T, C = x.shape
        xp = F.pad(x.float(), (0, (-C) % tile))
        amax = block_fn(xp, tile)
        scales = amax / 448
        if clamp is not None:
            scales = scales.clamp(min=clamp)
        if guard_zero:
            scales = torch.where(amax > 0, scales, torch.ones_like(scales))
        full = scales.repeat_interleave(tile, -1)[..., :C] if scales.ndim == 2 else scales[:, None]
        return (x.float() / full.expand(T, C)).to(torch.float8_e4m3fn), scales
    return fn


def test_check_8_rejects_per_token_scales_token_tiles_clamps_and_zero_tiles():
    per_token = _tiles(lambda xp, t: xp.abs().amax(-1))
    msg = _rejects(lab05.check_8, per_token, match="one scale per token")

    def token_tiles(x, tile=128):               # 128x1: the backward-pass layout
        T, C = x.shape
        xp = F.pad(x.float(), (0, 0, 0, (-T) % tile))
        amax = xp.reshape(-1, tile, C).abs().amax(1)
        s = torch.where(amax > 0, amax / 448, torch.ones_like(amax))
        return (x / s.repeat_interleave(tile, 0)[:T]).to(torch.float8_e4m3fn), s

    assert "backward" in _rejects(lab05.check_8, token_tiles)
    row_tiles = lambda xp, t: xp.reshape(xp.shape[0], -1, t).abs().amax(-1)
    assert "don't clamp" in _rejects(lab05.check_8, _tiles(row_tiles, clamp=1e-12))
    assert "all-zero tile" in _rejects(lab05.check_8, _tiles(row_tiles, guard_zero=False))
    assert "448" in msg or "token" in msg


def test_check_8_rejects_quantizing_before_scaling():
    def cast_then_scale(x, tile=128):
        q, s = SOL["act_tile_quantize"](x, tile)
        return x.to(torch.float8_e4m3fn), s

    _rejects(lab05.check_8, cast_then_scale, match="its own tile")


# ---------------------------------------------------------------- exercise 9
def test_check_9_rejects_typical_accumulator_mistakes():
    def exact(p, bits=14, mode="truncate", promote_every=None):
        return p.sum(-1)

    def round_at_end(p, bits=14, mode="truncate", promote_every=None):
        return quant.round_significand(p.sum(-1), bits, mode)

    def no_reset(p, bits=14, mode="truncate", promote_every=None):
        return lab05._accumulate_ref(p, bits, mode, promote_every, reset=False)

    def rounded_total(p, bits=14, mode="truncate", promote_every=None):
        return lab05._accumulate_ref(p, bits, mode, promote_every, round_total=True)

    def ignores_promotion(p, bits=14, mode="truncate", promote_every=None):
        return lab05._accumulate_ref(p, bits, mode, None)

    def always_nearest(p, bits=14, mode="truncate", promote_every=None):
        return lab05._accumulate_ref(p, bits, "nearest", promote_every)

    def drops_last_chunk(p, bits=14, mode="truncate", promote_every=None):
        k = p.shape[1] // promote_every * promote_every if promote_every else p.shape[1]
        return lab05._accumulate_ref(p[:, :k], bits, mode, promote_every)

    assert "round the running sum" in _rejects(lab05.check_9, exact)
    assert "only the result" in _rejects(lab05.check_9, round_at_end)
    assert "restart the low-precision partial" in _rejects(lab05.check_9, no_reset)
    assert "plain float32 add" in _rejects(lab05.check_9, rounded_total)
    assert "without promotion" in _rejects(lab05.check_9, ignores_promotion)
    assert "wrong rounding rule" in _rejects(lab05.check_9, always_nearest)
    assert "incomplete chunk" in _rejects(lab05.check_9, drops_last_chunk)


def test_check_3_failure_gives_a_hint():
    def twenty(x, xh):
        return 20 * math.log10(x.double().pow(2).sum().item() / (x - xh).double().pow(2).sum().item())

    def inverted(x, xh):
        return -10 * math.log10(x.double().pow(2).sum().item() / (x - xh).double().pow(2).sum().item())

    assert "not 20·log10" in _rejects(lab05.check_3, twenty)
    assert "signal over noise" in _rejects(lab05.check_3, inverted)


def test_stub_reports_not_done_and_crash_is_one_line():
    def stub(x, bits):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab05.check_1(stub)
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab05.check_3(lambda x, xh: 1 / 0)
