"""Hidden tests of lab 03 (mixture of experts). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import torch

from ..checking import CheckFailed, expect_allclose, expect_close, expect_tensor, run_check
from ..checking import seeded_randn as _rand


def _expect_same_routing(what: str, got, want_gates: torch.Tensor, want_idx: torch.Tensor, atol=1e-5) -> None:
    """Compare (gates, idx) up to the order of the k experts of each token."""
    if not isinstance(got, tuple) or len(got) != 2:
        raise CheckFailed(f"{what}: expected a tuple (gates, idx), got {type(got).__name__}")
    gates, idx = got
    expect_tensor(f"{what}: idx", idx, shape=want_idx.shape)
    expect_tensor(f"{what}: gates", gates, shape=want_gates.shape)
    o_got, o_want = idx.long().argsort(-1), want_idx.argsort(-1)
    if not torch.equal(idx.long().gather(1, o_got), want_idx.gather(1, o_want)):
        t = int((idx.long().sort(-1).values != want_idx.sort(-1).values).any(-1).nonzero()[0])
        raise CheckFailed(f"{what}: token {t} should go to experts {sorted(want_idx[t].tolist())}, "
                          f"got {sorted(idx[t].tolist())}")
    expect_allclose(f"{what}: gates (matched by expert)", gates.gather(1, o_got), want_gates.gather(1, o_want), atol)


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: softmax top-k with renormalised gates."""

    def tests():
        for N, E, k in [(5, 4, 2), (17, 8, 2), (9, 16, 6), (3, 6, 1)]:
            logits = _rand(N, E, seed=E + k) * 2
            p = logits.softmax(-1)
            top, idx = p.topk(k, dim=-1)
            _expect_same_routing(f"softmax_topk(logits [{N}, {E}], k={k})", fn(logits, k),
                                 top / top.sum(-1, keepdim=True), idx)
        return "the k most probable experts, gates summing to 1 per token."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _hf_router(logits_w: torch.Tensor, bias: torch.Tensor, k: int, route_scale: float, n_group: int = 1,
               topk_group: int = 1):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    E, d = logits_w.shape
    cfg = DeepseekV3Config(hidden_size=d, n_routed_experts=E, num_experts_per_tok=k, n_group=n_group,
                           topk_group=topk_group, norm_topk_prob=True, routed_scaling_factor=route_scale)
    router = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(logits_w)
        router.e_score_correction_bias.copy_(bias)
    return router


def check_2(fn) -> None:
    """Exercise 2: DeepSeek-V3's sigmoid router against transformers' DeepseekV3TopkRouter."""

    def tests():
        for N, E, k, scale, bias_std in [(7, 8, 2, 1.0, 0.0), (20, 16, 4, 2.5, 0.3), (11, 12, 3, 1.5, 1.0)]:
            w, x = _rand(E, 32, seed=E), _rand(N, 32, seed=N)
            bias = _rand(E, seed=k) * bias_std
            with torch.no_grad():
                _, want_gates, want_idx = _hf_router(w, bias, k, scale)(x)
            _expect_same_routing(f"sigmoid_route(N={N}, E={E}, k={k}, route_scale={scale}, bias std {bias_std})",
                                 fn(x @ w.T, k, bias, scale), want_gates, want_idx)
        return "selection by s + bias, gates from the raw sigmoid, normalised and scaled — as in transformers."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(fn) -> None:
    """Exercise 3: dispatch/combine equals the per-token definition and calls each expert at most once."""

    def tests():
        for N, d, E, k in [(6, 4, 3, 1), (40, 8, 6, 2), (64, 16, 8, 3)]:
            x, gates = _rand(N, d, seed=N), _rand(N, k, seed=k).softmax(-1)
            idx = torch.stack([torch.randperm(E, generator=torch.Generator().manual_seed(t))[:k] for t in range(N)])
            if k == 1:
                idx[idx == E - 1] = 0                      # an expert that receives no token
            mats = [_rand(d, d, seed=100 + e) for e in range(E)]
            calls = [0] * E

            def make(e, calls=calls, mats=mats):
                def expert(h):
                    calls[e] += 1
                    return torch.tanh(h @ mats[e])
                return expert

            want = torch.zeros(N, d)
            for t in range(N):
                for j in range(k):
                    want[t] += gates[t, j] * torch.tanh(x[t] @ mats[idx[t, j]])
            got = fn(x, idx, gates, [make(e) for e in range(E)])
            expect_allclose(f"dispatch_combine(N={N}, d={d}, E={E}, k={k})", got, want, atol=1e-5)
            if max(calls) > 1:
                e = max(range(E), key=lambda i: calls[i])
                raise CheckFailed(f"dispatch_combine(N={N}, E={E}, k={k}) called expert {e} {calls[e]} times; "
                                  "group its tokens and call it once")
        return "same result as the per-token sum, with one call per expert."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def check_4(fn) -> None:
    """Exercise 4: expert load counts and max violation."""

    def tests():
        idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
        out = fn(idx, 6)
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckFailed(f"expert_load should return (load, max_violation), got {type(out).__name__}")
        load, mv = out
        expect_tensor("load of idx [[0,1],[0,2],[0,1],[3,0]] with 6 experts", load, shape=(6,))
        want = torch.tensor([4.0, 2, 1, 1, 0, 0])
        if not torch.equal(load.float(), want):
            raise CheckFailed(f"load: expected {want.tolist()}, got {load.float().tolist()}")
        expect_close("max_violation of that load (mean 8/6)", mv, 4 / (8 / 6) - 1, rtol=1e-5)
        if not isinstance(mv, float):
            raise CheckFailed(f"max_violation should be a Python float, got {type(mv).__name__}")
        g = torch.Generator().manual_seed(0)
        idx = torch.rand(500, 16, generator=g).topk(4, dim=-1).indices
        load, mv = fn(idx, 16)
        ref = torch.bincount(idx.flatten(), minlength=16).float()
        if not torch.equal(load.float(), ref):
            raise CheckFailed("load of 500 random top-4 assignments over 16 experts does not match the counts")
        expect_close("max_violation of 500 random top-4 assignments", mv, (ref.max() / ref.mean() - 1).item(), 1e-5)
        return "counts per expert (zeros included) and max load / mean load − 1."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def _ref_aux(s, idx, alpha):
    E = s.shape[1]
    f = torch.bincount(idx.flatten(), minlength=E).float() * E / idx.numel()
    return alpha * (f * (s / s.sum(-1, keepdim=True)).mean(0)).sum()


def check_5(fn) -> None:
    """Exercise 5: DeepSeek's expert-level balance loss, value and gradient."""

    def tests():
        # perfectly uniform: L = alpha
        s = torch.full((8, 4), 0.25)
        idx = torch.tensor([[0, 1], [2, 3]] * 4)
        expect_close("aux_loss with uniform load and affinities, alpha=0.01", fn(s, idx, 0.01), 0.01, rtol=1e-5)
        for N, E, k, kind in [(50, 8, 2, "softmax"), (64, 16, 4, "sigmoid"), (10, 6, 3, "sigmoid")]:
            logits = _rand(N, E, seed=N) * 2
            logits[:, 0] += 2  # an overloaded expert
            mine = logits.clone().requires_grad_(True)
            s = mine.softmax(-1) if kind == "softmax" else mine.sigmoid()
            idx = s.detach().topk(k, dim=-1).indices
            got = fn(s, idx, 0.003)
            want_s = logits.softmax(-1) if kind == "softmax" else logits.sigmoid()
            want = _ref_aux(want_s, idx, 0.003)
            expect_close(f"aux_loss({kind} affinities [{N}, {E}], k={k}, alpha=0.003)", got, want.item(), rtol=1e-4)
            if not torch.is_tensor(got) or not got.requires_grad:
                raise CheckFailed("aux_loss must return a tensor that carries a gradient back to the affinities")
            got.backward()
            ref_logits = logits.clone().requires_grad_(True)
            rs = ref_logits.softmax(-1) if kind == "softmax" else ref_logits.sigmoid()
            _ref_aux(rs, idx, 0.003).backward()
            expect_allclose(f"gradient of aux_loss w.r.t. the router logits ({kind})", mine.grad, ref_logits.grad,
                             atol=1e-7)
        return "L = α·Σ f_i·P_i, with the gradient flowing through P only."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(fn, route_fn=None, load_fn=None) -> None:
    """Exercise 6: the bias update, and that it balances a skewed router."""

    def tests():
        bias = torch.tensor([0.1, 0.0, -0.2, 0.05])
        before = bias.clone()
        load = torch.tensor([10.0, 2.0, 4.0, 0.0])          # mean 4: overloaded, under, exact, under
        got = fn(bias, load, 0.01)
        if not torch.equal(bias, before):
            raise CheckFailed("bias_update modified `bias` in place; return a new tensor")
        expect_allclose("bias_update(bias, load [10, 2, 4, 0], gamma=0.01)", got,
                         torch.tensor([0.09, 0.01, -0.2, 0.06]), atol=1e-7)
        if route_fn is None or load_fn is None:
            return "±γ by load."
        g = torch.Generator().manual_seed(0)
        E, k, N = 16, 2, 512
        w = torch.randn(E, 32, generator=g) * 0.2
        w[:3] += 0.5                                         # three experts the router loves
        b = torch.zeros(E)
        first = last = None
        for _ in range(300):
            x = torch.randn(N, 32, generator=g) + 0.5
            _, idx = route_fn(x @ w.T, k, b, 1.0)
            load, mv = load_fn(idx, E)
            first = mv if first is None else first
            last = mv
            b = fn(b, load, 0.01)
        if not last < 0.5 * first or not last < 1.0:
            raise CheckFailed(f"after 300 bias updates (gamma=0.01) the max violation went from {first:.2f} to "
                              f"{last:.2f}; expected it to fall below half and below 1")
        return f"±γ by load; on a skewed router the max violation fell from {first:.2f} to {last:.2f} in 300 steps."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
GROUP_CASES = [(12, 16, 4, 4, 2, 2.5, 0.05), (20, 32, 8, 8, 3, 1.0, 0.3), (9, 24, 3, 6, 1, 1.5, 0.0)]


def check_7(fn) -> None:
    """Exercise 7: group-limited routing against transformers' DeepseekV3TopkRouter with several groups."""

    def tests():
        for N, E, k, n_group, topk_group, scale, bias_std in GROUP_CASES:
            w, x = _rand(E, 32, seed=E + 1) * 0.5, _rand(N, 32, seed=N + 1)
            bias = _rand(E, seed=k + 1) * bias_std
            with torch.no_grad():
                _, want_gates, want_idx = _hf_router(w, bias, k, scale, n_group, topk_group)(x)
            _expect_same_routing(f"group_route(N={N}, E={E}, k={k}, n_groups={n_group}, topk_groups={topk_group}, "
                                 f"route_scale={scale}, bias std {bias_std})",
                                 fn(x @ w.T, k, bias, n_group, topk_group, scale), want_gates, want_idx)
        return "groups scored by their two best s + bias, experts chosen in the kept groups — as in transformers."

    run_check(7, tests)


# --------------------------------------------------------------------------- exercise 8
def check_8(fn) -> None:
    """Exercise 8: the full layer against transformers' DeepseekV3MoE with copied weights, with and without groups."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    def tests():
        cases = [(32, 16, 8, 2, 1, 1.0, 1, 1), (48, 24, 16, 4, 2, 2.5, 4, 2), (40, 16, 32, 6, 1, 2.5, 8, 3)]
        for d, d_ff, E, k, n_shared, scale, n_group, topk_group in cases:
            cfg = DeepseekV3Config(hidden_size=d, moe_intermediate_size=d_ff, n_routed_experts=E, num_experts_per_tok=k,
                                   n_shared_experts=n_shared, n_group=n_group, topk_group=topk_group,
                                   norm_topk_prob=True, routed_scaling_factor=scale, experts_implementation="eager")
            torch.manual_seed(E)
            ref = DeepseekV3MoE(cfg).eval()
            with torch.no_grad():
                for p in ref.parameters():
                    p.normal_(0, 0.1)
                ref.gate.e_score_correction_bias.normal_(0, 0.05)
            W = {"router": ref.gate.weight.detach(), "bias": ref.gate.e_score_correction_bias.detach(),
                 "gate_up": ref.experts.gate_up_proj.detach(), "down": ref.experts.down_proj.detach(),
                 "shared_gate": ref.shared_experts.gate_proj.weight.detach(),
                 "shared_up": ref.shared_experts.up_proj.weight.detach(),
                 "shared_down": ref.shared_experts.down_proj.weight.detach()}
            x = _rand(3, 10, d, seed=d)
            with torch.no_grad():
                want = ref(x).reshape(-1, d)
                got = fn(x.reshape(-1, d), W, k, scale, n_group, topk_group)
                no_shared = want - ref.shared_experts(x).reshape(-1, d)
            if torch.is_tensor(got) and got.shape == want.shape and (got - no_shared).abs().max() < 1e-5:
                raise CheckFailed("the output matches the routed experts only: add the shared expert")
            expect_allclose(f"moe_forward vs DeepseekV3MoE (d={d}, E={E}, k={k}, {n_shared} shared, "
                             f"route_scale={scale}, {n_group} groups keeping {topk_group})", got, want, atol=1e-5)
        return "your DeepSeek-V3 MoE layer matches transformers' with copied weights, with and without groups."

    run_check(8, tests)


# --------------------------------------------------------------------------- exercise 9
def _measure_bytes(route_fn, bytes_fn, E, k, B, expert_bytes, always_bytes, n_batches=64):
    """Mean distinct experts and mean bytes per token of `n_batches` random batches of B tokens."""
    g = torch.Generator().manual_seed(B)
    w = torch.randn(E, 64, generator=g) * 0.5
    distinct, per_token = [], []
    for _ in range(n_batches):
        x = torch.randn(B, 64, generator=g)
        _, idx = route_fn(x @ w.T, k, torch.zeros(E), 1.0)
        distinct.append(idx.unique().numel())
        per_token.append(float(bytes_fn(idx, E, expert_bytes, always_bytes)))
    return sum(distinct) / n_batches, sum(per_token) / n_batches


def check_9(bytes_fn, distinct_fn, route_fn, predicted_ratio, expert_bytes: float, always_bytes: float) -> None:
    """Exercise 9: bytes per token, the expected distinct experts, and the learner's prediction of the batch ratio."""

    def tests():
        idx = torch.tensor([[0, 1], [1, 2], [0, 2], [5, 0]])
        expect_close("bytes_per_token([[0,1],[1,2],[0,2],[5,0]], expert 10, always 6): (6 + 4 distinct·10)/4 tokens",
                     bytes_fn(idx, 8, 10.0, 6.0), (6 + 4 * 10) / 4, rtol=1e-9)
        expect_close("bytes_per_token of one token choosing experts [3, 7]", bytes_fn(torch.tensor([[3, 7]]), 8, 10.0,
                                                                                      6.0), 26.0, rtol=1e-9)
        for E, k, B in [(16, 3, 1), (16, 3, 16), (256, 8, 64), (8, 2, 5)]:
            expect_close(f"expected_distinct(E={E}, k={k}, batch={B})", distinct_fn(E, k, B),
                         E * (1 - (1 - k / E) ** B), rtol=1e-9)
        E, k = 16, 3
        d1, b1 = _measure_bytes(route_fn, bytes_fn, E, k, 1, expert_bytes, always_bytes)
        d16, b16 = _measure_bytes(route_fn, bytes_fn, E, k, 16, expert_bytes, always_bytes)
        if abs(d16 - distinct_fn(E, k, 16)) > 0.1 * E:
            raise CheckFailed(f"measured {d16:.1f} distinct experts at batch 16, your expected_distinct says "
                              f"{distinct_fn(E, k, 16):.1f}")
        measured = b16 / b1
        p = float(predicted_ratio) if isinstance(predicted_ratio, (int, float)) or torch.is_tensor(predicted_ratio) \
            else None
        if p is None:
            raise CheckFailed(f"predicted_ratio should be a number, got {type(predicted_ratio).__name__}")
        if not abs(p - measured) <= 0.15 * measured:
            raise CheckFailed(f"your prediction {p:.3f} is off the measured ratio {measured:.3f} by "
                              f"{100 * (p - measured) / measured:+.0f}% (allowed ±15%); the batch touched "
                              f"{d16:.1f} of {E} experts")
        return (f"batch 1 touches {d1:.1f} experts and reads {b1 / 2**20:.2f} MiB per token; batch 16 touches "
                f"{d16:.1f} and reads {b16 / 2**20:.2f} MiB per token: ratio {measured:.3f} (you predicted {p:.3f}; "
                f"a dense layer would give {1 / 16:.3f}).")

    run_check(9, tests)
