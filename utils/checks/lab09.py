"""Hidden tests of lab 09 (architecture search). Each `check_N(...)` prints a pass line or a one-line verdict."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .. import nas
from ..checking import CheckFailed, run_check

SMALL = nas.SearchSpace(n_layers=(1, 2), d_model=(32,), n_heads=(2, 4), n_kv_heads=(1, 2, 4), ffn_ratio=(2,),
                        attention=("gqa", "mla"), ffn=("dense",))


# --------------------------------------------------------------------------- exercise 1
def check_1(sample_arch) -> None:
    """Exercise 1: sample_arch(space, rng) returns valid members, uniformly, deterministically per seed."""

    def tests():
        members = SMALL.members()
        # 8 draws from each of two generators with the same seed: one draw each would coincide by chance 1 time in
        # len(members), letting a sampler that ignores `rng` pass
        runs = []
        for _ in range(2):
            g = np.random.default_rng(7)
            runs.append([sample_arch(SMALL, g) for _ in range(8)])
        if not all(isinstance(a, nas.Arch) for a in runs[0]):
            raise CheckFailed(f"sample_arch must return a nas.Arch, got {type(runs[0][0]).__name__}")
        if runs[0] != runs[1]:
            raise CheckFailed("two generators with the same seed gave different architectures: draw only from `rng`")
        rng = np.random.default_rng(0)
        n = 4000
        got = [sample_arch(SMALL, rng) for _ in range(n)]
        outside = [a for a in got if a not in set(members)]
        if outside:
            raise CheckFailed(f"{outside[0]} is not a member of the space (MLA members have n_kv_heads = n_heads; "
                              "KV heads must divide the heads)")
        counts = Counter(got)
        if len(counts) < len(members):
            missing = [a.label() for a in members if a not in counts]
            raise CheckFailed(f"{len(missing)} of {len(members)} members never drawn in {n} draws, e.g. {missing[0]}")
        mla = sum(c for a, c in counts.items() if a.attention == "mla") / n
        want = sum(a.attention == "mla" for a in members) / len(members)
        if abs(mla - want) > 0.05:
            raise CheckFailed(f"MLA members are {mla:.0%} of the draws but {want:.0%} of the members: not uniform over "
                              "members (a draw that is not a member must be rejected and redrawn, not repaired)")
        expected = n / len(members)
        worst = max(abs(c - expected) for c in counts.values()) / expected
        if worst > 0.35:
            raise CheckFailed(f"member frequencies differ from uniform by up to {worst:.0%}: each valid member "
                              "should be equally likely")
        try:
            sample_arch(nas.SearchSpace(n_layers=(1,), d_model=(30,), n_heads=(4,), n_kv_heads=(4,),
                                        ffn_ratio=(2,), attention=("gqa",), ffn=("dense",)), rng)
        except ValueError:
            pass
        else:
            raise CheckFailed("a space without a valid member (4 heads do not divide width 30) must raise ValueError")
        return f"{n} draws cover all {len(members)} members, MLA share {mla:.0%} (members: {want:.0%})"

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _table_for(archs) -> dict:
    table = {}
    for i, a in enumerate(archs):
        for part, key in nas.block_keys(a).items():
            base = {"stem": 0.1, "attention": 0.05, "ffn": 0.03}[part]
            table.setdefault(key, base * (1 + (i % 3)) + 0.001 * len(key))
    return table


def check_2(predict_latency, share_within) -> None:
    """Exercise 2: the per-block predictor and nn-Meter's ±10% share."""

    def tests():
        archs = SMALL.members()[:6] + [nas.Arch(3, 64, 4, 2, 4, "gqa", "moe")]
        table = _table_for(archs)
        for a in archs:
            k = nas.block_keys(a)
            want = table[k["stem"]] + a.n_layers * (table[k["attention"]] + table[k["ffn"]])
            got = float(predict_latency(a, table))
            if abs(got - want) > 1e-9:
                hint = ("the stem runs once, attention and FFN once per layer"
                        if abs(got - (table[k["stem"]] + table[k["attention"]] + table[k["ffn"]])) < 1e-9
                        or abs(got - a.n_layers * (table[k["stem"]] + table[k["attention"]] + table[k["ffn"]])) < 1e-9
                        else "look the blocks up with nas.block_keys(arch)")
                raise CheckFailed(f"predict_latency({a.label()}) = {got:.4f}, expected {want:.4f}: {hint}")
        meas = np.array([8.0, 8.0, 16.0, 10.0, 5.0])
        pred = np.array([9.0, 7.0, 18.0, 9.5, 5.0])       # relative errors 1/8, 1/8, 1/8, 1/20, 0 (exact in binary)
        got = float(share_within(pred, meas, 0.125))
        if abs(got - 1.0) > 1e-9:
            if abs(got - 0.4) < 1e-9:
                raise CheckFailed("share_within counts an error of exactly `tol` as outside: the bound is inclusive "
                                  "(|pred − meas| / meas <= tol)")
            if abs(got - 0.8) < 1e-9:
                raise CheckFailed("an error relative to the *prediction* is not nn-Meter's metric: divide by the "
                                  "measured latency")
            raise CheckFailed(f"share_within(…, tol=0.125) gave {got:.3f} on a constructed case whose errors are "
                              "1/8, 1/8, 1/8, 1/20 and 0 (answer 1.0)")
        if abs(float(share_within(pred, meas)) - 0.4) > 1e-9:
            raise CheckFailed("with the default tol = 0.10 two of the five predictions are within: expected 0.4")
        if abs(float(share_within(meas * 0.5, meas)) - 0.0) > 1e-9 or abs(float(share_within(meas, meas)) - 1) > 1e-9:
            raise CheckFailed("share_within must be 0 when every prediction is off by 50% and 1 when exact")
        for bad in ((pred[:3], meas), (np.array([]), np.array([]))):
            try:
                share_within(*bad)
            except ValueError:
                continue
            raise CheckFailed("mismatched or empty inputs must raise ValueError")
        return "predictor = stem + layers × (attention + FFN); ±10% share correct on constructed cases"

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(kendall_tau) -> None:
    """Exercise 3: Kendall τ-b, equal to scipy.stats.kendalltau, ties included."""
    from scipy import stats

    def tests():
        g = np.random.default_rng(0)
        cases = {"no ties": (g.normal(size=30), g.normal(size=30)),
                 "ties in both": (g.integers(0, 4, 25).astype(float), g.integers(0, 3, 25).astype(float)),
                 "perfect agreement": (np.arange(10.0), np.arange(10.0) * 3),
                 "perfect disagreement": (np.arange(10.0), -np.arange(10.0))}
        x = g.normal(size=40)
        cases["correlated"] = (x, x + 0.5 * g.normal(size=40))
        for name, (a, b) in cases.items():
            want = stats.kendalltau(a, b).statistic
            got = float(kendall_tau(a, b))
            if abs(got - want) > 1e-9:
                raise CheckFailed(f"{name}: τ = {got:.4f}, scipy's τ-b = {want:.4f}"
                                  + (" (with ties, divide by sqrt((n0 − ties in x)(n0 − ties in y)), τ-b)"
                                     if "ties" in name else ""))
        try:
            kendall_tau(np.arange(3.0), np.arange(4.0))
        except ValueError:
            pass
        else:
            raise CheckFailed("x and y of different lengths must raise ValueError")
        return "τ-b matches scipy on 5 cases, ties included"

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def reference_evolution_step(population, evaluate, space, rng, tournament: int = 3):
    """The worked solution: tournament of `tournament` distinct members, mutate the best, append, drop the oldest."""
    idx = rng.choice(len(population), size=tournament, replace=False)
    parent = min((population[i] for i in idx), key=lambda p: p[1])[0]
    child = nas.mutate(parent, space, rng)
    return list(population[1:]) + [(child, evaluate(child))]


def _score(a: nas.Arch) -> float:
    return a.n_layers * 0.3 + a.d_model / 64 + a.n_heads * 0.01 + a.n_kv_heads * 0.001 + (a.attention == "mla") * 0.2


def check_4(evolution_step) -> None:
    """Exercise 4: one cycle of regularised evolution, replayed against the reference with the same generator."""

    def tests():
        members = SMALL.members()
        start = [(a, _score(a)) for a in (members[i] for i in np.random.default_rng(3).permutation(len(members))[:6])]
        pop_a, pop_b = list(start), list(start)
        ra, rb = np.random.default_rng(11), np.random.default_rng(11)
        for cycle in range(8):
            snapshot = list(pop_a)
            got = evolution_step(pop_a, _score, SMALL, ra, 3)
            want = reference_evolution_step(pop_b, _score, SMALL, rb, 3)
            if list(pop_a) != snapshot:
                raise CheckFailed("evolution_step modified the population it was given: return a new list")
            got = list(got)
            if len(got) != len(want):
                raise CheckFailed(f"the population has {len(got)} members after a cycle, expected {len(want)} "
                                  "(add the child, remove one)")
            if got[:-1] != want[:-1]:
                if got[-1][0] in {a for a, _ in snapshot}:
                    raise CheckFailed("the new member is a copy of an existing one: mutate the parent")
                raise CheckFailed(f"cycle {cycle}: the survivors differ from the reference: regularised evolution "
                                  "removes the *oldest* member (population[0]), not the worst")
            if got[-1] != want[-1]:
                raise CheckFailed(f"cycle {cycle}: the child is {got[-1][0].label()}, expected "
                                  f"{want[-1][0].label()}: draw the contestants with rng.choice(len(population), "
                                  "size=tournament, replace=False), take the lowest score, then nas.mutate(parent, "
                                  "space, rng); and append (child, evaluate(child))")
            pop_a, pop_b = got, want
        return "8 cycles match the reference exactly (tournament, mutation, the oldest removed)"

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def _fake(a: nas.Arch) -> tuple[float, float]:
    return _score(a), 1.0 / (a.n_layers * a.d_model) + 0.01 * a.n_kv_heads


def check_5(run_study) -> None:
    """Exercise 5: an Optuna two-objective NSGA-II study over the space, reproducible per seed."""
    import optuna

    def tests():
        calls = []

        def evaluate(a):
            calls.append(a)
            return _fake(a)

        study = run_study(evaluate, SMALL, 16, 0)
        if not isinstance(study, optuna.Study):
            raise CheckFailed(f"run_study must return the optuna.Study, got {type(study).__name__}")
        if [d.name for d in study.directions] != ["MINIMIZE", "MINIMIZE"]:
            raise CheckFailed(f"the study's directions are {[d.name for d in study.directions]}: two objectives, "
                              "both minimised")
        if not isinstance(study.sampler, optuna.samplers.NSGAIISampler):
            raise CheckFailed(f"use optuna.samplers.NSGAIISampler, got {type(study.sampler).__name__}")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) != 16 or len(calls) != 16:
            raise CheckFailed(f"{len(done)} complete trials and {len(calls)} evaluations for n_trials=16")
        members = set(SMALL.members())
        for t, a in zip(done, calls):
            if a not in members:
                raise CheckFailed(f"trial {t.number} evaluated {a}, not a member: repair invalid draws "
                                  "(MLA or KV heads not dividing the heads -> n_kv_heads = n_heads)")
            if tuple(t.values) != _fake(a):
                raise CheckFailed(f"trial {t.number}'s values {t.values} are not evaluate(arch) = {_fake(a)}")
            if set(t.params) != set(SMALL.choices()):
                raise CheckFailed(f"trial {t.number} suggested {sorted(t.params)}; suggest every field of "
                                  f"space.choices(): {sorted(SMALL.choices())}")
        again = run_study(_fake, SMALL, 16, 0)
        if [t.params for t in again.trials] != [t.params for t in study.trials]:
            raise CheckFailed("the same seed gave different trials: pass `seed` to the sampler")
        front = study.best_trials
        return f"16 trials, two minimised objectives, reproducible; {len(front)} trials on the found front"

    run_check(5, tests)
