"""Lab 11's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import pytest

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab11
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_11_data_curation.ipynb",
                       {"np": np, "re": re, "Counter": Counter, "defaultdict": defaultdict,
                        "combinations": combinations})


def test_solution_passes_every_check(capsys):
    lab11.check_1(SOL["shingles"])
    lab11.check_2(SOL["minhash_signature"], SOL["fmix32"])
    lab11.check_3(SOL["estimate_jaccard"], SOL["predicted_error"], SOL["minhash_signature"], SOL["fmix32"])
    lab11.check_4(SOL["lsh_candidates"])
    lab11.check_5(SOL["mean_word_length_ok"], SOL["stop_words_ok"])
    lab11.check_6(SOL["dedup_lines"])
    lab11.check_7(SOL["bands_rows_for"])
    assert capsys.readouterr().out.count("✅") == 7


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseNotDone):
        lab11.check_1(stub)


def test_check_1_rejects_no_normalisation_and_lists():
    def no_lower(text, n, kind):
        t = re.sub(r"\s+", " ", text).strip()
        if kind == "word":
            w = re.findall(r"\w+", t)
            return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
        return {t[i:i + n] for i in range(len(t) - n + 1)}

    def no_whitespace_collapse(text, n, kind):
        t = text.lower()
        if kind == "word":
            w = t.split()
            return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
        return {t[i:i + n] for i in range(len(t) - n + 1)}

    def as_list(text, n, kind):
        return list(SOL["shingles"](text, n, kind))

    assert "unexpected" in _rejects(lab11.check_1, no_lower, match="Exercise 1")
    _rejects(lab11.check_1, no_whitespace_collapse)
    assert "set" in _rejects(lab11.check_1, as_list)


def test_check_2_rejects_max_no_mix_and_uint64():
    fmix32 = SOL["fmix32"]

    def with_max(hashes, a, b):
        x = fmix32(hashes)
        with np.errstate(over="ignore"):
            return (a[:, None] * x[None, :] + b[:, None]).max(axis=1) if len(x) else np.full(len(a), 2**32 - 1,
                                                                                            np.uint32)

    def no_mix(hashes, a, b):
        sig = np.full(len(a), 2**32 - 1, dtype=np.uint32)
        with np.errstate(over="ignore"):
            return np.minimum(sig, (a[:, None] * hashes[None, :] + b[:, None]).min(axis=1)) if len(hashes) else sig

    def no_wrap(hashes, a, b):   # uint64 arithmetic: no modulo 2^32
        x = fmix32(hashes).astype(np.uint64)
        if not len(x):
            return np.full(len(a), 2**32 - 1, np.uint64)
        return (a.astype(np.uint64)[:, None] * x[None, :] + b.astype(np.uint64)[:, None]).min(axis=1)

    _rejects(lab11.check_2, with_max, match="datasketch")
    _rejects(lab11.check_2, no_mix, match="datasketch")
    assert "uint32" in _rejects(lab11.check_2, no_wrap)


def test_check_3_rejects_wrong_estimate_and_error():
    est, pred, sig = SOL["estimate_jaccard"], SOL["predicted_error"], SOL["minhash_signature"]

    def count_not_fraction(s1, s2):
        return float(np.sum(np.asarray(s1) == np.asarray(s2)))

    def error_without_sqrt(j, k):
        return j * (1 - j) / k

    def error_sqrt_k_only(j, k):
        return 1 / np.sqrt(k)

    _rejects(lab11.check_3, count_not_fraction, pred, sig, match="estimate_jaccard")
    _rejects(lab11.check_3, est, error_without_sqrt, sig, match="predicted_error")
    _rejects(lab11.check_3, est, error_sqrt_k_only, sig, match="predicted_error")


def test_check_4_rejects_all_bands_and_overlapping_bands():
    def all_bands(sig, bands, rows):   # candidates must agree on every band: far too strict
        out = set()
        for i, j in combinations(range(len(sig)), 2):
            if np.array_equal(sig[i, :bands * rows], sig[j, :bands * rows]):
                out.add((i, j))
        return out

    def sliding_bands(sig, bands, rows):  # bands start every row instead of every `rows` columns
        out = set()
        for band in range(bands):
            buckets = defaultdict(list)
            for i, row in enumerate(sig[:, band:band + rows]):
                buckets[bytes(np.ascontiguousarray(row))].append(i)
            for m in buckets.values():
                out.update(combinations(m, 2))
        return out

    def one_row_per_band(sig, bands, rows):
        return SOL["lsh_candidates"](sig, bands, 1)

    for wrong in (all_bands, sliding_bands, one_row_per_band):
        assert "datasketch finds" in _rejects(lab11.check_4, wrong, match="Exercise 4")


def test_check_4_tells_bucketing_from_all_pairs():
    """Right pairs, wrong algorithm: comparing every pair (a Python loop, or numpy broadcasting) is rejected."""
    def pairwise_loop(sig, bands, rows):
        out = set()
        for i, j in combinations(range(len(sig)), 2):
            for band in range(bands):
                s = slice(band * rows, (band + 1) * rows)
                if np.array_equal(sig[i, s], sig[j, s]):
                    out.add((i, j))
                    break
        return out

    def pairwise_broadcast(sig, bands, rows):
        out = set()
        for band in range(bands):
            x = sig[:, band * rows:(band + 1) * rows]
            eq = (x[:, None, :] == x[None, :, :]).all(axis=2)
            i, j = np.nonzero(np.triu(eq, 1))
            out.update(zip(i.tolist(), j.tolist()))
        return out

    assert "all pairs" in _rejects(lab11.check_4, pairwise_loop, match="Exercise 4")
    assert "all-pairs" in _rejects(lab11.check_4, pairwise_broadcast, match="Exercise 4")


def test_check_5_rejects_off_thresholds_and_counting_repeats():
    mean_ok, stop_ok = SOL["mean_word_length_ok"], SOL["stop_words_ok"]

    def strict_bounds(text):
        w = text.split()
        return bool(w) and 3 < sum(map(len, w)) / len(w) < 10

    def counts_repeats(text):
        stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
        return sum(w.lower() in stop for w in text.split()) >= 2

    def case_sensitive(text):
        stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
        return len(stop & set(text.split())) >= 2

    def substring(text):   # "there" contains "the": words must match whole
        stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
        return sum(any(s in w.lower() for w in text.split()) for s in stop) >= 2

    def mixed_case(text):   # lower-cases some words only
        stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
        return len(stop & {w if w.isupper() else w.lower() for w in text.split()}) >= 2

    assert "mean_word_length_ok" in _rejects(lab11.check_5, strict_bounds, stop_ok)
    assert "the the the" in _rejects(lab11.check_5, mean_ok, counts_repeats)
    _rejects(lab11.check_5, mean_ok, substring, match="stop_words_ok")
    _rejects(lab11.check_5, mean_ok, mixed_case, match="stop_words_ok")


def test_check_5_accepts_both_readings(capsys):
    """datatrove's reading (case-sensitive stop words; punctuation split off) passes, as does the lab's."""
    def case_sensitive(text):
        stop = {"the", "be", "to", "of", "and", "that", "have", "with"}
        return len(stop & set(text.split())) >= 2

    def tokens_mean_ok(text):
        w = [t for t in re.findall(r"\w+(?:['’]\w+)*|[^\w\s]", text) if any(c.isalnum() for c in t)]
        return bool(w) and 3 <= sum(map(len, w)) / len(w) <= 10

    lab11.check_5(SOL["mean_word_length_ok"], case_sensitive)
    lab11.check_5(tokens_mean_ok, SOL["stop_words_ok"])
    out = capsys.readouterr().out
    assert "case-sensitive reading" in out and "lower-cased reading" in out


def test_check_7_rejects_wrong_thresholds_and_budgets():
    def threshold_formula_inverted(threshold, num_perm):   # (1/r)^(1/b): rows and bands swapped
        best = None
        for r in range(1, num_perm + 1):
            for b in range(1, num_perm // r + 1):
                key = abs((1 / r) ** (1 / b) - threshold)
                if best is None or key < best[0]:
                    best = (key, (b, r))
        return best[1]

    def over_budget(threshold, num_perm):   # ignores the hash budget
        return num_perm, 2

    def fineweb_always(threshold, num_perm):
        return 14, 8

    assert "closer" in _rejects(lab11.check_7, threshold_formula_inverted, match="Exercise 7")
    assert "needs" in _rejects(lab11.check_7, over_budget, match="Exercise 7")
    _rejects(lab11.check_7, fineweb_always, match="Exercise 7")


def test_check_6_rejects_occurrence_counts_and_unstripped_lines():
    def counts_occurrences(docs, min_docs):
        c = Counter(ln.strip() for d in docs for ln in d.splitlines() if ln.strip())
        return ["\n".join(ln for ln in d.splitlines() if not ln.strip() or c[ln.strip()] < min_docs) for d in docs]

    def unstripped(docs, min_docs):
        c = Counter()
        for d in docs:
            c.update({ln for ln in d.splitlines() if ln.strip()})
        return ["\n".join(ln for ln in d.splitlines() if not ln.strip() or c[ln] < min_docs) for d in docs]

    def drops_blank_lines(docs, min_docs):
        return ["\n".join(ln for ln in d.splitlines() if ln.strip()) for d in SOL["dedup_lines"](docs, min_docs)]

    for wrong in (counts_occurrences, unstripped, drops_blank_lines):
        assert "expected" in _rejects(lab11.check_6, wrong, match="Exercise 6")
