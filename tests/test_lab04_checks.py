"""Lab 04's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab04
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_04_faster_decoding.ipynb", {"torch": torch, "F": F})


def _rejects(check, fn, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(fn)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    lab04.check_1(SOL["update_cache"])
    lab04.check_2(SOL["verify_greedy"])
    lab04.check_3(SOL["speculative_accept"])
    lab04.check_4(SOL["mtp_loss"])
    lab04.check_5(SOL["predicted_speedup"])
    assert capsys.readouterr().out.count("✅") == 5


def test_library_rule_passes_check_3():
    from utils.decoder import accept_reject

    lab04.check_3(accept_reject)


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError("write your code")

    with pytest.raises(ExerciseNotDone):
        lab04.check_1(stub)


def test_check_1_rejects_a_copy_an_off_by_one_write_and_a_strict_mask():
    def copy(cache, new, pos):
        cache = cache.clone()
        cache[:, pos:pos + new.shape[1]] = new
        return torch.arange(cache.shape[1])[None] <= (pos + torch.arange(new.shape[1]))[:, None]

    def off_by_one(cache, new, pos):
        return SOL["update_cache"](cache, new, pos + 1) if pos + 1 + new.shape[1] <= cache.shape[1] else \
            SOL["update_cache"](cache, new, pos)

    def strict(cache, new, pos):
        SOL["update_cache"](cache, new, pos)
        return torch.arange(cache.shape[1])[None] < (pos + torch.arange(new.shape[1]))[:, None]

    assert "in place" in _rejects(lab04.check_1, copy)
    assert "wrong values" in _rejects(lab04.check_1, off_by_one)
    assert "mask row" in _rejects(lab04.check_1, strict)


def test_check_2_rejects_dropping_the_bonus_token_and_shifted_rows():
    def no_bonus(draft, logits):
        out = SOL["verify_greedy"](draft, logits)
        return out[:-1] if len(out) == draft.numel() + 1 else out

    def shifted(draft, logits):            # compares draft j with row j+1
        g = logits.argmax(-1).tolist()
        out = []
        for j, d in enumerate(draft.tolist()):
            if d != g[j + 1]:
                break
            out.append(d)
        return out + [g[len(out)]]

    def tensor_out(draft, logits):
        return torch.tensor(SOL["verify_greedy"](draft, logits))

    assert "bonus" in _rejects(lab04.check_2, no_bonus)
    _rejects(lab04.check_2, shifted)
    assert "list of Python ints" in _rejects(lab04.check_2, tensor_out)


def test_check_3_rejects_the_inverted_rule_resampling_from_p_and_a_missing_bonus():
    def inverted(p, q, draft, g=None):
        k, out = draft.numel(), []
        for j in range(k):
            x = int(draft[j])
            if torch.rand((), generator=g) < min(1.0, float(q[j, x] / p[j, x])):
                out.append(x)
                continue
            resid = (p[j] - q[j]).clamp(min=0)
            return out + [int(torch.multinomial(resid / resid.sum(), 1, generator=g))]
        return out + [int(torch.multinomial(p[k], 1, generator=g))]

    def resample_from_p(p, q, draft, g=None):
        k, out = draft.numel(), []
        for j in range(k):
            x = int(draft[j])
            if torch.rand((), generator=g) < min(1.0, float(p[j, x] / q[j, x])):
                out.append(x)
                continue
            return out + [int(torch.multinomial(p[j], 1, generator=g))]
        return out + [int(torch.multinomial(p[k], 1, generator=g))]

    def no_bonus(p, q, draft, g=None):
        out = SOL["speculative_accept"](p, q, draft, g)
        return out[: draft.numel()]

    def bonus_from_q(p, q, draft, g=None):
        out = SOL["speculative_accept"](p, q, draft, g)
        if len(out) == draft.numel() + 1:
            out[-1] = int(torch.multinomial(q[-1], 1, generator=g))
        return out

    assert "not the target" in _rejects(lab04.check_3, inverted)
    assert "not the target" in _rejects(lab04.check_3, resample_from_p)
    assert "bonus" in _rejects(lab04.check_3, no_bonus)
    assert "bonus token" in _rejects(lab04.check_3, bonus_from_q)


def test_check_4_rejects_next_token_target_misaligned_inputs_and_a_detached_loss():
    def next_token(mtp, hidden, tokens):      # scores t+1 instead of t+2
        logits = mtp(hidden[:, :-1], tokens[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

    def misaligned(mtp, hidden, tokens):      # feeds token i instead of i+1
        logits = mtp(hidden[:, :-2], tokens[:, :-2])
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 2:].flatten())

    def detached(mtp, hidden, tokens):
        with torch.no_grad():
            return SOL["mtp_loss"](mtp, hidden, tokens)

    assert "expected" in _rejects(lab04.check_4, next_token)
    assert "expected" in _rejects(lab04.check_4, misaligned)
    assert "backpropagated" in _rejects(lab04.check_4, detached)


def test_check_5_rejects_the_formula_without_the_bonus_token_and_ignoring_the_cost():
    def no_bonus(alpha, k, cost):
        return (k if alpha == 1 else (1 - alpha ** k) / (1 - alpha)) / cost

    def no_cost(alpha, k, cost):
        return SOL["predicted_speedup"](alpha, k, 1.0)

    _rejects(lab04.check_5, no_bonus)
    _rejects(lab04.check_5, no_cost)
