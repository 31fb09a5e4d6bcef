"""utils.fp8train: the simulated DeepSeek-V3 FP8 Linear matches its definition and stays within e4m3's error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utils import fp8train, tinylm
from utils.quant import fake_quantize_fp8


def _operands(seed: int = 0, tokens: int = 256, k: int = 384, m: int = 256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) * torch.logspace(-3, 2, tokens)[:, None]   # tokens over 5 decades
    w = torch.randn(m, k, generator=g) * 0.05
    dy = torch.randn(tokens, m, generator=g) * torch.logspace(-5, 0, tokens)[:, None]
    return x, w, dy


def _run(fn, x, w, dy):
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fn(xa, wa)
    y.backward(dy)
    return y.detach(), xa.grad, wa.grad


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_three_gemms_follow_the_recipe_exactly():
    x, w, dy = _operands()
    y, dx, dw = _run(lambda a, b: fp8train.Fp8LinearFunction.apply(a, b, "tile", 128), x, w, dy)
    wq = fake_quantize_fp8(w, (128, 128))
    torch.testing.assert_close(y, fake_quantize_fp8(x, (1, 128)) @ wq.T)
    torch.testing.assert_close(dx, fake_quantize_fp8(dy, (1, 128)) @ wq)
    torch.testing.assert_close(dw, fake_quantize_fp8(dy, (128, 1)).T @ fake_quantize_fp8(x, (128, 1)))


@pytest.mark.parametrize("granularity", fp8train.GRANULARITIES)
def test_gradients_match_fp32_within_e4m3_error(granularity):
    x, w, dy = _operands()
    got = _run(lambda a, b: fp8train.Fp8LinearFunction.apply(a, b, granularity, 128), x, w, dy)
    ref = _run(lambda a, b: a @ b.T, x, w, dy)
    for g, r in zip(got, ref):
        assert 1e-3 < _rel(g, r) < 2**-4          # quantized (not exact), within 3 significand bits' rounding


def test_per_tensor_scaling_loses_the_small_tokens():
    x, w, dy = _operands()
    worst = {}
    for gr in fp8train.GRANULARITIES:
        y = _run(lambda a, b, gr=gr: fp8train.Fp8LinearFunction.apply(a, b, gr, 128), x, w, dy)[0]
        ref = x @ w.T
        worst[gr] = ((y - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert worst["tile"] < 2**-4 < worst["tensor"]
    assert worst["tensor"] > 5 * worst["tile"]


def test_to_fp8_swaps_only_block_linears_and_keeps_the_weights():
    cfg = tinylm.TinyConfig(d_model=128, n_layers=2, n_heads=4, context=32)
    model = tinylm.TinyLM(cfg, seed=0)
    weights = {n: p for n, p in model.named_parameters()}
    fp8train.to_fp8(model)
    names = fp8train.fp8_linears(model)
    assert len(names) == 2 * 6 and all(n.startswith("blocks.") for n in names)
    assert not any(isinstance(m, nn.Linear) for m in model.blocks.modules())
    assert {n: p for n, p in model.named_parameters()}.keys() == weights.keys()
    assert all(p is weights[n] for n, p in model.named_parameters())       # the same fp32 master weights
    x = torch.randint(0, 256, (2, 32))
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert model.embed.weight.grad.abs().sum() > 0


def test_padding_and_bad_input():
    lin = fp8train.Fp8Linear(352, 128, pad=True)                      # 352 is not a multiple of 128: padded
    assert lin(torch.randn(3, 352)).shape == (3, 128)
    with pytest.raises(ValueError, match="pad=True"):
        fp8train.Fp8Linear(352, 128, pad=False)
    with pytest.raises(ValueError, match="granularity"):
        fp8train.Fp8Linear(128, 128, granularity="row")
    with pytest.raises(ValueError, match="tile"):
        fp8train.Fp8Linear(128, 128, tile=0)
    with pytest.raises(ValueError, match="no submodule"):
        fp8train.to_fp8(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bias"):
        fp8train.to_fp8(_with_bias())


def _with_bias():
    m = nn.Module()
    m.blocks = nn.Sequential(nn.Linear(4, 4))
    return m
