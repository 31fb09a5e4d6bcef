"""Lab 06's checks accept the worked solution and reject typical mistakes (the two GPTQ mutations included)."""

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


def test_solution_passes_the_fast_checks(layer, capsys):
    w, x_fit, _ = layer
    lab06.check_1(SOL["rtn"])
    lab06.check_2(SOL["pack_int4"], SOL["unpack_int4"], SOL["bits_per_weight"])
    lab06.check_3(SOL["q4_0_encode"], SOL["q4_0_decode"])
    lab06.check_4(SOL["smooth_scales"])
    lab06.check_5(SOL["awq"], w, x_fit[:512])
    lab06.check_6(SOL["gptq"])
    assert capsys.readouterr().out.count("✅") == 6


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


def test_check_3_rejects_unsigned_scale_and_wrong_rounding():
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

    assert "scales differ" in _rejects(lab06.check_3, unsigned, SOL["q4_0_decode"])
    assert "bytes differ" in _rejects(lab06.check_3, no_half, SOL["q4_0_decode"])


def test_check_4_rejects_the_wrong_weight_axis_and_a_swapped_exponent():
    def row_max(x_absmax, w, alpha):  # max over the input axis instead of over the output rows
        return (x_absmax.pow(alpha) / w.abs().amax(1).mean().pow(1 - alpha)).clamp(min=1e-5)

    def swapped(x_absmax, w, alpha):
        return (x_absmax.pow(1 - alpha) / w.abs().amax(0).pow(alpha)).clamp(min=1e-5)

    assert "amax(0)" in _rejects(lab06.check_4, row_max)
    assert "Exercise 4" in _rejects(lab06.check_4, swapped)


def test_check_5_rejects_a_fixed_alpha(layer):
    w, x_fit, _ = layer

    def fixed(w, x, bits, group, n_grid):
        s = x.abs().mean(0).pow(0.5).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        return SOL["rtn"](w * s, bits, group) / s, 0.5

    assert "alpha" in _rejects(lab06.check_5, fixed, w, x_fit[:512])
    assert "tuple" in _rejects(lab06.check_5, lambda *a: SOL["rtn"](a[0], 4, 64), w, x_fit[:512])


def test_check_6_rejects_the_two_gptq_mutations_and_rtn():
    def no_diag(w, h, bits, group, damp):        # forgets to divide the error by U[j, j]
        return lab06.reference_gptq(w, h, bits, group, damp, divide_by_diagonal=False)

    def stale_grid(w, h, bits, group, damp):     # sets each group's grid from the not-yet-updated weights
        return lab06.reference_gptq(w, h, bits, group, damp, grid_from_updated=False)

    def rtn(w, h, bits, group, damp):
        return SOL["rtn"](w, bits, group)

    assert "U[j, j]" in _rejects(lab06.check_6, no_diag)
    assert "UPDATED weights" in _rejects(lab06.check_6, stale_grid)
    assert "plain RTN" in _rejects(lab06.check_6, rtn)


def test_the_gptq_mutations_still_beat_rtn_on_held_out_rows():
    """Why check 6 compares with a reference: both mutations would pass a 'better than RTN' check."""
    w, x_fit, x_held = lab06.gptq_case()
    h = x_fit.T @ x_fit
    e_rtn = lab06._rel_out_err(x_held, w, lab06.reference_rtn(w, 4, 32))
    for kw in (dict(divide_by_diagonal=False), dict(grid_from_updated=False)):
        assert lab06._rel_out_err(x_held, w, lab06.reference_gptq(w, h, 4, 32, 0.01, **kw)) < e_rtn


class _TinyLM(torch.nn.Module):
    """A stand-in with SmolLM2's module names: model.layers.N.* Linears and a .logits output."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.model = torch.nn.Module()
        self.model.embed = torch.nn.Embedding(50, 64)
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(2)])
        self.head = torch.nn.Linear(64, 50)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        for lin in self.model.layers:                # large, coarse weights: W4 g64 visibly changes the output
            lin.weight.data = torch.randn(lin.weight.shape, generator=g) * 0.4

    def forward(self, ids):
        h = self.model.embed(ids)
        for lin in self.model.layers:
            h = h + lin(h)
        return type("Out", (), {"logits": self.head(h)})()


def test_check_7_accepts_the_solution_and_rejects_no_restore_and_relative_ppl(capsys):
    lm = _TinyLM()
    ids = torch.randint(0, 50, (256,), generator=torch.Generator().manual_seed(1))
    lab06.check_7(SOL["delta_ln_ppl"], lm, ids, window=64)
    assert "✅" in capsys.readouterr().out

    def no_restore(model, quantize, ids, window):
        for n, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in n:
                m.weight.data.copy_(quantize(m.weight.detach()))
        return 0.1

    def relative(model, quantize, ids, window):
        import math
        return math.exp(SOL["delta_ln_ppl"](model, quantize, ids, window)) - 1

    assert "restored" in _rejects(lab06.check_7, no_restore, lm, ids, 64)
    assert "relative change" in _rejects(lab06.check_7, relative, lm, ids, 64)
