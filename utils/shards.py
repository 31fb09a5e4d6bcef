"""Token shards on disk and the loader around them (notebooks 12 and 13, lab 12's checks).

A shard is three files next to each other:
  NAME.bin      the token ids of every document, each followed by the separator (eos) id, as raw uint16 (or uint32)
  NAME.idx.npy  int64 offsets: document i is tokens[offsets[i]:offsets[i+1]] (separator included); n_docs + 1 values
  NAME.json     {"format", "dtype", "vocab_size", "eos_id", "n_tokens", "n_docs"}
Reading maps the .bin file (np.memmap): no copy, and only the pages touched enter RAM.

Also here: packing and padding statistics, the document-causal mask, a map-style window dataset and `ShardStream`,
an iterable dataset over shards with deterministic shuffling, sharding by (rank, worker) and a state_dict that
torchdata's StatefulDataLoader saves and restores. Datasets hold paths, not arrays: DataLoader workers open the
memmaps themselves, so a worker does not receive a copy of the data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
UINT16_TOKENS = 1 << 16   # ids 0..65,535


def _paths(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    p = Path(path)
    if p.suffix == ".bin":
        p = p.with_suffix("")
    return p.with_name(p.name + ".bin"), p.with_name(p.name + ".idx.npy"), p.with_name(p.name + ".json")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary: uint16 up to 65,536 tokens, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= UINT16_TOKENS:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size:,} does not fit uint32")


def _check_dtype(dtype, vocab_size: int) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise ValueError(f"shard dtype must be uint16 or uint32, got {dtype}")
    if dtype == np.uint16 and vocab_size > UINT16_TOKENS:
        raise ValueError(f"a vocabulary of {vocab_size:,} tokens does not fit uint16 shards (ids 0..65,535, at most "
                         f"65,536 tokens): use dtype=np.uint32 (4 bytes per token)")
    return dtype


def write_shard(path: str | os.PathLike, docs: Iterable[Sequence[int]], vocab_size: int, eos_id: int,
                dtype=None) -> Path:
    """Write documents of token ids as one shard (each document followed by `eos_id`); returns the .bin path."""
    dtype = _check_dtype(dtype_for_vocab(vocab_size) if dtype is None else dtype, vocab_size)
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is not a token of a {vocab_size:,}-token vocabulary")
    bin_path, idx_path, meta_path = _paths(path)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    lengths = []
    with open(bin_path, "wb") as f:
        for i, doc in enumerate(docs):
            a = np.asarray(doc, dtype=np.int64)
            if a.ndim != 1:
                raise ValueError(f"document {i} must be a 1-D sequence of token ids, got shape {a.shape}")
            if a.size and (a.min() < 0 or a.max() >= vocab_size):
                raise ValueError(f"document {i} has token id {int(a.min() if a.min() < 0 else a.max())} outside "
                                 f"0..{vocab_size - 1}")
            np.append(a, eos_id).astype(dtype).tofile(f)
            lengths.append(a.size + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    np.save(idx_path, offsets)
    meta = {"format": FORMAT, "dtype": dtype.name, "vocab_size": int(vocab_size), "eos_id": int(eos_id),
            "n_tokens": int(offsets[-1]), "n_docs": len(lengths)}
    meta_path.write_text(json.dumps(meta, indent=1))
    return bin_path


@dataclass
class Shard:
    """An opened shard: `tokens` (read-only memmap), `offsets` (int64, n_docs + 1) and the metadata."""

    path: Path
    tokens: np.ndarray
    offsets: np.ndarray
    vocab_size: int
    eos_id: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc(self, i: int) -> np.ndarray:
        """Document i's tokens, its separator included."""
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def doc_lengths(self) -> np.ndarray:
        """Tokens per document, separator included."""
        return np.diff(self.offsets)


def open_shard(path: str | os.PathLike) -> Shard:
    """Open a shard for reading, refusing one whose index and metadata do not match its data file."""
    bin_path, idx_path, meta_path = _paths(path)
    for p in (bin_path, idx_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"shard file {p} is missing (write the shard with utils.shards.write_shard)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"shard {bin_path.name}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    dtype = _check_dtype(meta["dtype"], meta["vocab_size"])
    offsets = np.load(idx_path, allow_pickle=False)
    size = bin_path.stat().st_size
    problems = []
    if size % dtype.itemsize:
        problems.append(f"the data file holds {size:,} bytes, not a whole number of {dtype.name} tokens")
    n_file = size // dtype.itemsize
    if offsets.ndim != 1 or len(offsets) != meta["n_docs"] + 1:
        problems.append(f"the index has {offsets.size} offsets for {meta['n_docs']:,} documents")
    elif offsets[0] != 0 or np.any(np.diff(offsets) < 1):
        problems.append("the index offsets do not start at 0 and increase")
    elif int(offsets[-1]) != meta["n_tokens"] or n_file != meta["n_tokens"]:
        problems.append(f"the index says {int(offsets[-1]):,} tokens, the metadata {meta['n_tokens']:,}, "
                        f"the data file holds {n_file:,}")
    if problems:
        raise ValueError(f"shard {bin_path.name} is corrupt: {'; '.join(problems)}. Refusing to read it: "
                         f"write it again from the corpus")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n_file,))
    return Shard(bin_path, tokens, offsets, int(meta["vocab_size"]), int(meta["eos_id"]))


# --------------------------------------------------------------------------- packing and padding
def padding_stats(doc_lengths: Sequence[int], context: int, batch_size: int, mode: str = "longest",
                  seed: int = 0) -> dict:
    """Pad tokens when documents (cut into pieces of at most `context`) are batched in shuffled order and each batch
    is padded to its longest sequence (`mode="longest"`) or to `context` (`mode="context"`).

    Returns {"real", "total", "pad_fraction", "sequences"}; packing the same tokens needs ceil(real / context) rows.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if context < 1 or batch_size < 1:
        raise ValueError(f"context and batch_size must be positive, got {context} and {batch_size}")
    if mode not in ("longest", "context"):
        raise ValueError(f"mode must be 'longest' or 'context', got {mode!r}")
    if lengths.size == 0 or lengths.min() < 1:
        raise ValueError("doc_lengths must be a non-empty list of positive lengths")
    if context > lengths.max():
        raise ValueError(f"context {context:,} is longer than every document (the longest has {int(lengths.max()):,} "
                         f"tokens): padding would fill every sequence with pad tokens; pack documents instead, or "
                         f"use a context of at most {int(lengths.max()):,}")
    full, rest = lengths // context, lengths % context
    seqs = np.concatenate([np.full(int(full.sum()), context), rest[rest > 0]])
    seqs = seqs[np.random.default_rng(seed).permutation(len(seqs))]
    n_batches = -(-len(seqs) // batch_size)
    padded = np.zeros(n_batches * batch_size, dtype=np.int64)
    padded[:len(seqs)] = seqs
    per_batch = padded.reshape(n_batches, batch_size)
    real = int(seqs.sum())
    if mode == "context":
        total = len(seqs) * context
    else:
        counts = (per_batch > 0).sum(1)
        total = int((per_batch.max(1) * counts).sum())
    return {"real": real, "total": total, "pad_fraction": 1 - real / total, "sequences": len(seqs)}


def pack(docs: Sequence[Sequence[int]], context: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate documents and cut the stream into rows of `context` tokens.

    Returns (ids, doc_ids), both [rows, context]: doc_ids[r, t] is the index of the document token t came from, -1 on
    the padding that fills the last row. A document cut by a row boundary keeps its index on both sides."""
    if context < 1:
        raise ValueError(f"context must be positive, got {context}")
    if len(docs) == 0:
        raise ValueError("pack needs at least one document")
    ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
    which = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(docs)])
    rows = -(-len(ids) // context)
    out_ids = np.full(rows * context, pad_id, dtype=np.int64)
    out_doc = np.full(rows * context, -1, dtype=np.int64)
    out_ids[:len(ids)], out_doc[:len(ids)] = ids, which
    return torch.from_numpy(out_ids.reshape(rows, context)), torch.from_numpy(out_doc.reshape(rows, context))


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [..., T, T] (True = may attend): causal, and only within the same document."""
    same = doc_ids[..., :, None] == doc_ids[..., None, :]
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return same & causal


def positions_in_document(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token within its own document segment (restarting at 0 where the document id changes)."""
    T = doc_ids.shape[-1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(-1).values
    return idx - first


# --------------------------------------------------------------------------- datasets
def check_loader_args(num_workers: int, prefetch_factor: int | None = None) -> None:
    """DataLoader arguments that make sense together (a clear error instead of a surprise)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if prefetch_factor is not None and num_workers == 0:
        raise ValueError(f"prefetch_factor={prefetch_factor} needs worker processes: with num_workers=0 the main "
                         f"process loads each batch when it is asked for, so there is nothing to prefetch. Set "
                         f"num_workers >= 1, or leave prefetch_factor=None")
    if prefetch_factor is not None and prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")


class WindowDataset(torch.utils.data.Dataset):
    """Map-style: item i = (x, y), the i-th non-overlapping window of `context` + 1 tokens of a shard, as int64."""

    def __init__(self, path: str | os.PathLike, context: int):
        self.path, self.context = str(path), int(context)
        self._shard: Shard | None = None
        self._len = (open_shard(self.path).n_tokens - 1) // self.context

    def __getstate__(self):
        return {**self.__dict__, "_shard": None}   # workers get the path and open the memmap themselves

    @property
    def shard(self) -> Shard:
        if self._shard is None:
            self._shard = open_shard(self.path)
        return self._shard

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        if not 0 <= i < self._len:
            raise IndexError(f"window {i} out of range 0..{self._len - 1}")
        w = torch.from_numpy(self.shard.tokens[i * self.context:(i + 1) * self.context + 1].astype(np.int64))
        return w[:-1], w[1:]


class TextWindows(torch.utils.data.Dataset):
    """Map-style, tokenizing on the fly: item i = (x, y) from the first `context` + 1 tokens of text chunk i.

    `encode` maps a string to a list of ids and must be picklable (a `tokenizers.Tokenizer`'s encode, or the course's
    pure-Python `utils.bpe.BPETokenizer.encode`). Short chunks are padded with `pad_id`. `memo=False` empties the
    encoder's word cache (`_cache`, as `BPETokenizer` has) before every item: preprocessing that cannot be memoised."""

    def __init__(self, chunks: Sequence[str], encode, context: int, pad_id: int = 0, memo: bool = True):
        self.chunks, self.encode, self.context, self.pad_id = list(chunks), encode, int(context), pad_id
        self.memo = memo
        if not memo and not hasattr(getattr(encode, "__self__", None), "_cache"):
            raise ValueError("memo=False needs an encoder method whose object has a `_cache` (utils.bpe.BPETokenizer)")

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        if not self.memo:
            self.encode.__self__._cache.clear()
        ids = self.encode(self.chunks[i])
        ids = getattr(ids, "ids", ids)[: self.context + 1]
        ids = list(ids) + [self.pad_id] * (self.context + 1 - len(ids))
        w = torch.tensor(ids, dtype=torch.int64)
        return w[:-1], w[1:]


def shard_slot(rank: int, world_size: int, worker_id: int, num_workers: int) -> tuple[int, int]:
    """(slot, n_slots): reader number `rank * num_workers + worker_id` of `world_size * num_workers` readers."""
    if world_size < 1 or num_workers < 1:
        raise ValueError(f"world_size and num_workers must be >= 1, got {world_size} and {num_workers}")
    if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
        raise ValueError(f"rank {rank} / worker {worker_id} out of range for world_size {world_size}, "
                         f"num_workers {num_workers}")
    return rank * num_workers + worker_id, world_size * num_workers


class ShardStream(torch.utils.data.IterableDataset):
    """Iterable over the `context` + 1 token windows of one or more shards, shuffled per epoch from `seed`, each
    reader (rank × DataLoader worker) taking every n-th window of the shuffled order, so readers are disjoint and
    together complete. `state_dict()` / `load_state_dict()` make it resumable (torchdata's StatefulDataLoader
    calls them in every worker)."""

    def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, context: int, seed: int = 0,
                 shuffle: bool = True, rank: int | None = None, world_size: int | None = None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths, self.context, self.seed, self.shuffle = [str(p) for p in paths], int(context), int(seed), shuffle
        if not self.paths:
            raise ValueError("ShardStream needs at least one shard")
        if self.context < 1:
            raise ValueError(f"context must be positive, got {context}")
        self.rank, self.world_size = rank, world_size
        self.windows_per_shard = [(open_shard(p).n_tokens - 1) // self.context for p in self.paths]
        self.epoch, self.yielded = 0, 0
        self._shards: list[Shard] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_shards": None}

    def __len__(self) -> int:
        return sum(self.windows_per_shard)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (a new shuffle) from its beginning."""
        self.epoch, self.yielded = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "yielded": self.yielded, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"the saved loader state was made with seed {state['seed']}, this stream has {self.seed}")
        self.epoch, self.yielded = int(state["epoch"]), int(state["yielded"])

    def _reader(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return shard_slot(rank, world, wid, nw)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Global window numbers of an epoch in shuffled order (the same in every process)."""
        n = len(self)
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def my_windows(self, epoch: int | None = None) -> np.ndarray:
        """The global window numbers this reader yields in an epoch, in order."""
        slot, n_slots = self._reader()
        return self.order(epoch)[slot::n_slots]

    def window(self, g: int) -> np.ndarray:
        """Global window g as int64 (context + 1 tokens)."""
        if self._shards is None:
            self._shards = [open_shard(p) for p in self.paths]
        k = int(g)
        for shard, n in zip(self._shards, self.windows_per_shard):
            if k < n:
                return shard.tokens[k * self.context:(k + 1) * self.context + 1].astype(np.int64)
            k -= n
        raise IndexError(f"window {g} out of range")

    def __iter__(self):
        mine = self.my_windows()
        while self.yielded < len(mine):
            w = torch.from_numpy(self.window(mine[self.yielded]))
            self.yielded += 1
            yield w[:-1], w[1:]


def _rank_windows(rank: int, world_size: int, port: int, paths: list[str], context: int, seed: int,
                  num_workers: int, out: str) -> None:
    """One process of `distributed_windows`: join a gloo group, read its share, gather every rank's window ids."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        stream = ShardStream(paths, context, seed=seed)
        seen = []
        if num_workers == 0:
            seen = [int(g) for g in stream.my_windows()]
        else:
            for w in range(num_workers):
                slot, n_slots = shard_slot(rank, world_size, w, num_workers)
                seen += [int(g) for g in stream.order()[slot::n_slots]]
        gathered = [None] * world_size
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_windows(paths: Sequence[str | os.PathLike], context: int, world_size: int = 2, seed: int = 0,
                        num_workers: int = 0) -> list[list[int]]:
    """Start `world_size` processes (torch.distributed, gloo on 127.0.0.1); each computes the windows its rank reads
    (as ShardStream does under torch.distributed); returns every rank's list of global window numbers."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "windows.json")
        mp.start_processes(_rank_windows, args=(world_size, free_port(), [str(p) for p in paths], context, seed,
                                                num_workers, out),
                           nprocs=world_size, join=True, start_method="spawn")
        return json.loads(Path(out).read_text())
