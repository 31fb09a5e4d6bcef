"""Hidden tests of lab 10 (tokenization). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import functools
import time

from .. import bpe
from ..checking import CheckFailed, expect_close, run_check

# Words separated by newlines (so no leading spaces): the expected merges are worked out by hand in
# tests/test_tokenization.py — ab (11), abc (4), cd (3), bcd (2).
KNOWN_CORPUS = "ab\n" * 7 + "abc\n" * 4 + "bcd\n" * 2 + "cd\n"
KNOWN_MERGES = [(97, 98), (256, 99), (99, 100), (98, 258)]
UNICODE_TEXT = "naïve café, naïve café! Ἐν ἀρχῇ ἦν ὁ λόγος. 東京 東京 🙂🙂 x = 1_000\n\tif x:\n        return x"


@functools.cache
def _shakespeare(n: int = 6000) -> str:
    from .. import corpora

    train, _ = corpora.shakespeare_split("modern")
    start = train.index("ACT I")
    return train[start:start + n]


def _show(merges, vocab_merges=None) -> str:
    vocab = bpe.vocab_from_merges(vocab_merges if vocab_merges is not None else merges)
    return " ".join(repr(vocab[a] + vocab[b])[1:] for a, b in merges)


def _as_pairs(got, what: str) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in got]
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: expected a list of (a, b) id pairs, got {type(got).__name__}: {str(got)[:80]}") \
            from None


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: weighted counts of adjacent pairs."""

    def tests():
        cases = [
            ({(1, 2, 3): 2, (2, 3): 1}, {(1, 2): 2, (2, 3): 3}),
            ({(5, 5, 5): 3}, {(5, 5): 6}),
            ({(7,): 4, (8, 9): 1}, {(8, 9): 1}),
            ({}, {}),
            ({(104, 105, 104, 105): 10, (105, 104): 1}, {(104, 105): 20, (105, 104): 11}),
        ]
        for words, want in cases:
            got = fn(dict(words))
            if not isinstance(got, dict):
                raise CheckFailed(f"expected a dict {{(a, b): count}}, got {type(got).__name__}")
            got = {k: v for k, v in got.items() if v}
            for pair in sorted(set(want) | set(got)):
                if got.get(pair, 0) != want.get(pair, 0):
                    raise CheckFailed(f"for words {words}: pair {pair} should count {want.get(pair, 0)}, "
                                      f"got {got.get(pair, 0)}")
        return "pairs counted with their word frequencies, overlaps included."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(fn) -> None:
    """Exercise 2: replace non-overlapping occurrences of a pair, left to right."""

    def tests():
        cases = [
            ([1, 2, 3, 1, 2], (1, 2), 256, [256, 3, 256]),
            ([5, 5, 5], (5, 5), 256, [256, 5]),
            ([5, 5, 5, 5], (5, 5), 300, [300, 300]),
            ([2, 1, 2, 1], (1, 2), 256, [2, 256, 1]),
            ([1, 2], (2, 1), 256, [1, 2]),
            ([], (1, 2), 256, []),
            ([9, 1, 2], (1, 2), 257, [9, 257]),
        ]
        for ids, pair, new, want in cases:
            got = fn(list(ids), pair, new)
            if list(got) != want:
                raise CheckFailed(f"merge({ids}, {pair}, {new}) should be {want}, got {list(got)}")
        return "merges are left to right and never overlap."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
SPEED_CHARS, SPEED_VOCAB = 100_000, 556   # the timed case: 300 merges on 100k characters of Shakespeare
SPEED_LIMIT = 5.0                         # at most this many times the course's incremental trainer (+ 0.5 s)


def _time(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def check_3(fn) -> None:
    """Exercise 3: the incremental trainer, against the course trainer (ties to the smallest pair) and its speed."""

    def tests():
        got = _as_pairs(fn(KNOWN_CORPUS, 300), "train(corpus, 300)")
        if got != KNOWN_MERGES:
            raise CheckFailed(f"on the corpus ab×7, abc×4, bcd×2, cd×1 (one word per line) the merges should be "
                              f"{KNOWN_MERGES} ({_show(KNOWN_MERGES)}), got {got[:8]} — stop when no pair is left")
        cases = [("a tie (ab×2, cd×2)", "ab\ncd\nab\ncd\n", 258), ("accented and CJK text", UNICODE_TEXT, 300),
                 ("overlapping pairs (aaaa, aaa)", "aaaa aaa aaaa\naaa", 262),
                 ("6,000 characters of Shakespeare", _shakespeare(), 320)]
        for name, text, v in cases:
            want = bpe.train_bpe(text, v, tie_break="bytes")
            got = _as_pairs(fn(text, v), f"train({name})")
            _same_merges(name, v, got, want)
        text = _shakespeare(SPEED_CHARS)
        t_ref, want = min((_time(bpe.train_bpe, text, SPEED_VOCAB) for _ in range(2)), key=lambda r: r[0])
        t_fn, got = _time(fn, text, SPEED_VOCAB)
        _same_merges(f"{SPEED_CHARS:,} characters of Shakespeare", SPEED_VOCAB, _as_pairs(got, "train"), want)
        if t_fn > SPEED_LIMIT * t_ref + 0.5:
            raise CheckFailed(f"right merges, but {SPEED_VOCAB - 256} merges on {SPEED_CHARS:,} characters took "
                              f"{t_fn:.1f} s, {t_fn / t_ref:.0f}x the course's incremental trainer ({t_ref:.2f} s; "
                              f"allowed {SPEED_LIMIT:g}x + 0.5 s): after a merge, update only the words that "
                              "contained the pair instead of recounting every word")
        return (f"your merges equal the reference trainer's, ties included, and it runs within {SPEED_LIMIT:g}x "
                "of the course's incremental trainer.")

    run_check(3, tests)


def _same_merges(name: str, v: int, got: list, want: list) -> None:
    if len(got) != len(want):
        raise CheckFailed(f"{name}, vocab_size {v}: expected {len(want)} merges, got {len(got)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            raise CheckFailed(f"{name}: merge #{i} should be {w} = {_show([w], want)}, got {g} "
                              f"(check bytes vs characters, word frequencies, pre-tokenization, ties, and that "
                              f"the counts of the pairs a merge removes and creates are updated)")


@functools.cache
def _merges() -> tuple[tuple[int, int], ...]:
    return tuple(bpe.train_bpe(_shakespeare(20000) + UNICODE_TEXT * 3, 700))


# --------------------------------------------------------------------------- exercise 4
def check_4(fn) -> None:
    """Exercise 4: decode ids to text, joining bytes before decoding UTF-8."""

    def tests():
        merges = list(_merges())
        ref = bpe.BPETokenizer(merges)
        cases = [ref.encode(t) for t in ("To be, or not to be", UNICODE_TEXT, _shakespeare(300))]
        cases += [list("é".encode()), [240, 159], [256, 257, 300, 699]]
        for ids in cases:
            want = ref.decode(ids)
            got = fn(list(ids), merges)
            if got != want:
                raise CheckFailed(f"decode({ids[:8]}{'…' if len(ids) > 8 else ''}) should be {want[:40]!r}, "
                                  f"got {str(got)[:40]!r}")
        return "bytes joined first, then decoded once."

    run_check(4, tests)


def _tok(ref: bpe.BPETokenizer, ids: list, i: int) -> str:
    if i >= len(ids):
        return "the end"
    t = ids[i]
    return f"{t} ({ref.token_str(t)!r})" if isinstance(t, int) and 0 <= t < len(ref.vocab) else repr(t)


# --------------------------------------------------------------------------- exercise 5
def check_5(fn) -> None:
    """Exercise 5: encode with learned merges (earliest-learned pair first, inside pre-tokenized pieces)."""

    def tests():
        merges = list(_merges())
        ref = bpe.BPETokenizer(merges)
        for text in ("To be, or not to be", " the theatre's thee", UNICODE_TEXT, _shakespeare(2000), ""):
            want = ref.encode(text)
            got = list(fn(text, merges))
            if got != want:
                i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                raise CheckFailed(f"encoding {text[:30]!r}: {len(got)} tokens instead of {len(want)}; first "
                                  f"difference at token {i}: expected {_tok(ref, want, i)}, got {_tok(ref, got, i)}")
        return "same ids as the reference encoder, on English, accents, CJK and emoji."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def check_6(fn) -> None:
    """Exercise 6: UTF-8 bytes per token."""

    def tests():
        def halves(t: str) -> list[int]:
            return list(range(max(1, len(t) // 2)))

        for text in ("To be, or not to be", "naïve café 東京 🙂", "x" * 100):
            want = len(text.encode("utf-8")) / len(halves(text))
            expect_close(f"bytes per token of {text[:20]!r}", fn(text, halves), want, rtol=1e-12)
        return "bytes (not characters) per token."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def check_7(fn) -> None:
    """Exercise 7: forward FLOPs per byte of text for a vocabulary size."""

    def tests():
        for v, b, n, d in [(256, 1.0, 787_584, 128), (4096, 2.98, 787_584, 128), (49152, 3.17, 106_203_456, 576),
                           (16384, 3.42, 6.3e6, 256)]:
            want = (2 * n + 2 * v * d) / b
            expect_close(f"FLOPs/byte at V={v}, {b} bytes/token, body {n:.3g}, d={d}", fn(v, b, n, d), want,
                         rtol=1e-9)
        return "bigger V: fewer tokens per byte, but a dearer output head."

    run_check(7, tests)
