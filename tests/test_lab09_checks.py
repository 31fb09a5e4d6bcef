"""Lab 09's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from utils import nas
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab09
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_09_architecture_search.ipynb",
                       {"np": np, "nas": nas, "optuna": optuna})


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lab09.check_1(SOL["sample_arch"])
    lab09.check_2(SOL["predict_latency"], SOL["share_within"])
    lab09.check_3(SOL["kendall_tau"])
    lab09.check_4(SOL["evolution_step"])
    lab09.check_5(SOL["run_study"])
    assert capsys.readouterr().out.count("✅") == 5


def test_stub_reports_not_done():
    def stub(*args, **kwargs):
        raise NotImplementedError

    with pytest.raises(ExerciseNotDone):
        lab09.check_3(stub)


def test_check_1_rejects_repair_and_invalid_members():
    def repaired(space, rng):      # MLA draws repaired instead of rejected: MLA over-represented
        draw = {k: (lambda v: v.item() if hasattr(v, "item") else v)(c[rng.integers(len(c))])
                for k, c in space.choices().items()}
        if draw["attention"] == "mla" or draw["n_heads"] % draw["n_kv_heads"]:
            draw["n_kv_heads"] = draw["n_heads"]
        return nas.Arch(**draw)

    def not_members(space, rng):   # keeps MLA draws with n_kv_heads != n_heads
        while True:
            draw = {k: (lambda v: v.item() if hasattr(v, "item") else v)(c[rng.integers(len(c))])
                    for k, c in space.choices().items()}
            try:
                return nas.Arch(**draw)
            except ValueError:
                continue

    def global_random(space, rng):  # ignores the generator it was given
        return SOL["sample_arch"](space, np.random.default_rng())

    _rejects(lab09.check_1, repaired, match="not uniform")
    _rejects(lab09.check_1, not_members, match="not a member")
    _rejects(lab09.check_1, global_random, match="same seed")


def test_check_2_rejects_wrong_predictors_and_metrics():
    share, predict = SOL["share_within"], SOL["predict_latency"]

    def once_per_model(arch, block_ms):
        k = nas.block_keys(arch)
        return block_ms[k["stem"]] + block_ms[k["attention"]] + block_ms[k["ffn"]]

    def stem_per_layer(arch, block_ms):
        k = nas.block_keys(arch)
        return arch.n_layers * (block_ms[k["stem"]] + block_ms[k["attention"]] + block_ms[k["ffn"]])

    def exclusive(p, m, tol=0.10):
        p, m = np.asarray(p, float), np.asarray(m, float)
        if p.shape != m.shape or p.size == 0:
            raise ValueError("shapes")
        return float(np.mean(np.abs(p - m) / m < tol))

    def relative_to_prediction(p, m, tol=0.10):
        p, m = np.asarray(p, float), np.asarray(m, float)
        if p.shape != m.shape or p.size == 0:
            raise ValueError("shapes")
        return float(np.mean(np.abs(p - m) / p <= tol))

    def no_validation(p, m, tol=0.10):
        p, m = np.asarray(p, float), np.asarray(m, float)
        return float(np.mean(np.abs(p[: len(m)] - m[: len(p)]) / m[: len(p)] <= tol)) if len(p) else 0.0

    _rejects(lab09.check_2, once_per_model, share, match="once per layer")
    _rejects(lab09.check_2, stem_per_layer, share, match="once per layer")
    _rejects(lab09.check_2, predict, exclusive, match="inclusive")
    _rejects(lab09.check_2, predict, relative_to_prediction, match="prediction")
    _rejects(lab09.check_2, predict, no_validation, match="ValueError")


def test_share_within_on_constructed_cases():
    share = SOL["share_within"]
    assert share([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert share([9.0, 7.0, 18.0, 9.5, 5.0], [8.0, 8.0, 16.0, 10.0, 5.0], 0.125) == 1.0
    assert share([9.0, 7.0, 18.0, 9.5, 5.0], [8.0, 8.0, 16.0, 10.0, 5.0]) == pytest.approx(0.4)
    assert share([2.0, 0.5], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError):
        share([], [])


def test_check_3_rejects_tau_a_and_spearman():
    from scipy import stats

    def tau_a(x, y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape:
            raise ValueError("lengths")
        iu = np.triu_indices(len(x), 1)
        return float(np.sum(np.sign(np.subtract.outer(x, x))[iu] * np.sign(np.subtract.outer(y, y))[iu])) / len(iu[0])

    def spearman(x, y):
        if len(x) != len(y):
            raise ValueError("lengths")
        return stats.spearmanr(x, y).statistic

    _rejects(lab09.check_3, tau_a, match="ties")
    _rejects(lab09.check_3, spearman)


def test_check_4_rejects_wrong_evolution():
    def remove_worst(pop, evaluate, space, rng, tournament=3):
        idx = rng.choice(len(pop), size=tournament, replace=False)
        parent = min((pop[i] for i in idx), key=lambda p: p[1])[0]
        child = nas.mutate(parent, space, rng)
        new = list(pop) + [(child, evaluate(child))]
        new.remove(max(new, key=lambda p: p[1]))
        return new

    def no_mutation(pop, evaluate, space, rng, tournament=3):
        idx = rng.choice(len(pop), size=tournament, replace=False)
        parent = min((pop[i] for i in idx), key=lambda p: p[1])[0]
        return list(pop[1:]) + [(parent, evaluate(parent))]

    def whole_population(pop, evaluate, space, rng, tournament=3):
        parent = min(pop, key=lambda p: p[1])[0]
        child = nas.mutate(parent, space, rng)
        return list(pop[1:]) + [(child, evaluate(child))]

    def in_place(pop, evaluate, space, rng, tournament=3):
        new = SOL["evolution_step"](pop, evaluate, space, rng, tournament)
        pop[:] = new
        return pop

    _rejects(lab09.check_4, remove_worst)
    _rejects(lab09.check_4, no_mutation, match="copy|mutate")
    _rejects(lab09.check_4, whole_population)
    _rejects(lab09.check_4, in_place, match="new list")


def test_check_5_rejects_wrong_studies():
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def tpe(evaluate, space, n_trials, seed):
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(lambda t: evaluate(nas.Arch(**_fields(t, space))), n_trials=n_trials)
        return study

    def unseeded(evaluate, space, n_trials, seed):
        return SOL["run_study"](evaluate, space, n_trials, None)

    def maximise(evaluate, space, n_trials, seed):
        study = optuna.create_study(directions=["minimize", "maximize"],
                                    sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=8))
        study.optimize(lambda t: evaluate(nas.Arch(**_fields(t, space))), n_trials=n_trials)
        return study

    def no_repair(evaluate, space, n_trials, seed):
        study = optuna.create_study(directions=["minimize", "minimize"],
                                    sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=8))

        def objective(t):
            kw = {n: t.suggest_categorical(n, list(c)) for n, c in space.choices().items()}
            if kw["n_heads"] % kw["n_kv_heads"]:
                kw["n_kv_heads"] = kw["n_heads"]
            return evaluate(nas.Arch(**kw))          # MLA draws keep n_kv_heads != n_heads: not members

        study.optimize(objective, n_trials=n_trials)
        return study

    _rejects(lab09.check_5, tpe, match="NSGAIISampler")
    _rejects(lab09.check_5, unseeded, match="same seed")
    _rejects(lab09.check_5, maximise, match="minimised")
    _rejects(lab09.check_5, no_repair, match="not a member")


def _fields(trial, space):
    kw = {n: trial.suggest_categorical(n, list(c)) for n, c in space.choices().items()}
    if kw["attention"] == "mla" or kw["n_heads"] % kw["n_kv_heads"]:
        kw["n_kv_heads"] = kw["n_heads"]
    return kw
