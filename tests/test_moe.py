"""Notebook 03's MoE layer against transformers' DeepSeek-V3 and Qwen3-MoE blocks with copied weights."""

from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3Config, Qwen3MoeConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from utils import tinylm
from utils.nbimport import load_exports
from utils.results import REPO_ROOT

NB = load_exports(REPO_ROOT / "notebooks" / "03_mixture_of_experts.ipynb")


def _randomise(module, bias=None):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
        if bias is not None:
            bias.normal_(0, 0.05)


@pytest.mark.parametrize("n_group,topk_group,n_shared,scale", [(1, 1, 1, 1.0), (4, 2, 1, 2.5), (8, 3, 2, 2.5)])
def test_matches_deepseek_v3_moe(n_group, topk_group, n_shared, scale):
    cfg = DeepseekV3Config(hidden_size=64, moe_intermediate_size=32, n_routed_experts=16, num_experts_per_tok=4,
                           n_shared_experts=n_shared, n_group=n_group, topk_group=topk_group, norm_topk_prob=True,
                           routed_scaling_factor=scale, experts_implementation="eager")
    ref = DeepseekV3MoE(cfg).eval()
    _randomise(ref, ref.gate.e_score_correction_bias)
    ours = NB.MoE(64, 16, 4, 32, n_shared=n_shared, score="sigmoid", route_scale=scale, n_groups=n_group,
                  topk_groups=topk_group, balance="bias").eval()
    with torch.no_grad():
        ours.router.copy_(ref.gate.weight)
        ours.bias.copy_(ref.gate.e_score_correction_bias)
        ours.gate_up.copy_(ref.experts.gate_up_proj)
        ours.down.copy_(ref.experts.down_proj)
        for name in ("gate", "up", "down"):
            ours.shared[name].weight.copy_(getattr(ref.shared_experts, f"{name}_proj").weight)
        x = torch.randn(3, 20, 64, generator=torch.Generator().manual_seed(1))
        want, got = ref(x), ours(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_matches_qwen3_moe_softmax_router():
    cfg = Qwen3MoeConfig(hidden_size=48, moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2,
                         norm_topk_prob=True, experts_implementation="eager")
    ref = Qwen3MoeSparseMoeBlock(cfg).eval()
    _randomise(ref)
    ours = NB.MoE(48, 8, 2, 24, score="softmax").eval()
    with torch.no_grad():
        ours.router.copy_(ref.gate.weight)
        ours.gate_up.copy_(ref.experts.gate_up_proj)
        ours.down.copy_(ref.experts.down_proj)
        x = torch.randn(2, 15, 48, generator=torch.Generator().manual_seed(2))
        out = ref(x)
        want = out[0] if isinstance(out, tuple) else out
        got = ours(x)
    assert (got - want).abs().max().item() < 1e-5


def test_dispatch_combine_equals_per_token_sum_and_calls_each_expert_once():
    g = torch.Generator().manual_seed(0)
    N, d, E, k = 30, 8, 5, 2
    x, gates = torch.randn(N, d, generator=g), torch.rand(N, k, generator=g)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])
    mats = torch.randn(E, d, d, generator=g)
    calls = []

    def expert(e, h):
        calls.append(e)
        return torch.tanh(h @ mats[e])

    got = NB.dispatch_combine(x, idx, gates, expert, E)
    want = torch.stack([sum(gates[t, j] * torch.tanh(x[t] @ mats[idx[t, j]]) for j in range(k)) for t in range(N)])
    assert torch.allclose(got, want, atol=1e-5)
    assert sorted(calls) == sorted(set(calls))


def test_moe_in_tinylm_trains_with_aux_loss_and_bias_balances():
    torch.manual_seed(0)
    tr, va = tinylm.shakespeare_bytes()
    cfg = tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=32)
    aux = tinylm.TinyLM(cfg, ffn=lambda c: NB.MoE(c.d_model, 8, 2, 16, n_shared=1, score="sigmoid",
                                                  balance="aux_batch"))
    x, y = tinylm.get_batch(tr, 4, 32, torch.Generator().manual_seed(0))
    _, loss = aux(x, y)
    assert torch.is_tensor(aux.aux_loss) and aux.aux_loss.item() > 0
    (loss + aux.aux_loss).backward()
    assert aux.blocks[0].ffn.router.grad.abs().sum() > 0
    maxvio = {}
    for balance in ("none", "bias"):
        lm = tinylm.TinyLM(cfg, ffn=lambda c, b=balance: NB.MoE(c.d_model, 8, 2, 16, n_shared=1, score="sigmoid",
                                                                 balance=b, gamma=0.01))
        tinylm.train(lm, tr, va, steps=100, batch_size=8, progress=False)
        ffn = lm.blocks[0].ffn
        assert len(ffn.loads) == 100
        loads = torch.stack(ffn.loads)[-30:]
        maxvio[balance] = (loads.max(1).values / loads.mean(1) - 1).mean().item()
        assert (ffn.bias.abs().sum() > 0) == (balance == "bias")
    assert maxvio["bias"] < maxvio["none"]


def test_balance_loss_sequence_wise_differs_from_batch_wise():
    """Two sequences, each favouring its own two experts: balanced over the batch, unbalanced within each sequence."""
    E, T = 4, 6
    idx = torch.tensor([[0, 1]] * T + [[2, 3]] * T)                 # sequence 0 -> experts 0,1; sequence 1 -> 2,3
    uniform = torch.full((2 * T, E), 0.25)
    assert abs(NB.balance_loss(uniform, idx, E, n_seq=1).item() - 1.0) < 1e-6   # f = 1 for every expert
    peaked = torch.cat([torch.tensor([[0.4, 0.4, 0.1, 0.1]]).repeat(T, 1),
                        torch.tensor([[0.1, 0.1, 0.4, 0.4]]).repeat(T, 1)])
    batch = NB.balance_loss(peaked, idx, E, n_seq=1).item()        # f = 1, P = 0.25 each: 1.0
    seq = NB.balance_loss(peaked, idx, E, n_seq=2).item()          # f = 2 on the chosen pair, P = 0.4 there: 1.6
    assert abs(batch - 1.0) < 1e-6 and abs(seq - 1.6) < 1e-6


def test_moe_rejects_unknown_balance_and_bad_groups():
    with pytest.raises(ValueError, match="balance must be one of"):
        NB.MoE(16, 8, 2, 8, balance="aux")
    with pytest.raises(ValueError, match="n_groups"):
        NB.MoE(16, 8, 2, 8, n_groups=3)


def test_sequence_and_batch_aux_losses_reach_the_router_and_seq_violation_is_recorded():
    cfg = tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=16)
    for balance in ("aux_seq", "aux_batch"):
        lm = tinylm.TinyLM(cfg, ffn=lambda c, b=balance: NB.MoE(c.d_model, 8, 2, 16, n_shared=1, score="sigmoid",
                                                                 balance=b))
        x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
        _, loss = lm(x, x)
        assert torch.is_tensor(lm.aux_loss) and lm.aux_loss.item() > 0
        (loss + lm.aux_loss).backward()
        assert lm.blocks[0].ffn.router.grad.abs().sum() > 0
        assert len(lm.blocks[0].ffn.seq_violation) == 1


def test_direct_combine_equals_buffered():
    g = torch.Generator().manual_seed(3)
    moe = NB.MoE(24, 8, 3, 12, score="sigmoid").eval()
    x = torch.randn(50, 24, generator=g)
    with torch.no_grad():
        gates, idx, _ = NB.route(torch.nn.functional.linear(x, moe.router), 3, "sigmoid")
        a = NB.dispatch_combine(x, idx, gates, moe.expert, 8)
        b = NB.dispatch_combine_direct(x, idx, gates, moe.expert, 8)
    assert torch.allclose(a, b, atol=1e-6)


def test_fact_model_variants_have_the_intended_sizes():
    from utils import synthetic

    task = synthetic.FactTable(n_facts=64, key_len=2, key_vocab=16, value_vocab=16, facts_per_seq=4)
    dense_a = NB.fact_model("dense active", task, 0, 16, 8, 2, 8)
    moe = NB.fact_model("MoE", task, 0, 16, 8, 2, 8)
    dense_t = NB.fact_model("dense total", task, 0, 16, 8, 2, 8)
    tot_m, act_m = NB.ffn_params(moe)
    assert NB.ffn_params(dense_a)[0] == 3 * 16 * 3 * 8                       # (1 shared + top-2) experts of 8
    assert NB.ffn_params(dense_t)[0] == 3 * 16 * 9 * 8                       # (1 + 8) experts of 8
    assert act_m == NB.ffn_params(dense_a)[0] + 8 * 16                        # + the router
    assert tot_m == NB.ffn_params(dense_t)[0] + 8 * 16
    with pytest.raises(ValueError, match="variant"):
        NB.fact_model("sparse", task, 0, 16, 8, 2, 8)
