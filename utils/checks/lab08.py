"""Hidden tests of lab 08 (distillation). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..checking import CheckFailed, expect_tensor, expect_value_error, run_check


def _logits(seed: int, shape=(2, 6, 30), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _kl(lp_from: torch.Tensor, lp_to: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(a‖b) with log-probabilities a = lp_from, b = lp_to."""
    return (lp_from.exp() * (lp_from - lp_to)).sum(-1).mean()


def _num(what: str, got) -> float:
    if torch.is_tensor(got):
        if got.numel() != 1:
            raise CheckFailed(f"{what}: expected one number (the mean over tokens), got shape {tuple(got.shape)}")
        return float(got)
    if isinstance(got, (int, float)):
        return float(got)
    raise CheckFailed(f"{what}: expected a number or a 0-d tensor, got {type(got).__name__}")


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: softmax at temperature T, stable, T > 0."""

    def tests():
        for seed, t in [(0, 1.0), (1, 2.0), (2, 0.5), (3, 7.0)]:
            x = _logits(seed)
            got = fn(x, t)
            expect_tensor(f"softmax_t(x, T={t})", got, shape=tuple(x.shape))
            want = F.softmax(x / t, dim=-1)
            if torch.allclose(got, F.softmax(x * t, dim=-1), atol=1e-6) and t != 1:
                raise CheckFailed(f"softmax_t(x, T={t}) multiplies the logits by T: divide them by T (T > 1 "
                                  "flattens the distribution, T < 1 sharpens it)")
            if not torch.allclose(got, want, atol=1e-6):
                raise CheckFailed(f"softmax_t(x, T={t}) differs from softmax(x / T) by up to "
                                  f"{float((got - want).abs().max()):.3g}; each row must sum to 1 over the last "
                                  "dimension (the vocabulary)")
        big = torch.tensor([[1000.0, 999.0, -1000.0]])
        got = fn(big, 1.0)
        if not torch.isfinite(got).all():
            raise CheckFailed("softmax_t([1000, 999, -1000], 1) gave inf/nan: subtract the row maximum before exp "
                              "(softmax is unchanged by a constant shift), or use torch.softmax")
        for bad in (0.0, -1.0):
            expect_value_error(f"softmax_t(x, T={bad})", lambda bad=bad: fn(_logits(0), bad))
        return "matches softmax(x / T) at T = 0.5, 1, 2, 7, survives logits of 1000, refuses T ≤ 0."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _fkl_ref(s, te, t):
    return _kl(F.log_softmax(te / t, -1), F.log_softmax(s / t, -1)) * t * t


def _rkl_ref(s, te, t):
    return _kl(F.log_softmax(s / t, -1), F.log_softmax(te / t, -1)) * t * t


def _check_kl(what: str, fn, ref, other, other_name: str) -> None:
    for seed, t in [(10, 1.0), (11, 2.0), (12, 4.0), (13, 0.7)]:
        s, te = _logits(seed), _logits(seed + 100)
        got = _num(f"{what}(s, t, T={t})", fn(s, te, t))
        want = float(ref(s, te, t))
        if abs(got - want) <= 1e-4 * max(1.0, abs(want)):
            continue
        if t != 1 and abs(got * t * t - want) <= 1e-4 * max(1.0, abs(want)):
            raise CheckFailed(f"{what} at T={t} is {got:.4g}, T² = {t * t:g} times too small: multiply by T². "
                              "Without it the gradient shrinks as 1/T² and a high temperature silently turns the "
                              "distillation term off (Hinton et al. 2015, §2)")
        if abs(got - float(other(s, te, t))) <= 1e-4 * max(1.0, abs(want)):
            raise CheckFailed(f"{what} computes {other_name} instead: check which distribution weights the log-ratio")
        per_seq = float(ref(s, te, t)) * s.shape[1]
        if abs(got - per_seq) <= 1e-3 * max(1.0, per_seq):
            raise CheckFailed(f"{what} sums over positions: return the mean over every token position")
        raise CheckFailed(f"{what}(s, t, T={t}) = {got:.5g}, expected {want:.5g}")
    s = _logits(20, scale=1.0).requires_grad_(True)
    val = fn(s, _logits(21, scale=1.0), 8.0)
    if not torch.is_tensor(val) or not val.requires_grad:
        raise CheckFailed(f"{what} must return a tensor that keeps the graph (no .item(), no torch.no_grad) so a "
                          "student can be trained on it")
    expect_value_error(f"{what} with vocabularies 30 vs 31",
                        lambda: fn(_logits(0), _logits(1, shape=(2, 6, 31)), 1.0))


def check_2(fn) -> None:
    """Exercise 2: forward KL with the T² factor."""

    def tests():
        _check_kl("forward_kl", fn, _fkl_ref, _rkl_ref, "the reverse KL(q‖p)")
        return "T²·KL(p‖q) averaged over tokens, at T = 0.7, 1, 2, 4; differentiable; vocab mismatch refused."

    run_check(2, tests)


def check_3(fn) -> None:
    """Exercise 3: reverse KL."""

    def tests():
        _check_kl("reverse_kl", fn, _rkl_ref, _fkl_ref, "the forward KL(p‖q)")
        return "T²·KL(q‖p) averaged over tokens; it weights the log-ratio by the student's own q."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def topk_kl_reference(s, values, indices, t):
    lp = F.log_softmax(values.float() / t, -1)
    lq = F.log_softmax(s / t, -1).gather(-1, indices.long())
    return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t


def check_4(teacher_topk, forward_kl_topk) -> None:
    """Exercise 4: cache the teacher's top-k logits; forward KL against the renormalised top k."""

    def tests():
        te = _logits(30)
        for k in (1, 5, 30):
            got = teacher_topk(te, k)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise CheckFailed("teacher_topk must return (values, indices)")
            val, idx = got
            expect_tensor(f"teacher_topk(x, {k}) values", val, shape=(*te.shape[:-1], k))
            expect_tensor(f"teacher_topk(x, {k}) indices", idx, shape=(*te.shape[:-1], k))
            want_val, want_idx = te.topk(k, dim=-1)
            if not torch.allclose(val.float(), want_val, atol=1e-2):
                raise CheckFailed(f"teacher_topk(x, {k}) values are not the k largest logits of each row "
                                  "(store logits, not probabilities: they can be re-softened at any T)")
            if not torch.equal(torch.gather(te, -1, idx.long()), torch.gather(te, -1, want_idx)):
                raise CheckFailed(f"teacher_topk(x, {k}) indices do not point at the k largest logits")
        for bad in (0, 31):
            expect_value_error(f"teacher_topk(x, k={bad}) with a vocabulary of 30",
                                lambda bad=bad: teacher_topk(te, bad))
        for seed, k, t in [(31, 30, 1.0), (32, 30, 2.0), (33, 8, 1.0), (34, 4, 3.0)]:
            s, te = _logits(seed), _logits(seed + 100)
            val, idx = teacher_topk(te, k)
            got = _num(f"forward_kl_topk(k={k}, T={t})", forward_kl_topk(s, val, idx, t))
            want = float(topk_kl_reference(s, val, idx, t))
            if abs(got - want) <= 1e-3 * max(1.0, abs(want)):
                continue
            lp_full = F.log_softmax(te / t, -1).gather(-1, idx.long())
            lq = F.log_softmax(s / t, -1).gather(-1, idx.long())
            not_renorm = float((lp_full.exp() * (lp_full - lq)).sum(-1).mean() * t * t)
            if abs(got - not_renorm) <= 1e-3 * max(1.0, abs(want)):
                raise CheckFailed("forward_kl_topk uses the teacher's full-vocabulary probabilities at the top k: "
                                  "they do not sum to one — renormalise the teacher over its k logits (softmax of "
                                  "the k values / T)")
            lq_renorm = F.log_softmax(s.gather(-1, idx.long()) / t, -1)
            lp = F.log_softmax(val.float() / t, -1)
            both = float((lp.exp() * (lp - lq_renorm)).sum(-1).mean() * t * t)
            if abs(got - both) <= 1e-3 * max(1.0, abs(want)):
                raise CheckFailed("forward_kl_topk renormalises the student over the teacher's top k too: the "
                                  "student's probability must be its full softmax, so mass it puts outside the top k "
                                  "still costs")
            raise CheckFailed(f"forward_kl_topk(k={k}, T={t}) = {got:.5g}, expected {want:.5g}")
        s, te = _logits(40), _logits(41)
        val, idx = teacher_topk(te, 30)
        full = float(_fkl_ref(s, te, 2.0))
        got = _num("forward_kl_topk(k = vocabulary)", forward_kl_topk(s, val, idx, 2.0))
        if abs(got - full) > 2e-3 * max(1.0, full):
            raise CheckFailed(f"with k = the whole vocabulary the top-k KL ({got:.5g}) must equal the full forward "
                              f"KL ({full:.5g})")
        return ("top-k logits cached, teacher renormalised over them, the student's full softmax; k = V gives the "
                "full KL.")

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def tiny_pair(seed: int = 0, vocab: int = 41):
    """A (teacher, student) pair of tiny random Llamas with sharp logits, sharing a vocabulary."""
    from ..model import sharp_tiny_llama

    teacher = sharp_tiny_llama(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, head_dim=8, std=0.35,
                               seed=seed + 1)
    student = sharp_tiny_llama(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, head_dim=8, std=0.3,
                               seed=seed + 2)
    return teacher, student


def greedy_reference(teacher, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = teacher(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def seq_kd_reference(student, teacher, prompt, new_tokens, lr):
    ids = greedy_reference(teacher, prompt, new_tokens)
    p = prompt.shape[1]
    logits = student(ids[:, :-1]).logits[:, p - 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, p:].reshape(-1))
    opt = torch.optim.SGD(student.parameters(), lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return ids, loss.item()


def check_5(fn) -> None:
    """Exercise 5: one step of sequence-level KD (the teacher writes, the student imitates its text)."""

    def tests():
        for seed, (b, p, n) in [(0, (2, 5, 6)), (1, (1, 3, 9))]:
            teacher, student = tiny_pair(seed)
            prompt = torch.randint(0, 41, (b, p), generator=torch.Generator().manual_seed(seed))
            ref_student, orig = copy.deepcopy(student), copy.deepcopy(student)
            want_ids, want_loss = seq_kd_reference(ref_student, teacher, prompt, n, lr=0.05)
            t_before = copy.deepcopy(teacher.state_dict())
            got = fn(student, teacher, prompt, n, 0.05)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise CheckFailed("sequence_kd_step must return (ids, loss)")
            ids, loss = got
            expect_tensor("ids", ids, shape=(b, p + n))
            if not torch.equal(ids[:, :p], prompt):
                raise CheckFailed("the returned ids must start with the prompt")
            if not torch.equal(ids, want_ids):
                raise CheckFailed("the continuation is not the teacher's greedy one (argmax at each step, no "
                                  "sampling; the teacher writes, not the student)")
            loss = _num("loss", loss)
            if abs(loss - want_loss) > 1e-4 * max(1.0, want_loss):
                with torch.no_grad():
                    lg = orig(want_ids[:, :-1]).logits
                with_prompt = float(F.cross_entropy(lg.reshape(-1, 41), want_ids[:, 1:].reshape(-1)))
                if abs(loss - with_prompt) <= 1e-4 * max(1.0, with_prompt):
                    raise CheckFailed("the loss also scores the prompt's tokens: in sequence-level KD the student "
                                      "learns the teacher's continuation only (positions p … p+n−1)")
                raise CheckFailed(f"loss {loss:.5g} ≠ {want_loss:.5g}: it must be the student's next-token cross-"
                                  "entropy on the generated tokens only (logits at positions p−1 … p+n−2 predict "
                                  "tokens p … p+n−1), computed before the step; the prompt is given, not learned")
            for k, v in teacher.state_dict().items():
                if not torch.equal(v, t_before[k]):
                    raise CheckFailed("the teacher's weights changed: only the student is trained")
            for (name, a), b2 in zip(student.named_parameters(), ref_student.parameters()):
                if not torch.allclose(a, b2, atol=1e-5):
                    raise CheckFailed(f"after the step the student's {name} differs from one SGD step at lr=0.05 "
                                      "on that loss (zero the gradients, backward, step once)")
        return "the teacher's greedy text, cross-entropy on the generated tokens only, one SGD step on the student."

    run_check(5, tests)
