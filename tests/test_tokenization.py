"""utils.bpe (and notebook 10's from-scratch BPE): round trips, known merges, agreement with `tokenizers`."""

from __future__ import annotations

import ast
import functools
import heapq
import json
import math
from collections import Counter, defaultdict

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils import bpe, corpora
from utils.results import REPO_ROOT

# One word per line (no leading spaces). By hand: pairs ab=7+4=11, bc=4+2=6, cd=2+1=3 -> merge ab (256);
# then (256,c)=4, bc=2, cd=3 -> merge abc (257); then bc=2, cd=3 -> merge cd (258); then (b,258)=2 -> bcd (259).
KNOWN_CORPUS = "ab\n" * 7 + "abc\n" * 4 + "bcd\n" * 2 + "cd\n"
KNOWN_MERGES = [(ord("a"), ord("b")), (256, ord("c")), (ord("c"), ord("d")), (ord("b"), 258)]
# " x" and "yz" both occur 3 times: a tie. By byte value (32, 120) < (121, 122); in `tokenizers`' id order the
# space (stand-in "Ġ", U+0120) sorts after every printable byte, so the library merges "yz" first.
TIE_CORPUS = "yz\n x\n" * 3


@functools.cache
def _shakespeare(n: int) -> str:
    train, _ = corpora.shakespeare_split("modern")
    return train[:n]


@functools.cache
def _tokenizer() -> bpe.BPETokenizer:
    return bpe.BPETokenizer(bpe.train_bpe(_shakespeare(100_000) + "naïve café 東京 🙂 x = 1_000\n\tpass", 1500))


def test_known_merges_ours_and_library():
    assert bpe.train_bpe(KNOWN_CORPUS, 300) == KNOWN_MERGES          # stops when no pair is left
    assert bpe.train_bpe(KNOWN_CORPUS, 258) == KNOWN_MERGES[:2]
    lib = bpe.train_tokenizers_bpe(KNOWN_CORPUS, 300)
    assert bpe.from_tokenizers(lib) == KNOWN_MERGES
    vocab = bpe.vocab_from_merges(KNOWN_MERGES)
    assert [vocab[i] for i in range(256, 260)] == [b"ab", b"abc", b"cd", b"bcd"]


def test_tie_breaking_rules():
    assert bpe.train_bpe(TIE_CORPUS, 258, tie_break="bytes") == [(32, 120), (121, 122)]
    assert bpe.train_bpe(TIE_CORPUS, 258, tie_break="tokenizers") == [(121, 122), (32, 120)]
    assert bpe.from_tokenizers(bpe.train_tokenizers_bpe(TIE_CORPUS, 258)) == [(121, 122), (32, 120)]


def test_same_merges_as_library_on_shakespeare():
    text = _shakespeare(150_000)
    ours = bpe.train_bpe(text, 2000, tie_break="tokenizers")
    assert ours == bpe.from_tokenizers(bpe.train_tokenizers_bpe(text, 2000))
    by_bytes = bpe.train_bpe(text, 2000)
    assert len(set(by_bytes) & set(ours)) / len(ours) > 0.5   # same algorithm, different tie order


def test_incremental_equals_recounting():
    text = _shakespeare(20_000)
    words = Counter(bpe.pretokenize(text))
    seqs, freqs = [list(w.encode()) for w in words], list(words.values())
    merges = []
    for _ in range(60):
        pairs: Counter = Counter()
        for s, f in zip(seqs, freqs):
            for p in zip(s, s[1:]):
                pairs[p] += f
        best = min(pairs, key=lambda p: (-pairs[p], p))
        seqs = [bpe.merge_pair(s, best, 256 + len(merges)) for s in seqs]
        merges.append(best)
    assert bpe.train_bpe(text, 256 + 60) == merges


def test_encode_matches_library_and_decode_round_trips():
    tok = _tokenizer()
    lib = bpe.to_tokenizers(tok.merges)
    text = corpora.shakespeare_split("modern")[1][:50_000] + corpora.docs_split()[1][:20_000]
    ids = tok.encode(text)
    assert ids == lib.encode(text).ids
    assert tok.decode(ids) == text == lib.decode(ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_round_trip_arbitrary_unicode(text):
    tok = _tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < tok.vocab_size for i in ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=120))
def test_same_ids_as_library_on_arbitrary_unicode(text):
    tok = _tokenizer()
    assert tok.encode(text) == _library().encode(text).ids


@functools.cache
def _library():
    return bpe.to_tokenizers(_tokenizer().merges)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", " ", "é", "🙂", "\n"]), max_size=40).map("".join))
def test_round_trip_and_pieces_on_repetitive_text(text):
    """Strings built from a few repeated parts hit merges (and overlapping pairs) often."""
    merges = bpe.train_bpe(text * 3 + KNOWN_CORPUS, 300)
    tok = bpe.BPETokenizer(merges)
    assert tok.decode(tok.encode(text)) == text
    assert "".join(bpe.pretokenize(text)) == text


def test_argument_validation():
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        bpe.train_bpe("abc", 100)
    with pytest.raises(ValueError, match="tie_break must be one of"):
        bpe.train_bpe("abc", 300, tie_break="random")
    with pytest.raises(ValueError, match="does not exist yet"):
        bpe.BPETokenizer([(97, 300)])
    with pytest.raises(ValueError, match="zero tokens"):
        bpe.bytes_per_token("", lambda t: [])


def test_bytes_to_unicode_matches_library_alphabet():
    from tokenizers import pre_tokenizers

    assert sorted(bpe.bytes_to_unicode().values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    rank = bpe.tokenizers_byte_rank()
    assert sorted(rank) == list(range(256)) and rank[ord("!")] == 0 and rank[32] > rank[ord("y")]


# ------------------------------------------------------------------ notebook 10's own code agrees with utils.bpe
def _is_lesson_cell(src: str) -> bool:
    """Cells made only of imports, defs, classes and constant assignments (no training, no timing)."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return False
    ok = (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    for node in tree.body:
        if isinstance(node, ast.Assign):
            v = node.value
            if not (isinstance(v, ast.Constant) or (isinstance(v, ast.Call) and ast.unparse(v.func) == "regex.compile")
                    or ast.unparse(v) in ("bytes_to_unicode()", "{u: b for b, u in B2U.items()}")):
                return False
        elif not isinstance(node, ok):
            return False
    return bool(tree.body) and any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body)


@functools.cache
def _notebook() -> dict:
    nb = json.loads((REPO_ROOT / "notebooks" / "10_tokenization.ipynb").read_text())
    from utils import evidence

    ns: dict = {"regex": regex, "heapq": heapq, "Counter": Counter, "defaultdict": defaultdict, "math": math,
                "evidence": evidence}
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for src in cells:
        if _is_lesson_cell(src):
            exec(src, ns)
    return ns


def test_notebook_bpe_agrees_with_utils():
    nb = _notebook()
    for name in ("pretokenize", "count_pairs", "merge", "train_naive", "train_bpe", "ByteBPE", "bytes_to_unicode",
                 "library_from_merges", "train_library", "bytes_per_token"):
        assert name in nb, f"notebook 10 no longer defines {name}"
    text = _shakespeare(60_000) + "naïve café 東京 🙂\n    return x  # 8 spaces"
    assert nb["pretokenize"](text) == bpe.pretokenize(text)
    assert nb["bytes_to_unicode"]() == bpe.bytes_to_unicode()
    merges = nb["train_bpe"](text, 1200)
    assert merges == bpe.train_bpe(text, 1200)
    assert nb["train_naive"](text, 20) == merges[:20]
    assert nb["train_bpe"](text, 1200, byte_rank=bpe.tokenizers_byte_rank()) == bpe.train_bpe(
        text, 1200, tie_break="tokenizers")
    assert nb["merge"]([5, 5, 5], (5, 5), 256) == bpe.merge_pair([5, 5, 5], (5, 5), 256) == [256, 5]
    ours, ref = nb["ByteBPE"](merges), bpe.BPETokenizer(merges)
    sample = corpora.docs_split()[1][:20_000] + text[-2000:]
    ids = ours.encode(sample)
    assert ids == ref.encode(sample) == nb["library_from_merges"](merges).encode(sample).ids
    assert ours.decode(ids) == ref.decode(ids) == sample
    assert nb["bytes_per_token"](Counter(nb["pretokenize"](sample)), ours) == bpe.bytes_per_token(sample, ref.encode)


def test_notebook_lm_yardsticks():
    """Section 7's equal-FLOPs budget and bits per byte: a uniform model scores log2(V) bits per token."""
    import torch

    nb = _notebook()
    plan = nb["lm_budget"](1024, 50, 32, 1e11, 64, 2, 100_000)
    assert plan["FLOPs/token"] == 6 * (100_000 + 1024 * 64) + 6 * 2 * 50 * 64
    assert plan["steps"] == round(1e11 / (plan["FLOPs/token"] * 32 * 50))

    class Uniform(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v, self.w = v, torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            return torch.zeros(*ids.shape, self.v), None

    merges = bpe.train_bpe(_shakespeare(20_000), 512)
    tok, vocab = bpe.BPETokenizer(merges), bpe.vocab_from_merges(merges)
    ids = torch.tensor(tok.encode(_shakespeare(20_000)[-3000:]))
    got = nb["bits_per_byte"](Uniform(512), ids, 16, vocab)
    scored = ids[torch.cat([torch.arange(s + 1, s + 16) for s in range(0, len(ids) - 15, 16)])]
    assert got == pytest.approx(len(scored) * 9 / sum(len(vocab[i]) for i in scored.tolist()), rel=1e-5)


# ---------------------------------------------------------------- special tokens (CS336 A1 style)
EOT = "<|endoftext|>"


def test_special_tokens_split_training_and_never_merge():
    docs = ["the cat sat", "the hat", "a cat"] * 20
    joined = EOT.join(docs)
    merges = bpe.train_bpe(joined, 400, special_tokens=[EOT])
    assert len(merges) <= 400 - 256 - 1                                    # the special counts towards vocab_size
    vocab = bpe.vocab_from_merges(merges)
    assert not any(b"<|" in t or b"|>" in t or b"endoftext" in t for t in vocab), "a special was learned from text"
    # no piece spans a boundary: the counts equal the counts of the documents pre-tokenized one by one
    assert bpe.word_counts(joined, [EOT]) == sum((Counter(bpe.pretokenize(d)) for d in docs), Counter())
    plain = bpe.train_bpe(joined, 400)                                        # without: the separator is text
    assert any(b"endoftext" in t for t in bpe.vocab_from_merges(plain))


def test_special_tokens_encode_decode_and_ids():
    merges = bpe.train_bpe(_shakespeare(20_000), 300, special_tokens=[EOT, "<|im_start|>"])
    tok = bpe.BPETokenizer(merges, special_tokens=[EOT, "<|im_start|>"])
    assert tok.special_ids == {EOT: 256 + len(merges), "<|im_start|>": 257 + len(merges)}
    assert tok.vocab_size == 256 + len(merges) + 2
    text = f"To be{EOT}<|im_start|>or not{EOT}{EOT}"
    ids = tok.encode(text)
    assert ids.count(tok.special_ids[EOT]) == 3 and ids.count(tok.special_ids["<|im_start|>"]) == 1
    assert tok.decode(ids) == text
    ordinary = tok.encode_ordinary(text)                                      # untrusted text: no special ids
    assert not set(ordinary) & set(tok.special_ids.values()) and tok.decode(ordinary) == text
    assert bpe.BPETokenizer(merges).encode(text) == ordinary                  # no specials: plain text
    lib = bpe.to_tokenizers(merges, special_tokens=[EOT, "<|im_start|>"])
    assert lib.encode(text).ids == ids


def test_special_tokens_longest_match_first_and_bad_input():
    assert bpe.split_on_special("a<|x|>>b", ["<|x|>", "<|x|>>"]) == ["a", "<|x|>>", "b"]
    assert bpe.split_on_special("", [EOT]) == [] and bpe.split_on_special("ab", []) == ["ab"]
    for bad in ([""], [EOT, EOT], EOT, [3]):
        with pytest.raises(ValueError, match="special"):
            bpe.BPETokenizer([], special_tokens=bad)
    with pytest.raises(ValueError, match="special tokens"):
        bpe.train_bpe("abc", 256, special_tokens=[EOT])
