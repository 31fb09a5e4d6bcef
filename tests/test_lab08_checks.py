"""Lab 08's checks accept the worked solution and the library, and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utils import distill
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab08
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_08_distillation.ipynb", {"torch": torch, "F": F})


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    lab08.check_1(SOL["softmax_t"])
    lab08.check_2(SOL["forward_kl"])
    lab08.check_3(SOL["reverse_kl"])
    lab08.check_4(SOL["teacher_topk"], SOL["forward_kl_topk"])
    lab08.check_5(SOL["sequence_kd_step"])
    assert capsys.readouterr().out.count("✅") == 5


def test_library_passes_the_checks():
    lab08.check_1(lambda x, t: distill.log_softmax_t(x, t).exp())
    lab08.check_2(distill.forward_kl)
    lab08.check_3(distill.reverse_kl)

    def topk(x, k):
        top = distill.topk_logits(x, k)
        return top.values, top.indices

    lab08.check_4(topk, lambda s, v, i, t: distill.forward_kl_topk(s, distill.TopK(v, i), t))


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError("write your code")

    for check in (lab08.check_1, lab08.check_2, lab08.check_3, lab08.check_5):
        with pytest.raises(ExerciseNotDone):
            check(stub)
    with pytest.raises(ExerciseNotDone):
        lab08.check_4(stub, stub)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_multiplying_by_t_unstable_and_no_validation():
    _rejects(lab08.check_1, lambda x, t: F.softmax(x * t, -1), match="multiplies the logits by T")
    _rejects(lab08.check_1, lambda x, t: F.softmax(x, -1), match="differs from softmax")

    def unstable(x, t):
        if t <= 0:
            raise ValueError("T")
        e = (x / t).exp()
        return e / e.sum(-1, keepdim=True)

    _rejects(lab08.check_1, unstable, match="inf/nan")
    _rejects(lab08.check_1, lambda x, t: F.softmax(x / t, -1), match="ValueError")


# ---------------------------------------------------------------- exercises 2 and 3
def _kl(lp_a, lp_b):
    return (lp_a.exp() * (lp_a - lp_b)).sum(-1).mean()


def _check_vocab(s, te):
    if s.shape[-1] != te.shape[-1]:
        raise ValueError("vocab")


def test_check_2_rejects_missing_t_squared_reverse_direction_sum_and_detached():
    def no_t2(s, te, t):
        _check_vocab(s, te)
        return _kl(F.log_softmax(te / t, -1), F.log_softmax(s / t, -1))

    msg = _rejects(lab08.check_2, no_t2, match="T²")
    assert "too small" in msg
    _rejects(lab08.check_2, distill.reverse_kl, match="reverse")

    def summed(s, te, t):
        _check_vocab(s, te)
        lp, lq = F.log_softmax(te / t, -1), F.log_softmax(s / t, -1)
        return (lp.exp() * (lp - lq)).sum(-1).mean(0).sum() * t * t

    _rejects(lab08.check_2, summed, match="sums over positions")
    _rejects(lab08.check_2, lambda s, te, t: distill.forward_kl(s, te, t).item(), match="keeps the graph")

    def no_vocab_check(s, te, t):
        n = min(s.shape[-1], te.shape[-1])
        return distill.forward_kl(s[..., :n], te[..., :n], t)

    _rejects(lab08.check_2, no_vocab_check, match="ValueError")


def test_check_3_rejects_forward_kl():
    _rejects(lab08.check_3, distill.forward_kl, match="forward")


# ---------------------------------------------------------------- exercise 4
def _topk(x, k):
    if not 1 <= k <= x.shape[-1]:
        raise ValueError("k")
    v, i = x.topk(k, -1)
    return v.half(), i.int()


def _fkl_topk(s, v, i, t):
    lp = F.log_softmax(v.float() / t, -1)
    lq = F.log_softmax(s / t, -1).gather(-1, i.long())
    return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t


def test_check_4_accepts_reference_and_rejects_typical_mistakes():
    lab08.check_4(_topk, _fkl_topk)

    def probs_not_logits(x, k):
        v, i = _topk(x, k)
        return F.softmax(x, -1).gather(-1, i.long()), i

    _rejects(lab08.check_4, probs_not_logits, _fkl_topk, match="store logits")

    # the teacher's full-vocabulary probabilities read at the top k (not summing to one): recover them from the
    # full logits the check used, through a closure over the last logits seen by teacher_topk
    seen = {}

    def topk_remember(x, k):
        seen["x"] = x
        return _topk(x, k)

    def not_renormalised(s, v, i, t):
        lp = F.log_softmax(seen["x"] / t, -1).gather(-1, i.long())
        lq = F.log_softmax(s / t, -1).gather(-1, i.long())
        return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t

    _rejects(lab08.check_4, topk_remember, not_renormalised, match="renormalise the teacher")

    def student_renormalised(s, v, i, t):
        lp = F.log_softmax(v.float() / t, -1)
        lq = F.log_softmax(s.gather(-1, i.long()) / t, -1)
        return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t

    _rejects(lab08.check_4, _topk, student_renormalised, match="student over the teacher's top k")

    def no_k_check(x, k):
        v, i = x.topk(min(max(k, 1), x.shape[-1]), -1)
        return v, i

    _rejects(lab08.check_4, no_k_check, _fkl_topk, match="ValueError")


# ---------------------------------------------------------------- exercise 5
def _greedy(teacher, prompt, n):
    return lab08.greedy_reference(teacher, prompt, n)


def _step(student, ids, p, lr, with_prompt=False, shift=1):
    start = 0 if with_prompt else p - 1
    logits = student(ids[:, :-1]).logits[:, start:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, start + 1:].reshape(-1))
    opt = torch.optim.SGD(student.parameters(), lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_check_5_rejects_prompt_in_loss_sampling_no_step_and_training_the_teacher():
    def with_prompt(student, teacher, prompt, n, lr):
        ids = _greedy(teacher, prompt, n)
        return ids, _step(student, ids, prompt.shape[1], lr, with_prompt=True)

    _rejects(lab08.check_5, with_prompt, match="prompt")

    def sampled(student, teacher, prompt, n, lr):
        g = torch.Generator().manual_seed(0)
        ids = prompt
        with torch.no_grad():
            for _ in range(n):
                p = F.softmax(teacher(ids).logits[:, -1], -1)
                ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
        return ids, _step(student, ids, prompt.shape[1], lr)

    _rejects(lab08.check_5, sampled, match="greedy")

    def student_writes(student, teacher, prompt, n, lr):
        ids = _greedy(student, prompt, n)
        return ids, _step(student, ids, prompt.shape[1], lr)

    _rejects(lab08.check_5, student_writes, match="greedy")

    def no_step(student, teacher, prompt, n, lr):
        ids = _greedy(teacher, prompt, n)
        p = prompt.shape[1]
        with torch.no_grad():
            logits = student(ids[:, :-1]).logits[:, p - 1:]
        return ids, float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, p:].reshape(-1)))

    _rejects(lab08.check_5, no_step, match="SGD step")

    def trains_teacher_too(student, teacher, prompt, n, lr):
        ids = _greedy(teacher, prompt, n)
        loss = _step(student, ids, prompt.shape[1], lr)
        with torch.no_grad():
            for p in teacher.parameters():
                p.mul_(1.001)
        return ids, loss

    _rejects(lab08.check_5, trains_teacher_too, match="teacher's weights changed")
