"""Lab 13's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils import quant, tinylm
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab13
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
SOL = load_definitions(REPO_ROOT / "solutions" / "lab_13_efficient_training.ipynb",
                       {"torch": torch, "dist": dist, "nn": nn, "checkpoint": checkpoint, "quant": quant,
                        "tinylm": tinylm, "E4M3_MAX": E4M3_MAX})


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    lab13.check_1(SOL["state_bytes_formula"])
    lab13.check_2(SOL["activation_bytes"])
    lab13.check_3(SOL["accumulate_grads"])
    lab13.check_4(SOL["CheckpointedBlock"])
    lab13.check_5(SOL["fake_quant_tiles"])
    lab13.check_6(SOL["Fp8LinearFn"])
    lab13.check_7(SOL["average_gradients"])
    assert capsys.readouterr().out.count("✅") == 7


def test_stub_reports_not_done():
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise 1")

    with pytest.raises(ExerciseNotDone):
        lab13.check_1(stub)


# --------------------------------------------------------------------------- exercise 1
def test_state_bytes_with_one_moment_or_no_validation_is_rejected():
    def one_moment(n, param_bytes=4, grad_bytes=4, moment_bytes=4):
        out = {"parameters": n * param_bytes, "gradients": n * grad_bytes, "moments": n * moment_bytes}
        return {**out, "total": sum(out.values())}

    def fixed_bytes(n, param_bytes=4, grad_bytes=4, moment_bytes=4):      # ignores the dtype arguments
        if n < 0:
            raise ValueError("negative")
        out = {"parameters": 4 * n, "gradients": 4 * n, "moments": 8 * n}
        return {**out, "total": sum(out.values())}

    _rejects(lab13.check_1, one_moment, match="moments")
    _rejects(lab13.check_1, fixed_bytes, match="bfloat16")


# --------------------------------------------------------------------------- exercise 2
def test_activation_formulas_that_miss_terms_are_rejected():
    good = SOL["activation_bytes"]

    def no_logits(cfg, b, t):
        return good(cfg, b, t) - 4 * cfg.vocab_size * b * t

    def three_ffn(cfg, b, t):                      # forgets the SwiGLU product
        return good(cfg, b, t) - 4 * cfg.n_layers * cfg.ffn_hidden * b * t

    def quadratic(cfg, b, t):                      # a T x T score matrix the fused kernel never keeps
        return good(cfg, b, t) + 4 * cfg.n_layers * cfg.n_heads * b * t * t

    for wrong in (no_logits, three_ffn, quadratic):
        _rejects(lab13.check_2, wrong, match="autograd saved")


# --------------------------------------------------------------------------- exercise 3
def _accum(scale_loss: bool = True, zero_each: bool = False, zero_first: bool = True, validate: bool = True):
    def accumulate(model, x, y, accum):
        if validate and (not isinstance(accum, int) or accum < 1 or x.shape[0] % accum):
            raise ValueError("bad accum")
        if zero_first:
            model.zero_grad(set_to_none=True)
        for xm, ym in zip(x.chunk(accum), y.chunk(accum)):
            if zero_each:
                model.zero_grad(set_to_none=True)
            _, loss = model(xm, ym)
            (loss / accum if scale_loss else loss).backward()
    return accumulate


def test_accumulation_mistakes_are_rejected():
    assert "divide" in _rejects(lab13.check_3, _accum(scale_loss=False))
    _rejects(lab13.check_3, _accum(zero_each=True), match="relative difference")
    _rejects(lab13.check_3, _accum(zero_first=False), match="relative difference")
    _rejects(lab13.check_3, _accum(validate=False), match="ValueError")


# --------------------------------------------------------------------------- exercise 4
def test_blocks_that_do_not_checkpoint_or_cut_the_graph_are_rejected():
    class Plain(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return self.block(x)

    class NoGrad(Plain):
        def forward(self, x):
            with torch.no_grad():
                return self.block(x).requires_grad_()

    class Copy(Plain):
        def __init__(self, block):
            import copy
            super().__init__(copy.deepcopy(block))

        def forward(self, x):
            return checkpoint(self.block, x, use_reentrant=False)

    _rejects(lab13.check_4, Plain, match="does not checkpoint")
    _rejects(lab13.check_4, NoGrad, match="no gradient")
    _rejects(lab13.check_4, Copy, match="same parameters")


# --------------------------------------------------------------------------- exercise 5
def test_tile_quantizers_with_wrong_scales_are_rejected():
    def per_tensor(x, tile=128):
        if x.shape[1] % tile:
            raise ValueError("width")
        return quant.fake_quantize_fp8(x, (-1, -1))

    def scale_is_absmax(x, tile=128):             # forgets the /448: everything lands in [-1, 1]
        if x.shape[1] % tile:
            raise ValueError("width")
        t = x.reshape(x.shape[0], -1, tile)
        s = t.abs().amax(-1, keepdim=True).clamp(min=1e-30)
        return ((t / s).to(torch.float8_e4m3fn).float() * s).reshape(x.shape)

    def pads_silently(x, tile=128):
        return quant.fake_quantize_fp8(x, (1, tile))

    def nan_on_zeros(x, tile=128):
        if x.shape[1] % tile:
            raise ValueError("width")
        t = x.reshape(x.shape[0], -1, tile)
        s = t.abs().amax(-1, keepdim=True) / E4M3_MAX
        return ((t / s).to(torch.float8_e4m3fn).float() * s).reshape(x.shape)

    assert "per-tensor" in _rejects(lab13.check_5, per_tensor)
    assert "448" in _rejects(lab13.check_5, scale_is_absmax)
    _rejects(lab13.check_5, pads_silently, match="ValueError")
    _rejects(lab13.check_5, nan_on_zeros, match="zero")


# --------------------------------------------------------------------------- exercise 6
def _fp8_fn(quant_dgrad: bool = True, wgrad_tokens: bool = True, quant_weight: bool = True):
    fq = SOL["fake_quant_tiles"]

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            wq = quant.fake_quantize_fp8(w, (128, 128)) if quant_weight else w
            ctx.save_for_backward(x, wq)
            return fq(x) @ wq.T

        @staticmethod
        def backward(ctx, dy):
            x, wq = ctx.saved_tensors
            dx = (fq(dy) if quant_dgrad else dy) @ wq
            if wgrad_tokens:
                dw = fq(dy.T.contiguous()) @ fq(x.T.contiguous()).T
            else:                                   # tiles along channels: the wrong dimension for Wgrad
                dw = fq(dy).T @ fq(x)
            return dx, dw
    return Fn


def test_fp8_linears_with_a_wrong_gemm_are_rejected():
    assert "Dgrad" in _rejects(lab13.check_6, _fp8_fn(quant_dgrad=False))
    assert "Wgrad" in _rejects(lab13.check_6, _fp8_fn(wgrad_tokens=False))
    assert "Fprop" in _rejects(lab13.check_6, _fp8_fn(quant_weight=False))


# --------------------------------------------------------------------------- exercise 7
def test_all_reduce_mistakes_are_rejected():
    def summed(model):
        for p in model.parameters():
            dist.all_reduce(p.grad)

    def nothing(model):
        pass

    assert "sum" in _rejects(lab13.check_7, summed)
    assert "did not change" in _rejects(lab13.check_7, nothing)


def test_a_hanging_rank_is_reported_and_cleaned_up():
    import psutil

    def only_rank0(model):                           # rank 1 never joins the collective: rank 0 waits
        if dist.get_rank() == 0:
            for p in model.parameters():
                dist.all_reduce(p.grad)

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(CheckFailed):
        lab13.check_7(only_rank0, timeout=10)
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()
             and p.status() != psutil.STATUS_ZOMBIE}
    assert after <= before, "a rank outlived the check"
