"""utils.shards: shard round trip and refusal of corrupt shards, padding statistics, packing with the
document-causal mask (== each document run alone), exact resume with StatefulDataLoader, and rank × worker sharding
that is disjoint and complete (two real processes)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from utils import shards
from utils.model import sharp_tiny_llama


@pytest.fixture(autouse=True)
def _current_shards_module():
    """tests/test_grade.py's sandbox swaps utils.* entries of sys.modules: pickling a dataset for DataLoader workers
    needs the class that sys.modules holds now, not the one imported when this file was collected."""
    global shards
    shards = importlib.import_module("utils.shards")


def _docs(n_docs=12, vocab=1000, seed=0, lo=1, hi=60):
    g = np.random.default_rng(seed)
    return [g.integers(0, vocab - 1, g.integers(lo, hi)).tolist() for _ in range(n_docs)]


@pytest.mark.parametrize("vocab,dtype", [(1000, np.uint16), (65_536, np.uint16), (70_000, np.uint32)])
def test_shard_round_trip(tmp_path, vocab, dtype):
    docs = _docs(vocab=vocab)
    docs[0] = [vocab - 2, 0, vocab - 2]
    path = shards.write_shard(tmp_path / "s", docs, vocab_size=vocab, eos_id=vocab - 1)
    s = shards.open_shard(path)
    assert s.tokens.dtype == dtype and isinstance(s.tokens, np.memmap)
    assert len(s) == len(docs) and s.n_tokens == sum(len(d) + 1 for d in docs)
    assert path.stat().st_size == s.n_tokens * np.dtype(dtype).itemsize
    for i, d in enumerate(docs):
        assert s.doc(i).tolist() == d + [vocab - 1]
    assert s.doc_lengths().tolist() == [len(d) + 1 for d in docs]
    assert shards.open_shard(tmp_path / "s").n_tokens == s.n_tokens      # with or without ".bin"


def test_uint16_refuses_big_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="uint32"):
        shards.write_shard(tmp_path / "s", [[1, 2]], vocab_size=100_000, eos_id=0, dtype=np.uint16)
    assert shards.dtype_for_vocab(65_536) == np.uint16 and shards.dtype_for_vocab(65_537) == np.uint32
    with pytest.raises(ValueError, match="outside"):
        shards.write_shard(tmp_path / "s", [[1, 1000]], vocab_size=1000, eos_id=0)
    with pytest.raises(ValueError, match="eos_id"):
        shards.write_shard(tmp_path / "s", [[1]], vocab_size=10, eos_id=10)


def test_corrupt_shards_are_refused(tmp_path):
    path = shards.write_shard(tmp_path / "s", _docs(), vocab_size=1000, eos_id=999)
    data = path.read_bytes()
    path.write_bytes(data[:-2])                                  # one token lost
    with pytest.raises(ValueError, match="corrupt"):
        shards.open_shard(path)
    path.write_bytes(data[:-1])                                  # half a token
    with pytest.raises(ValueError, match="corrupt"):
        shards.open_shard(path)
    path.write_bytes(data)
    idx = tmp_path / "s.idx.npy"
    offsets = np.load(idx)
    np.save(idx, offsets[:-1])                                   # index of another size
    with pytest.raises(ValueError, match="corrupt"):
        shards.open_shard(path)
    offsets[3] = offsets[2]                                      # an empty "document": not increasing
    np.save(idx, offsets)
    with pytest.raises(ValueError, match="corrupt"):
        shards.open_shard(path)
    (tmp_path / "s.idx.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        shards.open_shard(path)


def test_padding_stats_by_hand_and_errors():
    # lengths 3 and 5 at context 4: pieces 3, 4, 1 -> batch of 3 padded to 4: 12 slots, 8 real
    st = shards.padding_stats([3, 5], context=4, batch_size=3)
    assert (st["real"], st["total"], st["sequences"]) == (8, 12, 3)
    assert st["pad_fraction"] == pytest.approx(1 / 3)
    assert shards.padding_stats([3, 5], context=4, batch_size=1)["pad_fraction"] == 0
    assert shards.padding_stats([3, 5], 4, 1, mode="context")["total"] == 12
    with pytest.raises(ValueError, match="longer than every document"):
        shards.padding_stats([3, 5], context=8, batch_size=2)


def test_pack_and_positions():
    ids, doc = shards.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], context=4, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert doc.tolist() == [[0, 0, 0, 1], [1, 2, 2, 2], [2, -1, -1, -1]]
    assert shards.positions_in_document(doc).tolist() == [[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 1, 2]]
    m = shards.document_causal_mask(doc)
    assert m.shape == (3, 4, 4) and m[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]


def test_packed_with_mask_equals_each_document_alone():
    model = sharp_tiny_llama(vocab_size=97, hidden_size=64, num_hidden_layers=2, head_dim=16, std=0.2,
                             attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 97, (n,), generator=g) for n in (7, 13, 5, 20)]
    ids, doc = shards.pack(docs, 48)
    with torch.no_grad():
        packed = model(ids, attention_mask=shards.document_causal_mask(doc)[:, None],
                       position_ids=shards.positions_in_document(doc)).logits[0]
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
        leaky = model(ids).logits[0]
    n = len(alone)
    assert (packed[:n] - alone).abs().max() < 1e-4
    assert (leaky[:n] - alone).abs().max() > 0.1          # a plain causal mask lets documents see each other


def _stream_shard(tmp_path, n_tokens=2000, context=16):
    # token t at position t (mod 65,536): the first token of a window names it
    docs = [list(range(i, min(i + 99, n_tokens - 1))) for i in range(0, n_tokens - 1, 100)]
    return shards.write_shard(tmp_path / "stream", docs, vocab_size=65_536, eos_id=65_535), context


def _window_ids(batches, context):
    return [int(x) // context for b in batches for x in b[0][:, 0]]


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_is_exact(tmp_path, num_workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    path, context = _stream_shard(tmp_path)
    kw = dict(batch_size=4, num_workers=num_workers)
    if num_workers:
        kw["multiprocessing_context"] = "forkserver"

    def loader():
        return StatefulDataLoader(shards.ShardStream(path, context, seed=3), **kw)

    full = [b for b in loader()]
    dl = loader()
    it, head = iter(dl), []
    for _ in range(7):
        head.append(next(it))
    state = dl.state_dict()
    del it, dl
    dl2 = loader()
    dl2.load_state_dict(state)
    tail = list(dl2)
    assert len(head) + len(tail) == len(full)
    for a, b in zip(head + tail, full):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # shuffled, and every window once
    ids = _window_ids(full, context)
    assert sorted(ids) == list(range(len(shards.ShardStream(path, context)))) and ids != sorted(ids)


def test_state_from_another_seed_is_refused(tmp_path):
    path, context = _stream_shard(tmp_path)
    with pytest.raises(ValueError, match="seed"):
        shards.ShardStream(path, context, seed=1).load_state_dict(shards.ShardStream(path, context).state_dict())


def test_workers_are_disjoint_and_complete(tmp_path):
    path, context = _stream_shard(tmp_path)
    stream = shards.ShardStream(path, context, seed=0)
    dl = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="forkserver")
    ids = [int(x[0]) // context for x, _ in dl]
    assert sorted(ids) == list(range(len(stream)))


def test_slots_cover_every_rank_and_worker():
    slots = {shards.shard_slot(r, 3, w, 2) for r in range(3) for w in range(2)}
    assert slots == {(s, 6) for s in range(6)}
    with pytest.raises(ValueError, match="out of range"):
        shards.shard_slot(3, 3, 0, 2)


@pytest.mark.slow
def test_two_processes_see_disjoint_complete_data(tmp_path):
    path, context = _stream_shard(tmp_path)
    n = len(shards.ShardStream(path, context))
    per_rank = shards.distributed_windows([path], context, world_size=2, seed=5, num_workers=2)   # 2 ranks x 2
    assert len(per_rank) == 2 and not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(n))
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 2


def test_loader_argument_errors():
    with pytest.raises(ValueError, match="num_workers >= 1"):
        shards.check_loader_args(0, prefetch_factor=2)
    shards.check_loader_args(2, prefetch_factor=2)
    shards.check_loader_args(0)


def test_window_dataset_and_pickling(tmp_path):
    import pickle

    path, context = _stream_shard(tmp_path)
    ds = shards.WindowDataset(path, context)
    x, y = ds[3]
    assert x[0] == 3 * context and torch.equal(x[1:], y[:-1])
    blob = pickle.dumps(ds)
    assert len(blob) < 1000                   # a worker receives the path, not the tokens
    assert torch.equal(pickle.loads(blob)[3][0], x)
    assert json.loads((tmp_path / "stream.json").read_text())["dtype"] == "uint16"


def test_smollm2_tokenizer_alone_fits_uint16():
    from utils.model import load_tokenizer

    tok = load_tokenizer()
    assert tok.vocab_size == 49_152 and shards.dtype_for_vocab(len(tok)) == np.uint16
    assert tok.backend_tokenizer.token_to_id("<|endoftext|>") == 0
