"""Hidden tests of lab 12 (data loading). Each `check_N(...)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import shards
from ..checking import CheckFailed, run_check


def _fixture_docs(seed: int = 0, n: int = 9, vocab: int = 50_000) -> list[list[int]]:
    g = np.random.default_rng(seed)
    docs = [g.integers(0, vocab - 1, int(g.integers(1, 40))).tolist() for _ in range(n)]
    docs[1] = [vocab - 2, 300, 7]          # ids above 32,767: a signed int16 would break them
    return docs


def _is_memmap(a) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


# --------------------------------------------------------------------------- exercise 1
def check_1(write_shard_file, read_document) -> None:
    """Exercise 1: write a uint16 shard (separator after each document, offsets) and read documents via memmap."""

    def tests():
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            docs, eos, vocab = _fixture_docs(), 49_999, 50_000
            ref = shards.write_shard(tmp / "ref", docs, vocab_size=vocab, eos_id=eos)
            ref_offsets = np.load(tmp / "ref.idx.npy")
            mine = tmp / "mine.bin"
            offsets = write_shard_file(mine, docs, eos, vocab)
            if not mine.is_file():
                raise CheckFailed(f"write_shard_file did not create the file {mine.name}")
            got, want = mine.read_bytes(), ref.read_bytes()
            if len(got) != len(want):
                per = len(got) / max(1, sum(len(d) + 1 for d in docs))
                raise CheckFailed(f"the file holds {len(got)} bytes, expected {len(want)} ({per:.1f} bytes per token "
                                  f"incl. separators; uint16 is 2, and every document ends with eos)")
            if got != want:
                raise CheckFailed("the file has the right size but different bytes: uint16 ids in document order, "
                                  "each document followed by eos_id")
            offsets = np.asarray(offsets)
            if offsets.shape != ref_offsets.shape or not np.array_equal(offsets, ref_offsets):
                raise CheckFailed(f"offsets {offsets.tolist()[:5]}... expected {ref_offsets.tolist()[:5]}... "
                                  f"(n_docs + 1 values: 0, then the end of each document, separator included)")
            for i in [0, 1, len(docs) - 1]:
                d = read_document(mine, offsets, i)
                if not _is_memmap(d):
                    raise CheckFailed("read_document must read through np.memmap (a view of the file), not load "
                                      "the whole file into memory")
                if np.asarray(d).dtype != np.uint16 or np.asarray(d).tolist() != docs[i] + [eos]:
                    raise CheckFailed(f"read_document(…, {i}) returned {np.asarray(d).tolist()[:6]}…, expected "
                                      f"{(docs[i] + [eos])[:6]}… as uint16 (separator included)")
            try:
                write_shard_file(tmp / "big.bin", [[1, 2]], 0, 100_352)
            except ValueError as e:
                if "uint32" not in str(e):
                    raise CheckFailed(f"the error for a 100,352-token vocabulary should say to use uint32, got: "
                                      f"{e}") from None
            else:
                raise CheckFailed("a 100,352-token vocabulary does not fit uint16: write_shard_file must raise "
                                  "ValueError (saying to use uint32)")
            try:
                write_shard_file(tmp / "edge.bin", [[65_535]], 0, 65_536)
            except ValueError:
                raise CheckFailed("a 65,536-token vocabulary (ids 0..65,535) fits uint16 and must be "
                                  "accepted") from None
        return "byte-identical to utils.shards.write_shard; documents read back through a memmap."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _measured_list_bytes(ids: np.ndarray) -> float:
    tracemalloc.start()
    lst = ids.tolist()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del lst
    return used / len(ids)


def check_2(list_bytes_per_token) -> None:
    """Exercise 2: predict the bytes per token of a Python list of token ids; graded against a measurement."""

    def tests():
        g = np.random.default_rng(0)
        cases = {"ids all below 256": g.integers(0, 256, 200_000),
                 "ids of a 49k vocabulary": g.integers(0, 49_152, 200_000),
                 "a real mix (30% small ids)": np.where(g.random(200_000) < 0.3, g.integers(0, 256, 200_000),
                                                        g.integers(257, 49_152, 200_000))}
        lines = []
        for name, ids in cases.items():
            pred = float(list_bytes_per_token(ids.astype(np.uint16)))
            meas = _measured_list_bytes(ids.astype(np.uint16))
            if not abs(pred - meas) <= 0.06 * meas:
                raise CheckFailed(f"{name}: predicted {pred:.1f} bytes/token, measured {meas:.1f} (tracemalloc). "
                                  f"Count the list's pointer and, for ids CPython does not cache, the int object "
                                  f"as allocated (measure one)")
            lines.append(f"{name}: predicted {pred:.1f}, measured {meas:.1f}")
        return "; ".join(lines) + " bytes/token."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(pack) -> None:
    """Exercise 3: pack documents into rows of `context` with document ids (-1 on padding)."""

    def tests():
        cases = [([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, 0), ([[5] * 8], 4, 0), ([[1], [2], [3]], 5, 99),
                 ([list(range(10, 23)), [7, 7], list(range(30, 39))], 6, 0)]
        for docs, context, pad in cases:
            got = pack([list(d) for d in docs], context, pad)
            if not (isinstance(got, tuple) and len(got) == 2):
                raise CheckFailed("pack must return a tuple (ids, doc_ids)")
            want = shards.pack(docs, context, pad)
            for what, g, w in [("ids", got[0], want[0]), ("doc_ids", got[1], want[1])]:
                g = torch.as_tensor(g)
                if g.shape != w.shape:
                    raise CheckFailed(f"pack({docs}, {context}): {what} shape {tuple(g.shape)}, expected "
                                      f"{tuple(w.shape)} (rows = ceil(total tokens / context); keep the last, "
                                      f"padded row)")
                if not torch.equal(g.long(), w):
                    raise CheckFailed(f"pack({docs}, {context}, pad_id={pad}): {what} {g.tolist()}, expected "
                                      f"{w.tolist()}")
        return "rows filled in order, documents cut at row ends keep their id, the last row padded with id -1."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def _tiny_model():
    from ..model import sharp_tiny_llama

    return sharp_tiny_llama(vocab_size=101, hidden_size=64, num_hidden_layers=2, head_dim=16, std=0.2,
                            attn_implementation="sdpa")


def check_4(document_causal_mask) -> None:
    """Exercise 4: the document-causal mask, checked against running each document alone."""

    def tests():
        doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [3, 3, 4, 4, 4, 4, 5, 6, 6, 6]])
        got = document_causal_mask(doc)
        want = shards.document_causal_mask(doc)
        if not torch.is_tensor(got) or got.dtype != torch.bool or got.shape != want.shape:
            raise CheckFailed(f"expected a bool tensor of shape {tuple(want.shape)}, got "
                              f"{getattr(got, 'dtype', type(got).__name__)} {tuple(getattr(got, 'shape', ()))}")
        if not torch.equal(got, want):
            if torch.equal(got, want.transpose(-1, -2)):
                raise CheckFailed("the mask is transposed: row i (the query) may attend to columns j <= i")
            r, i, j = (got != want).nonzero()[0].tolist()
            raise CheckFailed(f"row {r}: mask[{i}, {j}] is {bool(got[r, i, j])}, expected {bool(want[r, i, j])} "
                              f"(docs {doc[r, i].item()} and {doc[r, j].item()})")
        model = _tiny_model()
        g = torch.Generator().manual_seed(1)
        docs = [torch.randint(0, 101, (n,), generator=g) for n in (9, 4, 15, 6)]
        ids = torch.cat(docs)[None]
        doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
        with torch.no_grad():
            packed = model(ids, attention_mask=document_causal_mask(doc_ids)[:, None]).logits[0]
            alone = torch.cat([model(d[None]).logits[0] for d in docs])
        diff = (packed - alone).abs().max().item()
        if diff > 1e-4:
            raise CheckFailed(f"a tiny Llama on the packed row with your mask differs from each document alone by "
                              f"{diff:.2e}")
        return "equal to the reference mask; a packed row computes what each document computes alone (|Δ| < 1e-4)."

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def _ref_reader(n, seed, epoch, rank, world_size, worker_id, num_workers):
    slot, n_slots = shards.shard_slot(rank, world_size, worker_id, num_workers)
    return np.random.default_rng([seed, epoch]).permutation(n)[slot::n_slots]


def check_5(reader_windows) -> None:
    """Exercise 5: the windows one reader (rank, worker) takes: disjoint and complete over all readers."""

    def tests():
        for n, seed, epoch, world, workers in [(103, 0, 0, 2, 2), (50, 7, 3, 3, 1), (64, 1, 1, 1, 4), (9, 2, 0, 2, 3)]:
            seen, wrong = [], None
            for r in range(world):
                for w in range(workers):
                    got = np.asarray(reader_windows(n, seed, epoch, r, world, w, workers))
                    want = _ref_reader(n, seed, epoch, r, world, w, workers)
                    seen += got.tolist()
                    if wrong is None and not np.array_equal(got, want):
                        wrong = (r, w, got, want)
            dup = len(seen) - len(set(seen))
            missing = n - len(set(seen) & set(range(n)))
            if dup or missing:
                raise CheckFailed(f"n={n}, world_size={world}, num_workers={workers}: over all readers {dup} windows "
                                  f"are read twice and {missing} never (reader = rank * num_workers + worker_id)")
            if wrong is not None:
                r, w, got, want = wrong
                raise CheckFailed(f"n={n}, seed={seed}, epoch={epoch}, rank {r}, worker {w}: {got.tolist()[:6]}…, "
                                  f"expected {want.tolist()[:6]}… (every reader slices the same permutation "
                                  f"default_rng([seed, epoch]).permutation(n))")
        a = np.asarray(reader_windows(100, 0, 0, 0, 1, 0, 1))
        b = np.asarray(reader_windows(100, 0, 1, 0, 1, 0, 1))
        if np.array_equal(a, b):
            raise CheckFailed("epochs 0 and 1 give the same order: the shuffle must depend on the epoch")
        return "the same shuffled order everywhere, every window read by exactly one reader."

    run_check(5, tests)


# --------------------------------------------------------------------------- exercise 6
def _resume_ok(stream_cls, tokens, context, num_workers, stop, ctx) -> str | None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    kw = dict(batch_size=3, num_workers=num_workers)
    if num_workers:
        kw["multiprocessing_context"] = ctx

    def loader():
        return StatefulDataLoader(stream_cls(tokens, context, seed=11), **kw)

    full = list(loader())
    if not full:
        return "the stream yielded no batches"
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(stop)]
    state = first.state_dict()
    del it, first
    second = loader()
    second.load_state_dict(state)
    tail = list(second)
    got = head + tail
    if len(got) != len(full):
        return (f"with {num_workers} workers, stopped after {stop} batches: the resumed run gave {len(got)} batches in "
                f"all, the uninterrupted one {len(full)} (state_dict must count what was yielded)")
    for k, (a, b) in enumerate(zip(got, full)):
        if not torch.equal(a[0], b[0]):
            return (f"with {num_workers} workers, stopped after {stop} batches: batch {k} after resuming differs from "
                    f"the uninterrupted run")
    return None


def check_6(stream_cls, tokens) -> None:
    """Exercise 6: exact resume of the stream with torchdata's StatefulDataLoader (0 and 2 workers)."""

    def tests():
        context = 8
        worker_runs = [0]
        ctx = None
        if "fork" in mp.get_all_start_methods():
            ctx, worker_runs = mp.get_context("fork"), [0, 2]   # a class defined in a notebook reaches forked workers
        for nw in worker_runs:
            for stop in (1, 4):
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")   # torchdata 0.11
                    problem = _resume_ok(stream_cls, tokens[:8 * 40 + 1], context, nw, stop, ctx)
                if problem:
                    raise CheckFailed(problem)
        extra = "" if 2 in worker_runs else " (0 workers only: this system cannot fork)"
        return f"the batches after a resume equal the uninterrupted run, stopped after 1 and 4 batches{extra}."

    run_check(6, tests)
