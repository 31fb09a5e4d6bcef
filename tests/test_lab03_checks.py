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


EXPERT_BYTES = 3 * 512 * 256 * 4
ALWAYS_BYTES = EXPERT_BYTES + 16 * 512 * 4


def _prediction() -> float:
    d16 = SOL["expected_distinct"](16, 3, 16)
    return ((ALWAYS_BYTES + d16 * EXPERT_BYTES) / 16) / (ALWAYS_BYTES + 3 * EXPERT_BYTES)


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
    lab03.check_7(SOL["group_route"])
    lab03.check_8(SOL["moe_forward"])
    lab03.check_9(SOL["bytes_per_token"], SOL["expected_distinct"], SOL["sigmoid_route"], _prediction(),
                  EXPERT_BYTES, ALWAYS_BYTES)
    assert capsys.readouterr().out.count("✅") == 9


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


def test_check_7_rejects_no_group_limit_top1_group_score_and_unbiased_group_score():
    def no_limit(logits, k, bias, n_groups, topk_groups, route_scale=1.0):
        return SOL["sigmoid_route"](logits, k, bias, route_scale)

    def top1_group_score(logits, k, bias, n_groups, topk_groups, route_scale=1.0):
        N, E = logits.shape
        s = logits.sigmoid()
        choice = s + bias
        gs = choice.view(N, n_groups, E // n_groups).max(-1).values            # best expert only, not the best two
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(topk_groups, dim=-1).indices, True)
        choice = choice.masked_fill(~keep.repeat_interleave(E // n_groups, dim=1), float("-inf"))
        idx = choice.topk(k, dim=-1).indices
        g = s.gather(1, idx)
        return g / g.sum(-1, keepdim=True) * route_scale, idx

    def unbiased_group_score(logits, k, bias, n_groups, topk_groups, route_scale=1.0):
        N, E = logits.shape
        s = logits.sigmoid()
        gs = s.view(N, n_groups, E // n_groups).topk(2, dim=-1).values.sum(-1)   # groups ranked without the bias
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(topk_groups, dim=-1).indices, True)
        choice = (s + bias).masked_fill(~keep.repeat_interleave(E // n_groups, dim=1), float("-inf"))
        idx = choice.topk(k, dim=-1).indices
        g = s.gather(1, idx)
        return g / g.sum(-1, keepdim=True) * route_scale, idx

    for wrong in (no_limit, top1_group_score, unbiased_group_score):
        assert "should go to experts" in _rejects(lab03.check_7, wrong)


def test_check_8_rejects_missing_shared_expert_swapped_halves_and_ignored_groups():
    def no_shared(x, W, k, route_scale=1.0, n_groups=1, topk_groups=1):
        W = {**W, "shared_down": torch.zeros_like(W["shared_down"])}
        return SOL["moe_forward"](x, W, k, route_scale, n_groups, topk_groups)

    def swapped(x, W, k, route_scale=1.0, n_groups=1, topk_groups=1):
        g, u = W["gate_up"].chunk(2, dim=1)
        return SOL["moe_forward"](x, {**W, "gate_up": torch.cat([u, g], 1)}, k, route_scale, n_groups, topk_groups)

    def ignores_groups(x, W, k, route_scale=1.0, n_groups=1, topk_groups=1):
        return SOL["moe_forward"](x, W, k, route_scale)

    assert "shared expert" in _rejects(lab03.check_8, no_shared)
    assert "difference" in _rejects(lab03.check_8, swapped)
    assert "groups" in _rejects(lab03.check_8, ignores_groups)


def test_check_9_rejects_counting_repeats_per_batch_bytes_linear_union_and_a_dense_guess():
    args = (SOL["sigmoid_route"], _prediction(), EXPERT_BYTES, ALWAYS_BYTES)

    def repeats(idx, n, eb, ab):
        return (ab + idx.numel() * eb) / idx.shape[0]

    def per_batch(idx, n, eb, ab):
        return ab + idx.unique().numel() * eb

    def linear(n, k, b):
        return min(n, k * b)

    assert "bytes_per_token" in _rejects(lab03.check_9, repeats, SOL["expected_distinct"], *args)
    assert "bytes_per_token" in _rejects(lab03.check_9, per_batch, SOL["expected_distinct"], *args)
    assert "expected_distinct" in _rejects(lab03.check_9, SOL["bytes_per_token"], linear, *args)
    dense_guess = (SOL["sigmoid_route"], 1 / 16, EXPERT_BYTES, ALWAYS_BYTES)
    assert "prediction" in _rejects(lab03.check_9, SOL["bytes_per_token"], SOL["expected_distinct"], *dense_guess)
    assert "number" in _rejects(lab03.check_9, SOL["bytes_per_token"], SOL["expected_distinct"], SOL["sigmoid_route"],
                                "a quarter", EXPERT_BYTES, ALWAYS_BYTES)
