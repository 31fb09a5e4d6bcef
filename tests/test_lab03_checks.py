"""Lab 03's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab03
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_03_mixture_of_experts.ipynb",
                       {"torch": torch, "F": F, "nn": torch.nn})


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    lab03.check_1(SOL["softmax_topk"])
    lab03.check_2(SOL["sigmoid_route"])
    lab03.check_3(SOL["dispatch_combine"])
    lab03.check_4(SOL["expert_load"])
    lab03.check_5(SOL["aux_loss"])
    lab03.check_6(SOL["bias_update"], SOL["sigmoid_route"], SOL["expert_load"])
    lab03.check_7(SOL["moe_forward"])
    assert capsys.readouterr().out.count("✅") == 7


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError("write your code")

    with pytest.raises(ExerciseNotDone):
        lab03.check_1(stub)


def test_check_1_rejects_unnormalised_gates_and_bottom_k():
    def unnormalised(logits, k):
        return logits.softmax(-1).topk(k, dim=-1)

    def bottom_k(logits, k):
        p = logits.softmax(-1)
        top, idx = (-p).topk(k, dim=-1)
        return -top / (-top).sum(-1, keepdim=True), idx

    assert "gates" in _rejects(lab03.check_1, unnormalised)
    assert "should go to experts" in _rejects(lab03.check_1, bottom_k)


def test_check_2_rejects_biased_gates_and_ignored_bias_and_missing_scale():
    def biased_gates(logits, k, bias, route_scale=1.0):
        s = logits.sigmoid() + bias
        top, idx = s.topk(k, dim=-1)
        return top / top.sum(-1, keepdim=True) * route_scale, idx

    def no_bias(logits, k, bias, route_scale=1.0):
        return SOL["sigmoid_route"](logits, k, torch.zeros_like(bias), route_scale)

    def no_scale(logits, k, bias, route_scale=1.0):
        return SOL["sigmoid_route"](logits, k, bias, 1.0)

    assert "gates" in _rejects(lab03.check_2, biased_gates)
    assert "should go to experts" in _rejects(lab03.check_2, no_bias)
    assert "gates" in _rejects(lab03.check_2, no_scale)


def test_check_3_rejects_per_token_loop_and_missing_gates():
    def per_token(x, idx, gates, experts):
        y = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(idx.shape[1]):
                y[t] += gates[t, j] * experts[int(idx[t, j])](x[t:t + 1])[0]
        return y

    def no_gates(x, idx, gates, experts):
        return SOL["dispatch_combine"](x, idx, torch.ones_like(gates), experts)

    assert "times" in _rejects(lab03.check_3, per_token)
    assert "difference" in _rejects(lab03.check_3, no_gates)


def test_check_4_rejects_missing_zeros_and_ratio_without_minus_one():
    def no_zeros(idx, n):
        load = torch.bincount(idx.flatten()).float()
        return load, (load.max() / load.mean() - 1).item()

    def ratio(idx, n):
        load = torch.bincount(idx.flatten(), minlength=n).float()
        return load, (load.max() / load.mean()).item()

    assert "shape" in _rejects(lab03.check_4, no_zeros)
    assert "max_violation" in _rejects(lab03.check_4, ratio)


def test_check_5_rejects_unscaled_f_raw_affinities_and_detached_loss():
    def unscaled_f(s, idx, alpha):
        return SOL["aux_loss"](s, idx, alpha) / s.shape[1]

    def raw_affinities(s, idx, alpha):
        E = s.shape[1]
        f = torch.bincount(idx.flatten(), minlength=E).float() * E / idx.numel()
        return alpha * (f * s.mean(0)).sum()

    def detached(s, idx, alpha):
        return SOL["aux_loss"](s.detach(), idx, alpha)

    assert "uniform" in _rejects(lab03.check_5, unscaled_f)
    assert "sigmoid" in _rejects(lab03.check_5, raw_affinities)
    assert "gradient" in _rejects(lab03.check_5, detached)


def test_check_6_rejects_wrong_sign_and_in_place_update():
    def wrong_sign(bias, load, gamma):
        return bias - gamma * torch.sign(load.mean() - load)

    def in_place(bias, load, gamma):
        return bias.add_(gamma * torch.sign(load.mean() - load))

    def proportional(bias, load, gamma):  # not the paper's ±γ
        return bias + gamma * (load.mean() - load)

    assert "difference" in _rejects(lab03.check_6, wrong_sign)
    assert "in place" in _rejects(lab03.check_6, in_place)
    assert "difference" in _rejects(lab03.check_6, proportional)


def test_check_7_rejects_missing_shared_expert_and_swapped_halves():
    def no_shared(x, W, k, route_scale=1.0):
        W = {**W, "shared_down": torch.zeros_like(W["shared_down"])}
        return SOL["moe_forward"](x, W, k, route_scale)

    def swapped(x, W, k, route_scale=1.0):
        g, u = W["gate_up"].chunk(2, dim=1)
        return SOL["moe_forward"](x, {**W, "gate_up": torch.cat([u, g], 1)}, k, route_scale)

    assert "shared expert" in _rejects(lab03.check_7, no_shared)
    assert "difference" in _rejects(lab03.check_7, swapped)
