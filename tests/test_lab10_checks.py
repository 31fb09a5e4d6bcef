"""Lab 10's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest

from utils import bpe
from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab10
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_10_tokenization.ipynb", {"bpe": bpe})
SOLUTION_SOURCE = (REPO_ROOT / "solutions" / "lab_10_tokenization.ipynb").read_text()


def test_solution_passes_every_check(capsys):
    lab10.check_1(SOL["count_pairs"])
    lab10.check_2(SOL["merge"])
    lab10.check_3(SOL["train"])
    lab10.check_4(SOL["decode"])
    lab10.check_5(SOL["encode"])
    lab10.check_6(SOL["bytes_per_token"])
    lab10.check_7(SOL["flops_per_byte"])
    assert capsys.readouterr().out.count("✅") == 7


def _rejects(check, fn, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(fn)
    return str(e.value)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_unweighted_and_non_overlapping_counts():
    def unweighted(words):
        out = {}
        for w in words:
            for p in zip(w, w[1:]):
                out[p] = out.get(p, 0) + 1
        return out

    def non_overlapping(words):
        out = {}
        for w, f in words.items():
            i = 0
            while i + 1 < len(w):
                out[(w[i], w[i + 1])] = out.get((w[i], w[i + 1]), 0) + f
                i += 2 if w[i] == w[i + 1] else 1
        return out

    assert "should count" in _rejects(lab10.check_1, unweighted, match="Exercise 1")
    assert "(5, 5)" in _rejects(lab10.check_1, non_overlapping)


# ---------------------------------------------------------------- exercise 2
def test_check_2_rejects_overlapping_and_first_only():
    def overlapping(ids, pair, new):
        out = list(ids)
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                out[i] = new
        return [t for i, t in enumerate(out) if not (i > 0 and (ids[i - 1], ids[i]) == pair)]

    def first_only(ids, pair, new):
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == tuple(pair):
                return ids[:i] + [new] + ids[i + 2:]
        return ids

    _rejects(lab10.check_2, overlapping, match="merge")
    assert "[256, 3, 256]" in _rejects(lab10.check_2, first_only)


# ---------------------------------------------------------------- exercise 3
def test_check_3_rejects_wrong_ties_characters_and_no_pretokenization():
    def largest_tie(text, vocab_size):
        return _train(text, vocab_size, key=lambda pairs, p: (pairs[p], p))

    def chars(text, vocab_size):
        return _train(text, vocab_size, encode=lambda s: tuple(min(ord(c), 255) for c in s))

    def no_pretok(text, vocab_size):
        return _train(text, vocab_size, split=lambda t: [t])

    assert "merge #" in _rejects(lab10.check_3, largest_tie, match="tie")
    _rejects(lab10.check_3, chars, match="accented")
    _rejects(lab10.check_3, no_pretok)


def _train(text, vocab_size, key=None, encode=None, split=None):
    """A configurable (possibly wrong) trainer built from the solution's pieces."""
    key = key or (lambda pairs, p: (pairs[p], tuple(-x for x in p)))
    encode = encode or (lambda s: tuple(s.encode("utf-8")))
    split = split or bpe.pretokenize
    words: dict = {}
    for piece in split(text):
        words[encode(piece)] = words.get(encode(piece), 0) + 1
    merges = []
    while 256 + len(merges) < vocab_size:
        pairs = SOL["count_pairs"](words)
        if not pairs:
            break
        best = max(pairs, key=lambda p: key(pairs, p))
        new: dict = {}
        for w, f in words.items():
            k = tuple(SOL["merge"](list(w), best, 256 + len(merges)))
            new[k] = new.get(k, 0) + f
        words = new
        merges.append(best)
    return merges


def test_check_3_rejects_the_textbook_recount_for_speed():
    """Right merges, but every word recounted after every merge: too slow (the lab asks for the incremental one)."""
    msg = _rejects(lab10.check_3, lambda text, v: _train(text, v), match="right merges, but")
    assert "update only the words" in msg
    assert SOL["train_textbook"](lab10.KNOWN_CORPUS, 300) == lab10.KNOWN_MERGES     # the lab's given loop is right


def _incremental(text, vocab_size, subtract=True, index_new=True):
    """An incremental trainer with switchable bugs (forgets to subtract old pairs / to index the new ones)."""
    counts: dict = {}
    for p in bpe.pretokenize(text):
        counts[p] = counts.get(p, 0) + 1
    words, freqs = [list(p.encode()) for p in counts], list(counts.values())
    pairs, where = {}, {}
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pairs[p] = pairs.get(p, 0) + f
            where.setdefault(p, set()).add(i)
    merges = []
    while 256 + len(merges) < vocab_size:
        live = {p: c for p, c in pairs.items() if c > 0}
        if not live:
            break
        best = min(live, key=lambda p: (-live[p], p))
        new = 256 + len(merges)
        for i in where.pop(best, set()):
            w, f = words[i], freqs[i]
            if subtract:
                for p in zip(w, w[1:]):
                    pairs[p] -= f
            words[i] = w = SOL["merge"](w, best, new)
            for p in zip(w, w[1:]):
                pairs[p] = pairs.get(p, 0) + f
                if index_new:
                    where.setdefault(p, set()).add(i)
        pairs.pop(best, None)
        merges.append(best)
    return merges


def test_check_3_accepts_a_max_based_incremental_trainer_and_rejects_its_bugs():
    lab10.check_3(_incremental)                                                   # max over counts: fast enough
    assert "should be" in _rejects(lab10.check_3, lambda t, v: _incremental(t, v, subtract=False))
    _rejects(lab10.check_3, lambda t, v: _incremental(t, v, index_new=False))


def test_solution_answers_every_predict_first_question():
    text = SOLUTION_SOURCE
    assert text.count("Predict first") == text.count("<b>Answer") - 1 == 3       # + one block of discussion answers
    assert "<b>Answers</b>" in text


def test_check_3_rejects_a_trainer_that_does_not_stop():
    def never_stops(text, vocab_size):
        return _train(text, vocab_size) + [(0, 0)] * 3

    assert "stop when no pair is left" in _rejects(lab10.check_3, never_stops)


# ---------------------------------------------------------------- exercise 4
def test_check_4_rejects_per_token_decoding_and_latin1():
    def per_token(ids, merges):
        vocab = bpe.vocab_from_merges(merges)
        return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)

    def latin1(ids, merges):
        return b"".join(bpe.vocab_from_merges(merges)[i] for i in ids).decode("latin-1")

    _rejects(lab10.check_4, per_token, match="decode")
    _rejects(lab10.check_4, latin1)


# ---------------------------------------------------------------- exercise 5
def test_check_5_rejects_greedy_longest_match_and_reverse_priority():
    def longest_match(text, merges):
        vocab = {b: i for i, b in enumerate(bpe.vocab_from_merges(merges))}
        out = []
        for piece in bpe.pretokenize(text):
            data = piece.encode()
            i = 0
            while i < len(data):
                j = max(k for k in range(i + 1, len(data) + 1) if data[i:k] in vocab)
                out.append(vocab[data[i:j]])
                i = j
        return out

    def latest_first(text, merges):
        ranks = {p: i for i, p in enumerate(merges)}
        out = []
        for piece in bpe.pretokenize(text):
            ids = list(piece.encode())
            while True:
                cands = [p for p in zip(ids, ids[1:]) if p in ranks]
                if not cands:
                    break
                p = max(cands, key=ranks.get)
                ids = SOL["merge"](ids, p, 256 + ranks[p])
            out.extend(ids)
        return out

    assert "first difference" in _rejects(lab10.check_5, longest_match, match="encoding")
    _rejects(lab10.check_5, latest_first)


# ---------------------------------------------------------------- exercises 6-7
def test_check_6_rejects_characters_per_token():
    _rejects(lab10.check_6, lambda text, enc: len(text) / len(enc(text)), match="bytes per token")


def test_check_7_rejects_missing_head_and_per_token():
    _rejects(lab10.check_7, lambda v, b, n, d: 2 * n / b, match="FLOPs/byte")
    _rejects(lab10.check_7, lambda v, b, n, d: 2 * n + 2 * v * d)


def test_stub_reports_not_done():
    def stub(words):
        raise NotImplementedError("Exercise 1: replace this line with your code")

    with pytest.raises(ExerciseNotDone, match="Exercise 1 is not done yet"):
        lab10.check_1(stub)


def test_crash_inside_learner_code_is_a_one_line_verdict():
    with pytest.raises(CheckFailed, match="your code raised ZeroDivisionError"):
        lab10.check_7(lambda *a: 1 / 0)
