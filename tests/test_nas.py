"""utils.nas (notebook 09's search space and blocks) and notebook 09's search strategies."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from utils import evidence, nas
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SPACE = nas.SearchSpace()
MEMBERS = SPACE.members()


def test_space_size_and_order():
    assert len(MEMBERS) == 168
    assert len(set(MEMBERS)) == len(MEMBERS)
    assert all(a.n_kv_heads == a.n_heads for a in MEMBERS if a.attention == "mla")


def test_every_member_builds_and_runs():
    x = nas.token_inputs(24, 64)
    for a in MEMBERS:
        model = nas.build(a, 24, 64)
        with torch.inference_mode():
            logits, _ = model(x)
        assert logits.shape == (1, 24, 64) and torch.isfinite(logits).all(), a
        blocks = nas.block_modules(a, 24, 64)
        assert set(blocks) == set(nas.block_keys(a).values())


def test_training_a_member_runs_the_moe_and_mla_paths():
    a = nas.Arch(2, 32, 4, 4, 2, "mla", "moe")
    model = nas.build(a, 24, 64)
    batch = nas.ProxySetup().task().batch(8, torch.Generator().manual_seed(0))
    _, loss = model(batch.inputs, batch.lm_targets)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.dim() >= 2)


@pytest.mark.parametrize("bad, match", [
    (dict(n_layers=2, d_model=64, n_heads=3, n_kv_heads=1, ffn_ratio=2), "does not divide d_model"),
    (dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=3, ffn_ratio=2), "does not divide n_heads"),
    (dict(n_layers=0, d_model=64, n_heads=4, n_kv_heads=1, ffn_ratio=2), "positive"),
    (dict(n_layers=1, d_model=64, n_heads=4, n_kv_heads=1, ffn_ratio=2, attention="ssm"), "attention"),
])
def test_invalid_architectures_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        nas.Arch(**bad)


def test_empty_search_spaces_are_rejected():
    with pytest.raises(ValueError, match="empty search space"):
        nas.SearchSpace(n_layers=())
    with pytest.raises(ValueError, match="empty search space"):
        nas.SearchSpace(d_model=(30,), n_heads=(4,)).members()


def test_mutate_changes_one_field_deterministically():
    a = MEMBERS[17]
    kids = [nas.mutate(a, SPACE, np.random.default_rng(5)) for _ in range(2)]
    assert kids[0] == kids[1] and kids[0] in set(MEMBERS)
    for s in range(30):
        child = nas.mutate(a, SPACE, np.random.default_rng(s))
        diff = [k for k in a.as_dict() if a.as_dict()[k] != child.as_dict()[k]]
        assert 1 <= len(diff) <= 2 and child != a      # MLA children also reset n_kv_heads


def test_stored_table_matches_the_space():
    table = nas.load_table()
    assert [nas.Arch(**r["arch"]) for r in table["rows"]] == MEMBERS
    keys = {k for a in MEMBERS for k in nas.block_keys(a).values()}
    assert keys == set(table["block_ms"])
    assert all(r["latency_ms"] > 0 and r["flops"] > 0 for r in table["rows"])


def _notebook_strategies():
    quality = {a: 3.0 - 0.1 * a.n_layers - a.d_model / 640 + 0.01 * a.n_kv_heads for a in MEMBERS}
    lat = {a: 0.2 * a.n_layers + a.d_model / 100 + (a.ffn == "moe") * 0.3 for a in MEMBERS}
    ns = {"np": np, "torch": torch, "nas": nas, "optuna": optuna, "evidence": evidence, "members": MEMBERS,
          "space": SPACE,
          "quality": quality, "pred_lat": lat, "q_rng": (min(quality.values()), max(quality.values())),
          "l_rng": (min(lat.values()), max(lat.values()))}
    return load_definitions(REPO_ROOT / "notebooks" / "09_architecture_search.ipynb", ns)


@pytest.mark.parametrize("name", ["random_search", "regularized_evolution"])
def test_search_strategies_are_deterministic_per_seed(name):
    nb = _notebook_strategies()
    logs = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        ev = nb["Evaluator"]()
        nb[name](ev, 20, seed)
        assert len(ev.log) == 20 and all(p[0] in set(MEMBERS) for p in ev.log)
        logs[key] = [p[0] for p in ev.log]
    assert logs["a"] == logs["b"]
    assert logs["a"] != logs["c"]


def test_hypervolume_and_share_on_constructed_cases():
    nb = _notebook_strategies()
    assert nb["hypervolume"]([(0.0, 0.0)], ref=(1.0, 1.0)) == pytest.approx(1.0)
    assert nb["hypervolume"]([(0.5, 0.0), (0.0, 0.5)], ref=(1.0, 1.0)) == pytest.approx(0.75)
    assert nb["hypervolume"]([(0.5, 0.0), (0.0, 0.5), (0.6, 0.6)], ref=(1.0, 1.0)) == pytest.approx(0.75)
    assert nb["share_within"]([9.0, 7.0, 18.0, 9.5, 5.0], [8.0, 8.0, 16.0, 10.0, 5.0], 0.125) == 1.0
    assert nb["share_within"]([1.2, 1.0], [1.0, 1.0]) == 0.5
    with pytest.raises(ValueError):
        nb["share_within"]([1.0], [1.0, 2.0])


def test_choose_under_limit_names_the_closest_when_none_meets():
    nb = _notebook_strategies()
    lat, q = nb["pred_lat"], nb["quality"]
    with pytest.raises(ValueError, match="closest is"):
        nb["choose_under_limit"](MEMBERS, lat, q, 0.01)
    chosen = nb["choose_under_limit"](MEMBERS, lat, q, 1.0)
    assert lat[chosen] <= 1.0 and all(q[chosen] <= q[a] for a in MEMBERS if lat[a] <= 1.0)


def test_supernet_subnetwork_equals_extracted_standalone_model():
    members = nas.shared_members(SPACE)
    assert len(members) == 60
    sn = nas.SuperNet(members, 24, 64, seed=0)
    with torch.no_grad():       # make the slices distinguishable: every weight random, norms not all ones
        for p in sn.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    x = nas.token_inputs(24, 64)
    for a in members:
        with torch.no_grad():
            shared, _ = sn(x, a)
            alone, _ = sn.extract(a)(x)
        assert torch.allclose(shared, alone, atol=1e-5), a
    with pytest.raises(ValueError, match="not a member"):
        sn(x, nas.Arch(1, 32, 2, 2, 2, "mla", "dense"))
    with pytest.raises(ValueError, match="dense-FFN GQA/MHA"):
        nas.SuperNet(MEMBERS, 24, 64)


def test_supernet_gradients_reach_only_the_slices():
    members = nas.shared_members(SPACE)
    sn = nas.SuperNet(members, 24, 64)
    batch = nas.ProxySetup().task().batch(4, torch.Generator().manual_seed(0))
    _, loss = sn(batch.inputs, sn.smallest, batch.lm_targets)
    loss.backward()
    assert sn.net.blocks[1].attn.q.weight.grad is None          # the smallest member has one layer
    g = sn.net.blocks[0].ffn.gate.weight.grad
    assert g[:64, :32].abs().sum() > 0 and g[64:].abs().sum() == 0 and g[:, 32:].abs().sum() == 0


def test_hypervolume_sweep_matches_hypervolume_and_big_mutate_is_valid():
    nb = _notebook_strategies()
    nb.update(ATTN_OPTIONS=[0] * 7, FFN_OPTIONS=[0] * 4)     # only their lengths matter to big_mutate
    pts = np.random.default_rng(0).random((40, 2))
    assert np.isclose(nb["hypervolume_sweep"](pts), nb["hypervolume"](pts))
    assert np.isclose(nb["hypervolume_sweep"]([[0.5, 0.5]]), 0.36)
    rng, m = np.random.default_rng(0), (32, (0,))
    for _ in range(200):
        child = nb["big_mutate"](m, rng)
        assert child != m and child[0] in SPACE.d_model and 1 <= len(child[1]) <= 3
        assert all(0 <= j < 28 for j in child[1])
        m = child
