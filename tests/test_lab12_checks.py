"""Lab 12's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, get_worker_info

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab12
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_12_data_loading.ipynb",
                       {"np": np, "torch": torch, "IterableDataset": IterableDataset,
                        "get_worker_info": get_worker_info})
TOKENS = (np.arange(8 * 40 + 1) % 1000).astype(np.uint16)


def _rejects(check, *fns, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(*fns)
    return str(e.value)


def test_solution_passes_every_check(capsys):
    lab12.check_1(SOL["write_shard_file"], SOL["read_document"])
    lab12.check_2(SOL["list_bytes_per_token"])
    lab12.check_3(SOL["pack"])
    lab12.check_4(SOL["document_causal_mask"])
    lab12.check_5(SOL["reader_windows"])
    lab12.check_6(SOL["Stream"], TOKENS)
    assert capsys.readouterr().out.count("✅") == 6


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(ExerciseNotDone):
        lab12.check_3(stub)


def test_check_1_rejects_wrong_shards():
    read = SOL["read_document"]

    def no_eos(path, docs, eos_id, vocab_size):
        np.concatenate([np.asarray(d) for d in docs]).astype(np.uint16).tofile(path)
        return np.concatenate([[0], np.cumsum([len(d) for d in docs])])

    def int32(path, docs, eos_id, vocab_size):
        np.concatenate([np.append(d, eos_id) for d in docs]).astype(np.int32).tofile(path)
        return np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])])

    def no_leading_zero(path, docs, eos_id, vocab_size):
        SOL["write_shard_file"](path, docs, eos_id, vocab_size)
        return np.cumsum([len(d) + 1 for d in docs])

    def no_vocab_check(path, docs, eos_id, vocab_size):
        np.concatenate([np.append(d, eos_id) for d in docs]).astype(np.uint16).tofile(path)
        return np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])])

    def too_strict(path, docs, eos_id, vocab_size):
        if vocab_size > 65_535:
            raise ValueError("use uint32")
        return no_vocab_check(path, docs, eos_id, vocab_size)

    def fromfile(path, offsets, i):
        return np.fromfile(path, dtype=np.uint16)[offsets[i]:offsets[i + 1]]

    _rejects(lab12.check_1, no_eos, read, match="bytes")
    assert "2" in _rejects(lab12.check_1, int32, read)
    _rejects(lab12.check_1, no_leading_zero, read, match="offsets")
    _rejects(lab12.check_1, no_vocab_check, read, match="uint16")
    _rejects(lab12.check_1, too_strict, read, match="65,536")
    _rejects(lab12.check_1, SOL["write_shard_file"], fromfile, match="memmap")


def test_check_2_rejects_wrong_predictions():
    _rejects(lab12.check_2, lambda ids: 8.0, match="predicted")
    _rejects(lab12.check_2, lambda ids: 36.0, match="predicted")
    _rejects(lab12.check_2, lambda ids: 2.0, match="predicted")
    _rejects(lab12.check_2, lambda ids: 8 + 28 * float(np.mean(np.asarray(ids) > 256)), match="as allocated")


def test_check_3_rejects_wrong_packing():
    def drop_remainder(docs, context, pad_id=0):
        ids, which = SOL["pack"](docs, context, pad_id)
        full = int((which >= 0).all(dim=1).sum())
        return ids[:full], which[:full]

    def restart_ids_per_row(docs, context, pad_id=0):
        ids, which = SOL["pack"](docs, context, pad_id)
        return ids, which - which[:, :1].clamp(min=0)

    def pad_doc_id_last(docs, context, pad_id=0):
        ids, which = SOL["pack"](docs, context, pad_id)
        return ids, torch.where(which < 0, torch.full_like(which, len(docs) - 1), which)

    _rejects(lab12.check_3, drop_remainder, match="shape")
    _rejects(lab12.check_3, restart_ids_per_row, match="doc_ids")
    _rejects(lab12.check_3, pad_doc_id_last, match="doc_ids")


def test_check_4_rejects_wrong_masks():
    def causal_only(doc_ids):
        T = doc_ids.shape[-1]
        return torch.ones(*doc_ids.shape, T, dtype=torch.bool).tril()

    def same_doc_only(doc_ids):
        return doc_ids[..., :, None] == doc_ids[..., None, :]

    def transposed(doc_ids):
        return SOL["document_causal_mask"](doc_ids).transpose(-1, -2)

    def as_float(doc_ids):
        return SOL["document_causal_mask"](doc_ids).float()

    _rejects(lab12.check_4, causal_only, match="mask")
    _rejects(lab12.check_4, same_doc_only)
    _rejects(lab12.check_4, transposed, match="transposed")
    _rejects(lab12.check_4, as_float, match="bool")


def test_check_5_rejects_wrong_sharding():
    def worker_only(n, seed, epoch, rank, world_size, worker_id, num_workers):
        return np.random.default_rng([seed, epoch]).permutation(n)[worker_id::num_workers]

    def rank_seeded(n, seed, epoch, rank, world_size, worker_id, num_workers):
        k = rank * num_workers + worker_id
        return np.random.default_rng([seed, epoch, rank]).permutation(n)[k::world_size * num_workers]

    def wrong_slot(n, seed, epoch, rank, world_size, worker_id, num_workers):
        k = rank * world_size + worker_id
        return np.random.default_rng([seed, epoch]).permutation(n)[k::world_size * num_workers]

    def no_epoch(n, seed, epoch, rank, world_size, worker_id, num_workers):
        k = rank * num_workers + worker_id
        return np.random.default_rng(seed).permutation(n)[k::world_size * num_workers]

    def contiguous_blocks(n, seed, epoch, rank, world_size, worker_id, num_workers):
        k, m = rank * num_workers + worker_id, world_size * num_workers
        return np.random.default_rng([seed, epoch]).permutation(n)[np.array_split(np.arange(n), m)[k]]

    assert "twice" in _rejects(lab12.check_5, worker_only)
    _rejects(lab12.check_5, rank_seeded, match="twice")
    _rejects(lab12.check_5, wrong_slot, match="twice")
    _rejects(lab12.check_5, no_epoch, match="expected")
    _rejects(lab12.check_5, contiguous_blocks, match="expected")


def _stream_variant(iter_fn=None, state_fn=None, load_fn=None):
    base = SOL["Stream"]
    ns = {}
    if iter_fn:
        ns["__iter__"] = iter_fn
    if state_fn:
        ns["state_dict"] = state_fn
    if load_fn:
        ns["load_state_dict"] = load_fn
    return type("Variant", (base,), ns)


def _mine(self):
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return SOL["reader_windows"](self.n, self.seed, self.epoch, 0, 1, wid, nw)


def test_check_6_rejects_streams_that_do_not_resume():
    def count_after_yield(self):
        mine = _mine(self)
        while self.yielded < len(mine):
            yield self.window(int(mine[self.yielded]))
            self.yielded += 1

    def never_skips(self):
        for g in _mine(self):
            self.yielded += 1
            yield self.window(int(g))

    def forgets_state(self, state):
        pass

    _rejects(lab12.check_6, _stream_variant(iter_fn=count_after_yield), TOKENS, match="differs|batches")
    _rejects(lab12.check_6, _stream_variant(iter_fn=never_skips), TOKENS, match="batches")
    _rejects(lab12.check_6, _stream_variant(load_fn=forgets_state), TOKENS, match="batches")
