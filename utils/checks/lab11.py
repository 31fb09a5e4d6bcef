"""Hidden tests of lab 11 (data curation). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np

from ..checking import CheckFailed, expect_close, run_check

U32_MAX = np.iinfo(np.uint32).max


def _perms(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    a = g.integers(0, 2**31, k, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return a, g.integers(0, 2**32, k, dtype=np.uint32)


def _ref_fmix32(h):
    h = np.asarray(h, dtype=np.uint32)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _ref_signature(hashes, a, b):
    sig = np.full(len(a), U32_MAX, dtype=np.uint32)
    if len(hashes):
        with np.errstate(over="ignore"):
            sig = np.minimum(sig, (a[:, None] * _ref_fmix32(hashes)[None, :] + b[:, None]).min(axis=1))
    return sig


def _ref_shingles(text: str, n: int, kind: str) -> set:
    t = re.sub(r"\s+", " ", text.lower()).strip()
    if kind == "word":
        w = re.findall(r"\w+", t)
        return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
    return {t[i:i + n] for i in range(len(t) - n + 1)}


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: word and character shingles."""

    def tests():
        cases = [
            ("The cat sat on the mat", 2, "word", {"the cat", "cat sat", "sat on", "on the", "the mat"}),
            ("To be, or not to be", 3, "word", {"to be or", "be or not", "or not to", "not to be"}),
            ("  Ab\n\tcd  ", 3, "char", {"ab ", "b c", " cd"}),
            ("Hello", 5, "char", {"hello"}),
            ("Hi", 3, "char", set()),
            ("one two", 3, "word", set()),
            ("Stand & vnfold your selfe", 2, "word", {"stand vnfold", "vnfold your", "your selfe"}),
        ]
        for text, n, kind, want in cases:
            got = fn(text, n, kind)
            if not isinstance(got, (set, frozenset)):
                raise CheckFailed(f"expected a set of strings, got {type(got).__name__}")
            if set(got) != want:
                extra, missing = sorted(set(got) - want)[:3], sorted(want - set(got))[:3]
                raise CheckFailed(f"shingles({text!r}, {n}, {kind!r}): unexpected {extra}, missing {missing}")
        text = "Who's there?\n  Nay, answer me: stand, and unfold yourself.\n\nLong live the king!"
        for kind, n in [("word", 1), ("word", 4), ("char", 4), ("char", 7)]:
            if set(fn(text, n, kind)) != _ref_shingles(text, n, kind):
                raise CheckFailed(f"{kind} {n}-grams of a Hamlet passage differ from the reference "
                                  f"(lower-case, collapse whitespace, words = \\w+)")
        return "word and character n-grams, normalised, as sets."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def check_2(fn, fmix32=_ref_fmix32) -> None:
    """Exercise 2: MinHash signature == datasketch's affine32 MinHash, bit for bit."""

    def tests():
        from datasketch import MinHash

        g = np.random.default_rng(7)
        for k, n in [(1, 1), (16, 5), (128, 3000), (200, 777)]:
            a, b = _perms(k, seed=k)
            hashes = np.unique(g.integers(0, 2**32, n, dtype=np.uint32))
            got = np.asarray(fn(hashes, a, b))
            if got.shape != (k,):
                raise CheckFailed(f"expected a signature of shape ({k},) for {k} hash functions, got {got.shape}")
            if got.dtype != np.uint32:
                raise CheckFailed(f"expected dtype uint32 (arithmetic modulo 2^32), got {got.dtype}")
            ds = MinHash(num_perm=k, hashfunc=lambda v: v, permutations=(a, b), scheme="affine32")
            ds.update_batch(hashes.tolist())
            if not np.array_equal(got, ds.hashvalues):
                bad = int(np.argmax(got != ds.hashvalues))
                raise CheckFailed(f"K={k}, {len(hashes)} shingles: value {bad} is {int(got[bad])}, datasketch gives "
                                  f"{int(ds.hashvalues[bad])} (min over shingles of a·fmix32(x)+b mod 2^32?)")
        empty = np.asarray(fn(np.zeros(0, dtype=np.uint32), *_perms(8, 1)))
        if empty.shape != (8,) or not np.all(empty == U32_MAX):
            raise CheckFailed(f"an empty document should give 2^32-1 everywhere, got {empty[:4]}")
        if not np.array_equal(np.asarray(fmix32(np.arange(5, dtype=np.uint32))), _ref_fmix32(np.arange(5))):
            raise CheckFailed("fmix32 was changed: keep the given function")
        return "bit-identical to datasketch.MinHash (affine32) for K = 1…200."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(estimate, predicted, signature=_ref_signature, fmix32=_ref_fmix32) -> None:
    """Exercise 3: Jaccard estimate and its predicted standard error, measured over many hash families."""

    def tests():
        s1 = np.array([1, 2, 3, 4], dtype=np.uint32)
        expect_close("estimate_jaccard([1,2,3,4], [1,2,0,4])", estimate(s1, np.array([1, 2, 0, 4], np.uint32)), 0.75)
        expect_close("estimate_jaccard of identical signatures", estimate(s1, s1.copy()), 1.0)
        for j, k in [(0.5, 100), (0.2, 64), (0.9, 16), (0.0, 10), (1.0, 10)]:
            expect_close(f"predicted_error({j}, {k})", predicted(j, k), float(np.sqrt(j * (1 - j) / k)), atol=1e-9)
        # sets with exact Jaccard 300/1000: spread of the estimate over many hash families vs prediction
        shared, only_a, only_b = np.arange(300), np.arange(1000, 1350), np.arange(2000, 2350)
        A = np.concatenate([shared, only_a]).astype(np.uint32)
        B = np.concatenate([shared, only_b]).astype(np.uint32)
        j_true, k = 0.3, 64
        est = []
        for seed in range(200):
            a, b = _perms(k, seed)
            est.append(estimate(signature(A, a, b), signature(B, a, b)))
        est = np.array(est, dtype=float)
        if abs(est.mean() - j_true) > 0.02:
            raise CheckFailed(f"the mean estimate over 200 hash families is {est.mean():.3f}, the true Jaccard 0.300")
        ratio = est.std() / predicted(j_true, k)
        if not 0.75 < ratio < 1.3:
            raise CheckFailed(f"measured spread {est.std():.4f} vs your predicted error {predicted(j_true, k):.4f}")
        return f"mean estimate {est.mean():.3f} for J=0.3; measured spread / predicted = {ratio:.2f} (K={k})."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def _ref_lsh(sig, bands, rows):
    pairs = set()
    for band in range(bands):
        buckets = defaultdict(list)
        for i, row in enumerate(sig[:, band * rows:(band + 1) * rows]):
            buckets[bytes(np.ascontiguousarray(row))].append(i)
        for members in buckets.values():
            pairs.update(combinations(members, 2))
    return pairs


def _signatures_with_near_dups(n_docs=60, k=48, seed=0):
    """Signatures of random 'documents', a third of them near-copies (most values shared) of another."""
    g = np.random.default_rng(seed)
    sig = g.integers(0, 6, (n_docs, k)).astype(np.uint32)   # few distinct values: many chance collisions
    for i in range(0, n_docs, 3):
        j = (i + 7) % n_docs
        keep = g.random(k) < 0.7
        sig[j, keep] = sig[i, keep]
    return sig


def check_4(fn) -> None:
    """Exercise 4: LSH candidate pairs == datasketch MinHashLSH's."""

    def tests():
        from datasketch import MinHash, MinHashLSH

        for bands, rows, k, seed in [(8, 6, 48, 0), (12, 4, 48, 1), (4, 10, 48, 2), (16, 3, 50, 3)]:
            sig = _signatures_with_near_dups(k=k, seed=seed)
            got = fn(sig.copy(), bands, rows)
            if not isinstance(got, (set, frozenset)):
                raise CheckFailed(f"expected a set of (i, j) pairs, got {type(got).__name__}")
            got = {tuple(int(x) for x in p) for p in got}
            if any(i >= j for i, j in got):
                raise CheckFailed(f"pairs must be (i, j) with i < j, got e.g. {next(p for p in got if p[0] >= p[1])}")
            perms = _perms(k, 0)
            lsh = MinHashLSH(num_perm=k, params=(bands, rows))
            mh = [MinHash(num_perm=k, hashvalues=s, permutations=perms, scheme="affine32") for s in sig]
            for i, m in enumerate(mh):
                lsh.insert(i, m)
            want = {(min(i, q), max(i, q)) for i, m in enumerate(mh) for q in lsh.query(m) if q != i}
            if got != want:
                extra, missing = sorted(got - want)[:2], sorted(want - got)[:2]
                raise CheckFailed(f"{bands} bands × {rows} rows: {len(got)} pairs, datasketch finds {len(want)}; "
                                  f"extra {extra}, missing {missing}")
        _bucketing_scale(fn)   # the measured ratio varies from run to run: only its verdict is printed
        return ("the same candidate pairs as datasketch.MinHashLSH for four band/row settings, and the time grows "
                "like the number of documents (bucketing), not of pairs.")

    run_check(4, tests)


def _best_time(fn, *args, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def _bucketing_scale(fn, small: int = 250, large: int = 4000, bands: int = 2, rows: int = 4) -> float:
    """Time ratio of `fn` on `large` vs `small` random signatures (no collisions): ~16 for bucketing, ~256 for all
    pairs. A pairwise loop is already slow at `small`, so it is stopped there."""
    g = np.random.default_rng(7)
    sig_s = g.integers(0, 2**32, (small, bands * rows), dtype=np.uint32)
    sig_l = g.integers(0, 2**32, (large, bands * rows), dtype=np.uint32)
    t_ref = _best_time(_ref_lsh, sig_s, bands, rows)
    t_small = _best_time(fn, sig_s, bands, rows)
    if t_small > max(0.05, 50 * t_ref):
        raise CheckFailed(f"{small} documents, {bands} bands: {t_small * 1e3:.0f} ms, a dict per band takes "
                          f"{t_ref * 1e3:.1f} ms — this looks like a comparison of all pairs; put each band's values "
                          "in a hash table and pair only the documents that share a bucket")
    t_large = _best_time(fn, sig_l, bands, rows, repeats=2)
    ratio = t_large / max(t_small, 1e-6)
    if ratio > 64:
        raise CheckFailed(f"{large // small}× more documents took {ratio:.0f}× longer: the time grows like the number "
                          "of pairs (all-pairs comparison), not like the number of documents (bucketing)")
    return ratio


# --------------------------------------------------------------------------- exercise 5
def _dt_words(text: str) -> list[str]:
    """datatrove's reading: punctuation split off as tokens, punctuation-only tokens not counted as words."""
    return [w for w in re.findall(r"\w+(?:['’]\w+)*|[^\w\s]", text) if any(c.isalnum() for c in w)]


def check_5(mean_len_ok, stop_ok) -> None:
    """Exercise 5: two Gopher quality rules."""

    def tests():
        texts = ["the cat sat on the mat", "abc abc abc", "ab ab", "abcdefghij abcdefghij",
                 "abcdefghijk abcdefghijk", "", "a " * 50 + "abcdefghijklmnopqrstuvwxyz" * 2, "ab abcd",
                 "To be, or not to be: that is the question."]
        texts += ["Hello, world! Yes... no.", "a, b, c, d, e, f", "word!!!!!!!! word!!!!!!!!"]
        for text in texts:
            ok = set()
            for words in (text.split(), _dt_words(text)):   # both readings of "word" are accepted
                ok.add(bool(words) and 3 <= sum(map(len, words)) / len(words) <= 10)
            got = mean_len_ok(text)
            if bool(got) not in ok:
                w = text.split()
                mean = sum(map(len, w)) / len(w) if w else float("nan")
                raise CheckFailed(f"mean_word_length_ok({text[:40]!r}) should be {ok.pop()} (mean of text.split() "
                                  f"words {mean:.2f}), got {got}")
        # (text, answer when compared lower-cased, answer when compared case-sensitively as datatrove does)
        cases_stop = [
            ("the cat and the hat", True, True), ("The cat AND dog", True, False), ("the the the the", False, False),
            ("cheap shoes buy now", False, False), ("", False, False), ("with that", True, True),
            ("the, and", False, False), ("to be or not to be", True, True), ("Of Mice and Men", True, False),
            ("there thence other", False, False), ("The and of", True, True),
        ]
        readings = set()
        for text, lower, exact in cases_stop:
            got = bool(stop_ok(text))
            if got not in (lower, exact):
                raise CheckFailed(f"stop_words_ok({text!r}) should be {lower}, got {got}")
            if lower != exact:
                readings.add("lower-cased" if got == lower else "case-sensitive")
        if len(readings) > 1:
            raise CheckFailed("stop_words_ok treats upper case inconsistently: pick one reading (lower-cased, or "
                              "case-sensitive as datatrove) and use it for every word")
        reading = readings.pop() if readings else "either"
        return f"mean word length in [3, 10] and ≥ 2 distinct stop words ({reading} reading), as in Gopher."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def _ref_dedup(docs, min_docs):
    counts = Counter()
    for d in docs:
        counts.update({ln.strip() for ln in d.splitlines() if ln.strip()})
    return ["\n".join(ln for ln in d.splitlines() if not ln.strip() or counts[ln.strip()] < min_docs) for d in docs]


def check_6(fn) -> None:
    """Exercise 6: line-level deduplication across documents."""

    def tests():
        docs = [
            "Home | About\nTo be, or not to be\n  Exeunt.\n\nCopyright 2024",
            "Home | About\nAll the world's a stage\nExeunt.\nCopyright 2024",
            "Home | About\nNow is the winter\nexeunt.\n",
            "Buy now\nBuy now\nBuy now\nunique line",
        ]
        cases = [
            (2, ["To be, or not to be\n", "All the world's a stage", "Now is the winter\nexeunt.",
                 "Buy now\nBuy now\nBuy now\nunique line"]),
            (3, ["To be, or not to be\n  Exeunt.\n\nCopyright 2024", "All the world's a stage\nExeunt.\nCopyright 2024",
                 "Now is the winter\nexeunt.", "Buy now\nBuy now\nBuy now\nunique line"]),
            (5, [d.rstrip("\n") if d.endswith("\n") else d for d in docs]),
        ]
        for min_docs, want in cases:
            got = fn(list(docs), min_docs)
            if not isinstance(got, list) or len(got) != len(docs):
                raise CheckFailed(f"expected a list of {len(docs)} documents, got {type(got).__name__}")
            for i, (g, w) in enumerate(zip(got, want)):
                if g != w:
                    raise CheckFailed(f"min_docs={min_docs}, document {i}: expected {w!r}, got {g!r}")
        return "lines counted once per document, stripped; blank lines and order kept."

    run_check(6, tests)


# --------------------------------------------------------------------------- exercise 7
def _ref_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    best = None
    for r in range(1, num_perm + 1):
        for b in range(1, num_perm // r + 1):
            key = (abs((1 / b) ** (1 / r) - threshold), -b * r)
            if best is None or key < best[0]:
                best = (key, (b, r))
    return best[1]


def _edition_recall(bands: int, rows: int, doc_chars: int = 10_000) -> tuple[float, int]:
    """LSH on char 5-gram signatures of the 70 plays (both editions): recall of the 35 edition pairs, candidates."""
    import zlib

    from .. import corpora

    modern, folio = corpora.shakespeare("modern"), corpora.shakespeare("folio")
    plays = sorted(modern)
    texts = [modern[p][:doc_chars] for p in plays] + [folio[p][:doc_chars] for p in plays]
    a, b = _perms(bands * rows, 11)
    sig = np.stack([_ref_signature(np.array(sorted(zlib.crc32(s.encode()) for s in _ref_shingles(t, 5, "char")),
                                            dtype=np.uint32), a, b) for t in texts])
    cand = _ref_lsh(sig, bands, rows)
    truth = {(i, i + len(plays)) for i in range(len(plays))}
    return len(cand & truth) / len(truth), len(cand)


def check_7(fn) -> None:
    """Exercise 7: bands and rows for a target threshold, then checked on the edition ground truth."""

    def tests():
        for threshold, k in [(0.75, 112), (0.5, 64), (0.3, 128), (0.9, 200), (0.2, 20)]:
            got = fn(threshold, k)
            if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(x, (int, np.integer)) for x in got)):
                raise CheckFailed(f"expected a tuple (bands, rows) of ints, got {got!r}")
            b, r = int(got[0]), int(got[1])
            if b < 1 or r < 1 or b * r > k:
                raise CheckFailed(f"threshold {threshold}, {k} hashes: ({b}, {r}) needs {b * r} hashes")
            wb, wr = _ref_bands_rows(threshold, k)
            if abs((1 / b) ** (1 / r) - threshold) > abs((1 / wb) ** (1 / wr) - threshold) + 1e-12:
                raise CheckFailed(f"threshold {threshold}, {k} hashes: ({b}, {r}) puts the S-curve's threshold at "
                                  f"{(1 / b) ** (1 / r):.3f}; ({wb}, {wr}) gets closer: {(1 / wb) ** (1 / wr):.3f}")
        lines = []
        for threshold in (0.3, 0.75):
            b, r = (int(x) for x in fn(threshold, 128))
            recall, n_cand = _edition_recall(b, r)
            lines.append(f"target {threshold}: {b}×{r}, edition recall {recall:.2f}, {n_cand} candidates")
            if threshold == 0.3 and recall < 0.9:
                raise CheckFailed(f"{b}×{r} for threshold 0.3 finds only {recall:.0%} of the 35 edition pairs")
        return "closest S-curve threshold; on the plays — " + "; ".join(lines) + "."

    run_check(7, tests)
