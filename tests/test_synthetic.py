"""utils.synthetic: MQAR and the fact table are deterministic per seed, oracles reach 100%, bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch

from utils import synthetic, tinylm


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _same(a: synthetic.TaskBatch, b: synthetic.TaskBatch) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.inputs, b.inputs), (a.targets, b.targets), (a.mask, b.mask)))


@pytest.mark.parametrize("kw", [dict(), dict(vocab_size=64, n_pairs=8, n_queries=3, seq_len=40),
                                dict(vocab_size=9, n_pairs=4, seq_len=15)])
def test_mqar_layout_determinism_and_oracle(kw):
    task = synthetic.MQAR(**kw)
    b = task.batch(32, _gen(1))
    assert _same(b, task.batch(32, _gen(1))) and not _same(b, task.batch(32, _gen(2)))
    assert b.inputs.shape == b.targets.shape == b.mask.shape == (32, task.seq_len)
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    assert (b.mask.sum(1) == task.queries).all()
    n = task.n_pairs
    keys = b.inputs[:, 0:2 * n:2]
    assert ((keys >= 1) & (keys <= task.n_keys)).all() and (b.inputs[:, 1:2 * n:2] > task.n_keys).all()
    assert all(len(set(row.tolist())) == n for row in keys)                         # distinct keys per sequence
    assert (b.inputs.max() < task.vocab_size) and (b.inputs.min() >= 0)
    assert synthetic.masked_accuracy(task.oracle(b.inputs), b) == 1.0
    # a model that always answers the first pair's value is near chance
    guess = b.inputs[:, 1:2].expand_as(b.inputs)
    assert synthetic.masked_accuracy(guess, b) < 0.5


def test_mqar_bad_input():
    with pytest.raises(ValueError, match="larger vocabulary"):
        synthetic.MQAR(vocab_size=20, n_pairs=10)
    with pytest.raises(ValueError, match="too short"):
        synthetic.MQAR(vocab_size=256, n_pairs=16, seq_len=40)
    with pytest.raises(ValueError, match="n_queries"):
        synthetic.MQAR(n_pairs=4, n_queries=5)
    with pytest.raises(ValueError, match="batch_size"):
        synthetic.MQAR().batch(0, _gen())
    b = synthetic.MQAR().batch(2, _gen())
    with pytest.raises(ValueError, match="do not match"):
        synthetic.masked_accuracy(torch.zeros(2, 3, dtype=torch.long), b)


def test_fact_table_determinism_oracle_and_bits():
    facts = synthetic.FactTable(n_facts=300, key_len=2, value_len=2, key_vocab=20, value_vocab=16, facts_per_seq=4)
    again = synthetic.FactTable(n_facts=300, key_len=2, value_len=2, key_vocab=20, value_vocab=16, facts_per_seq=4)
    other = synthetic.FactTable(n_facts=300, key_len=2, value_len=2, key_vocab=20, value_vocab=16, facts_per_seq=4,
                                seed=1)
    assert torch.equal(facts.keys, again.keys) and torch.equal(facts.values, again.values)
    assert not torch.equal(facts.values, other.values)
    assert len({tuple(k) for k in facts.keys.tolist()}) == 300                      # distinct keys
    b = facts.batch(8, _gen(3))
    assert _same(b, facts.batch(8, _gen(3)))
    assert b.inputs.shape == (8, facts.seq_len) and (b.mask.sum(1) == 4 * 2).all()
    assert synthetic.masked_accuracy(facts.oracle(b.inputs), b) == 1.0
    full = facts.all_facts()
    assert full.mask.sum() == 300 * 2 and synthetic.masked_accuracy(facts.oracle(full.inputs), full) == 1.0
    assert facts.total_bits == pytest.approx(300 * 2 * 4)

    class Oracle(torch.nn.Module):                       # logits from the lookup table: certain and right
        def __init__(self, confident=True):
            super().__init__()
            self.w, self.confident = torch.nn.Parameter(torch.zeros(1)), confident

        def forward(self, x):
            logits = torch.zeros(*x.shape, facts.vocab_size)
            if self.confident:
                logits.scatter_(2, facts.oracle(x)[..., None], 50.0)
            return logits, None

    assert facts.bits_stored(Oracle()) == pytest.approx({"bits": facts.total_bits, "exact": 1.0,
                                                         "bits_exact": facts.total_bits,
                                                         "total_bits": facts.total_bits}, rel=1e-5)
    know_nothing = facts.bits_stored(Oracle(confident=False))     # uniform over the whole vocabulary
    assert know_nothing["bits"] == 0.0 and know_nothing["exact"] < 0.1


def test_fact_table_bad_input():
    with pytest.raises(ValueError, match="key_vocab\\*\\*key_len"):
        synthetic.FactTable(n_facts=500, key_len=2, key_vocab=20)
    with pytest.raises(ValueError, match="positive"):
        synthetic.FactTable(n_facts=0)
    with pytest.raises(ValueError, match="value_vocab"):
        synthetic.FactTable(value_vocab=1)


def test_tinylm_learns_mqar_above_chance_in_seconds():
    task = synthetic.MQAR(vocab_size=33, n_pairs=4, seq_len=24)
    cfg = tinylm.TinyConfig(d_model=64, n_layers=2, n_heads=4, context=task.seq_len, vocab_size=task.vocab_size)
    model = tinylm.TinyLM(cfg, seed=0)
    chance = 1 / task.n_values
    before = synthetic.task_accuracy(model, task, n_sequences=256)
    r = synthetic.train_on_task(model, task, steps=100, batch_size=64, lr=3e-3, seed=0)
    after = synthetic.task_accuracy(model, task, n_sequences=256)
    assert before < 2 * chance and after > 3 * chance, (before, after)
    assert r.losses[-1] < r.losses[0] - 0.5 * math.log(task.n_values) / 2
    again = synthetic.train_on_task(tinylm.TinyLM(cfg, seed=0), task, steps=3, batch_size=64, seed=0)
    assert again.losses[0] == r.losses[0]                                       # same init, same first batch


def test_copy_task():
    task = synthetic.Copy(vocab_size=20, length=6)
    b = task.batch(16, _gen(0))
    assert _same(b, task.batch(16, _gen(0))) and b.inputs.shape == (16, 12) and (b.mask.sum(1) == 6).all()
    assert (b.inputs[:, 6] == 0).all() and torch.equal(b.targets[:, 6:], b.inputs[:, :6])
    assert synthetic.masked_accuracy(task.oracle(b.inputs), b) == 1.0
    with pytest.raises(ValueError, match="length"):
        synthetic.Copy(length=0)


def test_task_mix_splits_rows_between_tasks_deterministically():
    tasks = tuple(synthetic.MQAR(vocab_size=65, n_pairs=n, seq_len=32) for n in (2, 4, 8))
    mix = synthetic.TaskMix(tasks)
    assert mix.seq_len == 32 and mix.vocab_size == 65
    b = mix.batch(10, _gen(3))
    assert _same(b, mix.batch(10, _gen(3))) and not _same(b, mix.batch(10, _gen(4)))
    assert b.inputs.shape == (10, 32)
    assert b.mask.sum(1).tolist() == [2] * 4 + [4] * 3 + [8] * 3                 # rows 4/3/3, in task order
    g = _gen(3)
    first = tasks[0].batch(4, g)                                                  # the same generator, in order
    assert torch.equal(b.inputs[:4], first.inputs) and torch.equal(b.inputs[4:7], tasks[1].batch(3, g).inputs)
    with pytest.raises(ValueError, match="seq_len"):
        synthetic.TaskMix((tasks[0], synthetic.MQAR(vocab_size=65, n_pairs=2, seq_len=40)))
    with pytest.raises(ValueError, match="non-empty"):
        synthetic.TaskMix(())
    with pytest.raises(ValueError, match="at least"):
        mix.batch(2, _gen())


@pytest.mark.filterwarnings("ignore:There is a performance drop")   # SDPA under vmap: correct, only slower
def test_train_seeds_on_task_equals_training_each_seed_alone():
    task = synthetic.TaskMix(tuple(synthetic.MQAR(vocab_size=17, n_pairs=n, seq_len=16) for n in (2, 4)))
    cfg = tinylm.TinyConfig(d_model=16, n_layers=1, n_heads=2, context=task.seq_len, vocab_size=task.vocab_size)
    seeds = [0, 1, 2]
    kw = dict(steps=4, batch_size=8, lr=3e-2, weight_decay=0.1, grad_clip=0.05)   # a clip that acts on every step
    together = [tinylm.TinyLM(cfg, seed=s) for s in seeds]
    res = synthetic.train_seeds_on_task(together, task, seeds=seeds, **kw)
    for s, m, r in zip(seeds, together, res):
        alone = tinylm.TinyLM(cfg, seed=s)
        ref = synthetic.train_on_task(alone, task, seed=s, fused=False, **kw)
        assert max(abs(a - b) for a, b in zip(r.losses, ref.losses)) < 1e-5
        assert max((p - q).abs().max().item() for p, q in zip(m.parameters(), alone.parameters())) < 1e-5
        assert not m.training
    # without the per-copy clipping the result differs: the test can tell a wrong clip
    loose = [tinylm.TinyLM(cfg, seed=s) for s in seeds]
    synthetic.train_seeds_on_task(loose, task, seeds=seeds, **{**kw, "grad_clip": 0.0})
    assert max((p - q).abs().max().item() for p, q in zip(loose[0].parameters(), together[0].parameters())) > 1e-3
    with pytest.raises(ValueError, match="one seed per model"):
        synthetic.train_seeds_on_task(together, task, steps=1, seeds=[0])
    with pytest.raises(ValueError, match="one architecture"):
        other = tinylm.TinyLM(tinylm.TinyConfig(d_model=32, n_layers=1, n_heads=2, context=16, vocab_size=17))
        synthetic.train_seeds_on_task([together[0], other], task, steps=1, seeds=[0, 1])
    with pytest.raises(ValueError, match="steps"):
        synthetic.train_seeds_on_task(together, task, steps=0, seeds=seeds)
