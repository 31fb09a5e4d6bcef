"""Lab 05's checks accept the worked solution and reject typical mistakes (wrong rounding, wrong scale, ...)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab05
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_05_number_formats.ipynb", {"torch": torch, "math": math, "F": F})


def test_solution_passes_every_check(capsys):
    lab05.check_1(SOL["absmax_quantize"])
    lab05.check_2(SOL["zeropoint_quantize"])
    lab05.check_3(SOL["sqnr_db"])
    lab05.check_4(SOL["group_quantize"])
    lab05.check_5(SOL["to_e4m3"])
    lab05.check_6(SOL["fp8_block_quantize"])
    lab05.check_7(SOL["nf4_codebook"], SOL["nf4_quantize"])
    assert capsys.readouterr().out.count("✅") == 7


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


def test_stub_reports_not_done_and_crash_is_one_line():
    def stub(x, bits):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab05.check_1(stub)
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab05.check_3(lambda x, xh: 1 / 0)
