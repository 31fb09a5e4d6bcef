"""Byte-level BPE (GPT-2 style) in pure Python: train, encode, decode, and a bridge to the `tokenizers` library.

Notebook 10 builds the same algorithm step by step; this module is the shared, tested copy that later notebooks
and the lab checks reuse. Token ids: 0..255 are the raw bytes, merge number i creates token 256 + i.

Text is first split by the GPT-2 regex (so merges never cross word boundaries), each piece is turned into its
UTF-8 bytes, and merges are learned on the bytes, counting each distinct piece once with its frequency.

Special tokens (document separators such as "<|endoftext|>", chat markers), as in Stanford CS336 assignment 1:
the training text is first split on them, so no merge ever crosses a document boundary and a special string is
never learned from its characters; they get the ids after the merges (256 + len(merges) + j) and count towards
`vocab_size`. `BPETokenizer.encode` turns each special string into its one id; `encode_ordinary` treats it as
plain text (what text from users should get).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

import regex

# The pre-tokenizer of GPT-2 (openai/gpt-2 src/encoder.py), also used by `tokenizers`' ByteLevel(use_regex=True).
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_RE = regex.compile(GPT2_SPLIT_PATTERN)

Pair = tuple[int, int]
TIE_BREAKS = ("bytes", "tokenizers")


def pretokenize(text: str) -> list[str]:
    """Split text into the pieces BPE works inside (GPT-2 regex); ''.join(pieces) == text."""
    return _GPT2_RE.findall(text)


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """The special tokens as a list of distinct non-empty strings (ValueError otherwise)."""
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, got the string {special_tokens!r}")
    out = list(special_tokens)
    for t in out:
        if not isinstance(t, str) or not t:
            raise ValueError(f"every special token must be a non-empty string, got {t!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"special tokens must be distinct, got {out}")
    return out


def split_on_special(text: str, special_tokens: Sequence[str]) -> list[str]:
    """Split text around every occurrence of a special token (longest match first); specials are kept as pieces.

    ''.join(result) == text; with no special tokens the result is [text].
    """
    specials = check_special_tokens(special_tokens)
    if not specials:
        return [text] if text else []
    pattern = "|".join(regex.escape(t) for t in sorted(specials, key=len, reverse=True))
    return [p for p in regex.split(f"({pattern})", text) if p]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (as used by `tokenizers`' ByteLevel)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def tokenizers_byte_rank() -> list[int]:
    """rank[b] = the id `tokenizers`' BpeTrainer gives byte b (its alphabet is sorted by stand-in character)."""
    b2u = bytes_to_unicode()
    order = sorted(range(256), key=lambda b: ord(b2u[b]))
    rank = [0] * 256
    for i, b in enumerate(order):
        rank[b] = i
    return rank


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in `ids` (scanning left to right) by `new_id`."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def word_counts(text: str, special_tokens: Sequence[str] = ()) -> Counter[str]:
    """How often each pre-tokenized piece occurs in `text` (special tokens removed first: no piece spans one)."""
    specials = set(check_special_tokens(special_tokens))
    counts: Counter[str] = Counter()
    for chunk in split_on_special(text, list(specials)):
        if chunk not in specials:
            counts.update(pretokenize(chunk))
    return counts


def train_bpe(text: str | Counter, vocab_size: int, tie_break: str = "bytes",
              progress: Callable[[int], None] | None = None, special_tokens: Sequence[str] = ()) -> list[Pair]:
    """Learn byte-level BPE merges until the vocabulary has `vocab_size` tokens (or no pair is left).

    `text` is raw text or a Counter of pre-tokenized pieces. With `special_tokens` (CS336 A1 style) the text is
    split on them before pre-tokenization, and they count towards `vocab_size`: the run learns at most
    vocab_size - 256 - len(special_tokens) merges. The most frequent adjacent pair is merged each step;
    equal counts go to the smallest pair of ids (tie_break="bytes") or to the smallest pair in `tokenizers`' id
    order (tie_break="tokenizers", which reproduces `tokenizers.trainers.BpeTrainer` merge for merge).
    Pair counts are updated incrementally: only the words that contain the merged pair are touched.
    """
    specials = check_special_tokens(special_tokens)
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be >= 256 (the byte alphabet) + {len(specials)} special tokens, "
                         f"got {vocab_size}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    n_merges = vocab_size - 256 - len(specials)
    counts = word_counts(text, specials) if isinstance(text, str) else text
    base_rank = tokenizers_byte_rank() if tie_break == "tokenizers" else list(range(256))

    def rank(t: int) -> int:
        return base_rank[t] if t < 256 else t

    words = [list(w.encode("utf-8")) for w in counts]
    freqs = list(counts.values())
    pairs: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            pairs[p] += f
            where[p].add(i)
    heap = [(-c, rank(a), rank(b), a, b) for (a, b), c in pairs.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < n_merges and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pairs.get((a, b), 0) != -neg:   # stale entry: this pair's count changed since it was pushed
            continue
        new_id = 256 + len(merges)
        merges.append((a, b))
        touched: set[Pair] = set()
        for i in where.pop((a, b)):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pairs[p] -= f
                touched.add(p)
            w = words[i] = merge_pair(w, (a, b), new_id)
            for p in zip(w, w[1:]):
                pairs[p] += f
                touched.add(p)
                where[p].add(i)
        touched.discard((a, b))
        del pairs[(a, b)]
        for p in touched:
            if pairs[p] > 0:
                heapq.heappush(heap, (-pairs[p], rank(p[0]), rank(p[1]), p[0], p[1]))
            else:
                del pairs[p]
                where.pop(p, None)
        if progress is not None:
            progress(len(merges))
    return merges


def vocab_from_merges(merges: Iterable[Pair]) -> list[bytes]:
    """vocab[id] = the bytes token `id` stands for."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


class BPETokenizer:
    """Encode/decode with learned merges (lowest-rank pair first, as GPT-2 and `tokenizers` do).

    Special tokens get the ids after the merges: special_tokens[j] -> 256 + len(merges) + j.
    """

    def __init__(self, merges: Iterable[Pair], special_tokens: Sequence[str] = ()):
        self.merges: list[Pair] = [tuple(m) for m in merges]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} {(a, b)} uses a token that does not exist yet")
        self.ranks: dict[Pair, int] = {p: i for i, p in enumerate(self.merges)}
        self.special_tokens: list[str] = check_special_tokens(special_tokens)
        self.special_ids: dict[str, int] = {t: 256 + len(self.merges) + j for j, t in enumerate(self.special_tokens)}
        self.vocab: list[bytes] = vocab_from_merges(self.merges) + [t.encode("utf-8") for t in self.special_tokens]
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of tokens: 256 bytes, one per merge, one per special token."""
        return len(self.vocab)

    def encode_piece(self, piece: str) -> list[int]:
        """Token ids of one pre-tokenized piece (cached: real text repeats its words)."""
        if piece in self._cache:
            return self._cache[piece]
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 62))
            if best not in self.ranks:
                break
            ids = merge_pair(ids, best, 256 + self.ranks[best])
        if len(self._cache) < 1_000_000:
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token strings included, treated as plain text (for untrusted text)."""
        out: list[int] = []
        for piece in pretokenize(text):
            out.extend(self.encode_piece(piece))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; each occurrence of a special token becomes its one id."""
        if not self.special_tokens:
            return self.encode_ordinary(text)
        out: list[int] = []
        for chunk in split_on_special(text, self.special_tokens):
            if chunk in self.special_ids:
                out.append(self.special_ids[chunk])
            else:
                out.extend(self.encode_ordinary(chunk))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the tokens stand for."""
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """The text the tokens stand for (invalid UTF-8 from a partial sequence becomes U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """A readable form of one token (its bytes decoded, or escaped when they are not valid UTF-8)."""
        try:
            return self.vocab[i].decode("utf-8")
        except UnicodeDecodeError:
            return repr(self.vocab[i])[2:-1]


def to_tokenizers(merges: Iterable[Pair], special_tokens: Sequence[str] = ()):
    """A `tokenizers.Tokenizer` with exactly these merges and the same ids (byte b = id b, merge i = 256 + i,
    special token j = 256 + len(merges) + j)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m) for m in merges]
    b2u = bytes_to_unicode()
    vocab = vocab_from_merges(merges)

    def s(i: int) -> str:
        return "".join(b2u[x] for x in vocab[i])

    tok = Tokenizer(models.BPE(vocab={s(i): i for i in range(len(vocab))}, merges=[(s(a), s(b)) for a, b in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = check_special_tokens(special_tokens)
    if specials:
        from tokenizers import AddedToken

        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def from_tokenizers(tok) -> list[Pair]:
    """Merges of a byte-level `tokenizers` BPE model, in our ids (byte b = b, merge i = 256 + i)."""
    import json

    model = json.loads(tok.to_str())["model"]
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    ids = {bytes([b]): b for b in range(256)}
    out: list[Pair] = []
    for m in model["merges"]:
        left, right = m.split(" ") if isinstance(m, str) else m
        a, b = ids[bytes(u2b[c] for c in left)], ids[bytes(u2b[c] for c in right)]
        ids[bytes(u2b[c] for c in left + right)] = 256 + len(out)
        out.append((a, b))
    return out


def train_tokenizers_bpe(text: str, vocab_size: int):
    """Train `tokenizers`' byte-level BPE the way `train_bpe` trains (GPT-2 regex, all 256 bytes, no specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def bytes_per_token(text: str, encode: Callable[[str], list[int]]) -> float:
    """UTF-8 bytes of `text` divided by the number of tokens `encode` makes of it."""
    n = len(encode(text))
    if n == 0:
        raise ValueError("the text encodes to zero tokens")
    return len(text.encode("utf-8")) / n
