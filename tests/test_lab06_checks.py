"""Lab 06's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch

from utils.checking import CheckFailed
from utils.checks import lab06
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_06_quantizing_an_llm.ipynb", {"torch": torch})


@pytest.fixture(scope="module")
def layer():
    """A weight and inputs with the structure that matters (correlated inputs, an outlier channel)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * 0.05
    mix = torch.randn(256, 256, generator=g) / 16
    x = torch.randn(2048, 256, generator=g) @ mix
    x[:, 3] *= 20
    return w, x[0::2], x[1::2]


def _rejects(check, *args, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*args)
    return str(e.value)


def test_solution_passes_every_check(layer, capsys):
    w, x_fit, x_held = layer
    lab06.check_1(SOL["rtn"])
    lab06.check_2(SOL["pack_int4"], SOL["unpack_int4"], SOL["bits_per_weight"])
    lab06.check_3(SOL["gptq"], w, x_fit, x_held)
    lab06.check_4(SOL["awq"], w, x_fit[:512])
    lab06.check_5(SOL["q4_0_encode"], SOL["q4_0_decode"])
    assert capsys.readouterr().out.count("✅") == 5


def test_check_1_rejects_per_tensor_symmetric_and_wrong_levels():
    def per_row(w, bits, group):
        return SOL["rtn"](w, bits, w.shape[1])

    def symmetric(w, bits, group):
        wg = w.reshape(w.shape[0], -1, group)
        s = wg.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        return (torch.round(wg / s) * s).reshape(w.shape)

    def too_many_levels(w, bits, group):  # 2^bits steps instead of 2^bits - 1
        wg = w.reshape(w.shape[0], -1, group)
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        s = (hi - lo) / 2**bits
        return (torch.clamp(torch.round((wg - lo) / s), 0, 2**bits) * s + lo).reshape(w.shape)

    for wrong in (per_row, symmetric, too_many_levels):
        assert "Exercise 1" in _rejects(lab06.check_1, wrong)


def test_check_2_rejects_swapped_nibbles_and_forgotten_minimum():
    def swapped(q):
        return (q[..., 1::2] | (q[..., 0::2] << 4)).to(torch.uint8)

    assert "nibbles swapped" in _rejects(lab06.check_2, swapped, SOL["unpack_int4"], SOL["bits_per_weight"])
    assert "bits_per_weight" in _rejects(lab06.check_2, SOL["pack_int4"], SOL["unpack_int4"],
                                         lambda bits, group, with_min: bits + 16 / group)


def test_check_3_rejects_rtn_and_missing_error_feedback(layer):
    w, x_fit, x_held = layer

    def no_feedback(w, h, bits, group, damp):
        return SOL["rtn"](w, bits, group)

    assert "not below RTN" in _rejects(lab06.check_3, no_feedback, w, x_fit, x_held)


def test_check_4_rejects_a_fixed_alpha(layer):
    w, x_fit, _ = layer

    def fixed(w, x, bits, group, n_grid):
        s = x.abs().mean(0).pow(0.5).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        return SOL["rtn"](w * s, bits, group) / s, 0.5

    assert "alpha" in _rejects(lab06.check_4, fixed, w, x_fit[:512])
    assert "tuple" in _rejects(lab06.check_4, lambda *a: SOL["rtn"](a[0], 4, 64), w, x_fit[:512])


def test_check_5_rejects_unsigned_scale_and_wrong_rounding():
    def unsigned(w):
        b = w.float().reshape(-1, 32)
        d = b.abs().amax(1, keepdim=True) / 8
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc(b * inv + 8.5).clamp(0, 15).to(torch.uint8)
        return torch.cat([d.half().view(torch.uint8), (q[:, :16] | (q[:, 16:] << 4)).to(torch.uint8)], 1).reshape(
            w.shape[0], -1)

    def no_half(w):  # trunc(x/d + 8) forgets the + 0.5: every code rounds down
        b = w.float().reshape(-1, 32)
        d = torch.gather(b, 1, b.abs().argmax(1, keepdim=True)) / -8
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc(b * inv + 8).clamp(0, 15).to(torch.uint8)
        return torch.cat([d.half().view(torch.uint8), (q[:, :16] | (q[:, 16:] << 4)).to(torch.uint8)], 1).reshape(
            w.shape[0], -1)

    assert "scales differ" in _rejects(lab06.check_5, unsigned, SOL["q4_0_decode"])
    assert "bytes differ" in _rejects(lab06.check_5, no_half, SOL["q4_0_decode"])
