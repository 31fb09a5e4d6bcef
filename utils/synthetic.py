"""Synthetic tasks with a known optimum, for comparing architectures at laptop scale: MQAR and factual capacity.

On real text a tiny model trained for a minute has barely started to use attention or extra experts, so two
variants differ by about one seed's noise (see `utils.tinylm`). These tasks are built so that the part being
compared decides the outcome, an oracle reaches 100%, and a run takes seconds:

- **MQAR**, multi-query associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927, §3): a sequence of
  key–value pairs, then queries of some of the keys; the model must emit each queried key's value. It needs
  attention that can look up an arbitrary earlier position: the number of pairs, the gap between a pair and its
  query, and the attention's state (KV heads, latent size, window) decide how much is recalled.
- **Factual capacity** (Allen-Zhu & Li 2024, "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling
  Laws", arXiv:2404.05405: about 2 bits of knowledge per parameter after enough exposures): a fixed random table
  of facts `key tokens -> value tokens`; `FactTable.bits_stored` measures how much of it a model holds, so models
  with more total parameters at equal active compute (MoE vs dense) can be compared by what they store;
- **copy / induction** (`Copy`): a random sequence, a separator, the same sequence again — for multi-token
  prediction and speculative drafts.

Both produce token ids for a causal LM: `TaskBatch.inputs` [B, T], `targets` [B, T] (the next token) and `mask`
[B, T] (True where the position is scored). `lm_targets` sets unscored targets to -100, which `TinyLM.forward`'s
cross-entropy ignores, so `model(batch.inputs, batch.lm_targets)` trains on the answers only.
`train_on_task` runs the training loop of `utils.tinylm` on batches of a task. Batches come from a
`torch.Generator`, so a seed fixes the data exactly and the global random state is never used.

Measured separations (course machine, 2 threads, load average about 2 on 2 cores; TinyLM d=64, 2 layers, 4 heads,
batch 64, lr 3e-3, 3 paired seeds, difference with a 95% t-interval over seeds, 2 degrees of freedom); only the
smallest MQAR comparison resolves at these budgets, and the numbers say why:

- MQAR, full attention vs a sliding window of 8 (vocab 128, 8 pairs, seq_len 64, 300 steps, about 29 s per
  variant-seed): accuracy 0.193 vs 0.016 (chance 0.016); window − full = −0.176, interval [−0.384, +0.031]:
  not resolved. The window is at chance on every seed, but full attention is still early in learning recall
  (0.14 / 0.29 / 0.15 across seeds), and that spread dominates the interval.
- MQAR, smaller (vocab 64, 4 pairs, seq_len 32, 400 steps, about 21 s per variant-seed), full attention vs a
  window of 4: accuracy 0.359 vs 0.052 (chance 0.031); window − full = −0.307, interval [−0.604, −0.009]:
  holds, just (full attention per seed 0.28 / 0.29 / 0.51: still learning, hence the wide interval). So about
  2 minutes of training (3 seeds x 2 variants x 21 s) separates full from windowed attention; MHA vs MQA/GQA/MLA,
  whose recall gap is smaller, will need longer runs or a larger task than measured here.
- MQAR as notebook 02 runs it (`TaskMix` of 2/4/8 pairs, seq_len 32, vocab 64; TinyLM d=32 with 4 heads of 8,
  batch 32, lr 1e-2, 80 steps, about 2.5 s per variant-seed including scoring; load average about 1.5): MHA
  recalls 0.236 / 0.129 / 0.086 at 2 / 4 / 8 pairs, below answering with a random one of the sequence's own
  values (0.511 / 0.277 / 0.151): the models copy values but have not learned the association yet. Window of
  8 − MHA = −0.205 ± 0.097 / −0.096 ± 0.073 / −0.055 ± 0.044: holds at every pair count. MQA (a quarter of
  MHA's cache) −0.067 ± 0.234 / −0.034 ± 0.115 / −0.023 ± 0.062, MLA (latent 8 + RoPE key 4) −0.158 ± 0.173 /
  −0.072 ± 0.097 / −0.042 ± 0.055, GQA-2 +0.015 ± 0.240 / −0.000 ± 0.083 / −0.001 ± 0.059: not resolved.
  A learning rate of 3e-2 did not resolve MQA or MLA either, and 300 steps of MHA alone still stayed below the
  own-value line (0.42–0.56 at 2 pairs).
- What makes MHA learn the association within ~100 steps (prototypes for a redesign of notebook 02 §7, same
  TinyLM d=32, 2 layers, 4 heads of 8, seq_len 32, 2/4/8 pairs, 1 seed unless stated; load average about 1.5–2
  with other jobs outside the lock, so 40–50 ms per step at batch 64, 2 threads). Without a token shift nothing
  tried crossed the own-value line at 4 or 8 pairs: vocab 32, batch 64, lr 3e-2, 300 steps: 0.695 / 0.339 / 0.196;
  with every weight matrix redrawn at std 0.1: 0.715 / 0.400 / 0.237 after 200 steps; batch 32 or lr 5e-2
  stayed at the line. The 2-layer solution needs a previous-token head first (Olsson et al. 2022,
  arXiv:2209.11895), and learning it through RoPE is the slow part. Giving every attention layer the previous
  position's input (x_t + W·x_{t−1}, a one-token shift like H3's shift SSM, arXiv:2212.14052) makes recall one
  lookup; with init std 0.1, lr 3e-2, batch 64: vocab 64, 150 steps: MHA 0.998 / 0.997 / 0.987 (seed 0) and
  1.000 / 1.000 / 0.998 (seed 1); seed 1, every variant: GQA-2 0.998 / 1.000 / 0.999, MQA 0.998 / 0.981 / 0.947,
  MLA (latent 8 + RoPE key 4) 0.998 / 0.988 / 0.982, window of 8 0.045 / 0.043 / 0.034 — the small caches lose a
  little as pairs grow, one seed. At a larger vocabulary the compressed caches learn later instead: vocab 96,
  100 steps, MHA 0.959 / 0.895 / 0.788 vs GQA-2 0.217 / 0.101 / 0.066, MQA 0.170 / 0.074 / 0.041, MLA 0.127 /
  0.078 / 0.042; vocab 128, 120 steps, MHA 1.000 / 0.989 / 0.969 vs MQA 0.146 / 0.063 / 0.040, MLA 0.107 /
  0.042 / 0.034; vocab 128, 70 steps, 3 seeds: MHA 0.898 / 0.765 / 0.577, 0.643 / 0.484 / 0.321, 0.311 / 0.142 /
  0.058 (the onset step is seed-dependent), MQA, MLA and the window below 0.21 on every seed (own-value line
  0.487 / 0.258 / 0.137). A robust setting (100–150 steps at batch 64, 3 seeds x 5 variants) costs about 70–110 s
  on these cores, more than notebook 02 had left (it stored at about 115 s of its 120).
- Notebook 02 §7 as stored (course machine, 2 threads, load average about 2 with other jobs outside the lock):
  one layer instead of two (with the shift, recall is one lookup), FFN hidden 32, batch 32, lr 3e-2, init std
  0.1, 150 steps, vocab 64, 2/4/8 pairs, the 3 seeds of a variant trained together by `train_seeds_on_task`
  (about 5.6 s per variant for all three seeds; 28 s for five variants). Prototypes first: the same at 2 layers
  and FFN 96 learned on some seeds only (MHA 0.44 / 0.11 / 0.78 at 2 pairs); at 1 layer MHA recalls 0.97–1.00
  on every seed at vocab 64 and vocab 128. Stored: MHA 0.998 / 0.996 / 0.987; the latent (MLA, d_c 8 + RoPE 4)
  recalls less at every pair count (−0.913 ± 0.058 at 8 pairs: holds), the window of 8 too (−0.951 ± 0.021);
  GQA-2 (−0.154 ± 0.655) and MQA (−0.095 ± 0.411) not resolved: seed 0 is clearly lower for both (0.52 and 0.69
  at 8 pairs), seeds 1 and 2 level with MHA. A latent of 16 at vocab 64 reached 0.35 / 0.12 / 0.09 at 8 pairs;
  at vocab 128, MQA 0.37 / 0.87 / 0.10 and a latent of 16 0.25 / 0.07 / 0.97 (MHA 0.97–0.98): the compressed
  caches learn at a seed-dependent step, and a larger vocabulary alone does not resolve them at 3 seeds.
- Facts, dense at equal active parameters (FFN hidden 96, 78k parameters) vs MoE (notebook 03's layer: 1 shared
  + 16 routed experts of 32, top-2, bias balancing; 252k parameters), 4,096 facts of 6 bits (24,576 bits),
  500 steps of 512 facts (about 62 exposures per fact), 35 s dense / 41 s MoE per seed: bits stored 2,261 vs
  6,164 (MoE − dense = +3,902, interval [−16,009, +23,813]): not resolved. Per seed the dense model stored
  5,072 / 673 / 1,040 bits and the MoE 767 / 4,973 / 12,751: memorisation switches on at a seed-dependent
  step, so at this length the onset, not the capacity, decides. Longer runs (past the onset for every seed)
  are needed before capacity can show; they were not measured here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the ignore_index of F.cross_entropy


@dataclass
class TaskBatch:
    """Causal-LM batch of a synthetic task: inputs, next-token targets, and which positions are scored."""

    inputs: torch.Tensor   # [B, T] int64
    targets: torch.Tensor  # [B, T] int64, targets[:, t] = the token after inputs[:, t]
    mask: torch.Tensor     # [B, T] bool, True at the scored positions

    @property
    def lm_targets(self) -> torch.Tensor:
        """Targets with unscored positions set to -100 (ignored by F.cross_entropy): train on the answers only."""
        return self.targets.masked_fill(~self.mask, IGNORE)

    def to(self, device: str | torch.device) -> TaskBatch:
        """The same batch on `device`."""
        return TaskBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def masked_accuracy(pred: torch.Tensor, batch: TaskBatch) -> float:
    """Fraction of scored positions where `pred` (token ids [B, T], or logits [B, T, V]) equals the target."""
    if pred.dim() == 3:
        pred = pred.argmax(-1)
    if pred.shape != batch.targets.shape:
        raise ValueError(f"predictions of shape {tuple(pred.shape)} do not match targets {tuple(batch.targets.shape)}")
    n = int(batch.mask.sum())
    if n == 0:
        raise ValueError("the batch has no scored positions")
    return ((pred == batch.targets) & batch.mask).sum().item() / n


def _distinct(n_rows: int, n_choices: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """[n_rows, k] distinct integers from 0..n_choices-1 per row, uniformly at random."""
    return torch.rand(n_rows, n_choices, generator=gen).argsort(-1)[:, :k]


# --------------------------------------------------------------------------- MQAR
@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (Zoology, arXiv:2312.04927), laid out for a causal LM.

    Vocabulary: token 0 is padding, keys are 1..n_keys, values the rest (n_keys = (vocab_size - 1) // 2, as
    Zoology splits the vocabulary in halves). A sequence of `seq_len + 1` tokens holds `n_pairs` distinct keys
    each followed by its value, then a query region of two-token slots: `n_queries` slots, at random places, hold a
    queried key and its value; the others hold padding. Inputs and targets are that sequence shifted by one
    (length `seq_len`); the scored positions are the queried keys, whose target is the value. The further a
    query sits from its pair, the longer the attention must reach back (what a sliding window cannot do).
    """

    vocab_size: int = 256
    n_pairs: int = 16
    n_queries: int | None = None   # None: as many as pairs (every key queried once)
    seq_len: int = 64

    def __post_init__(self):
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3 (padding, a key, a value), got {self.vocab_size}")
        if self.n_pairs < 1:
            raise ValueError(f"n_pairs must be positive, got {self.n_pairs}")
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs={self.n_pairs} distinct keys need a larger vocabulary: vocab_size="
                             f"{self.vocab_size} has {self.n_keys} keys (allowed: n_pairs <= (vocab_size - 1) // 2)")
        q = self.queries
        if not 1 <= q <= self.n_pairs:
            raise ValueError(f"n_queries must be in 1..n_pairs={self.n_pairs}, got {q}")
        slots = (self.seq_len + 1 - 2 * self.n_pairs) // 2
        if slots < q:
            need = 2 * (self.n_pairs + q) - 1
            raise ValueError(f"seq_len={self.seq_len} is too short for {self.n_pairs} pairs and {q} queries: "
                             f"need seq_len >= {need}")

    @property
    def n_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    @property
    def n_values(self) -> int:
        return self.vocab_size - 1 - self.n_keys

    @property
    def queries(self) -> int:
        return self.n_pairs if self.n_queries is None else self.n_queries

    def batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """`batch_size` random sequences (vectorised; the same generator state gives the same batch)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        B, n, q, L = batch_size, self.n_pairs, self.queries, self.seq_len + 1
        keys = _distinct(B, self.n_keys, n, generator) + 1
        values = torch.randint(0, self.n_values, (B, n), generator=generator) + 1 + self.n_keys
        tokens = torch.zeros(B, L, dtype=torch.long)
        tokens[:, 0:2 * n:2], tokens[:, 1:2 * n:2] = keys, values
        asked = _distinct(B, n, q, generator)                          # which pairs are queried
        n_slots = (L - 2 * n) // 2
        slot = _distinct(B, n_slots, q, generator)                    # where each query goes
        pos = 2 * n + 2 * slot                                         # position of the queried key
        rows = torch.arange(B)[:, None]
        tokens[rows, pos] = keys.gather(1, asked)
        tokens[rows, pos + 1] = values.gather(1, asked)
        mask = torch.zeros(B, L - 1, dtype=torch.bool)
        mask[rows, pos] = True
        return TaskBatch(tokens[:, :-1], tokens[:, 1:], mask)

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """The perfect recall: at every key of the query region, the value that followed that key in the pairs."""
        n = self.n_pairs
        table = torch.zeros(inputs.shape[0], self.vocab_size, dtype=torch.long)
        table.scatter_(1, inputs[:, 0:2 * n:2], inputs[:, 1:2 * n:2])
        pred = table.gather(1, inputs)
        pred[:, :2 * n] = 0                                            # not asked inside the pairs themselves
        return pred


@dataclass(frozen=True)
class TaskMix:
    """Batches that mix several tasks of one sequence length in equal shares, e.g. MQAR at several pair counts.

    Zoology (arXiv:2312.04927) trains a model on several MQAR settings at once (its experiment configs list several
    training settings per run) and scores it per setting: one run per model gives a whole accuracy-vs-pairs curve
    (score it with `task_accuracy` on each task).
    A batch of `batch_size` rows gives each task `batch_size // len(tasks)` rows (the first tasks one more when it
    does not divide), drawn from the one generator in task order, so a seed fixes the batch exactly.
    """

    tasks: tuple

    def __post_init__(self):
        if not isinstance(self.tasks, tuple) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty tuple of tasks, got {self.tasks!r}")
        if any(not hasattr(t, "batch") for t in self.tasks):
            raise ValueError("every task must have a .batch(batch_size, generator) method")
        lengths = {t.seq_len for t in self.tasks}
        if len(lengths) != 1:
            raise ValueError(f"the tasks of a mix must share one seq_len, got {sorted(lengths)}")

    @property
    def seq_len(self) -> int:
        return self.tasks[0].seq_len

    @property
    def vocab_size(self) -> int:
        return max(t.vocab_size for t in self.tasks)

    def batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """`batch_size` rows, split between the tasks as equally as possible, concatenated in task order."""
        k = len(self.tasks)
        if batch_size < k:
            raise ValueError(f"batch_size must be at least the number of tasks ({k}) so each gets a row, "
                             f"got {batch_size}")
        sizes = [batch_size // k + (i < batch_size % k) for i in range(k)]
        parts = [t.batch(n, generator) for t, n in zip(self.tasks, sizes)]
        return TaskBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("inputs", "targets", "mask")))


# --------------------------------------------------------------------------- copy (induction)
@dataclass(frozen=True)
class Copy:
    """Copy / induction: `length` random tokens, a separator (token 0), then the same tokens again.

    The second copy is scored: after its first token every next token is predictable by an induction head (find
    the previous occurrence of the current token, emit what followed it), which is what multi-token prediction
    and speculative drafts exploit. The first token after the separator is scored too (it is the first token of
    the sequence, recalled from the start). Tokens are 1..vocab_size-1, drawn with replacement.
    """

    vocab_size: int = 64
    length: int = 16

    def __post_init__(self):
        if self.vocab_size < 2 or self.length < 1:
            raise ValueError(f"vocab_size must be >= 2 and length >= 1, got {self.vocab_size} and {self.length}")

    @property
    def seq_len(self) -> int:
        return 2 * self.length

    def batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """`batch_size` random sequences `x SEP x`, inputs/targets of length 2·length."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        x = torch.randint(1, self.vocab_size, (batch_size, self.length), generator=generator)
        tokens = torch.cat([x, torch.zeros(batch_size, 1, dtype=torch.long), x], dim=1)
        mask = torch.zeros(batch_size, self.seq_len, dtype=torch.bool)
        mask[:, self.length:] = True
        return TaskBatch(tokens[:, :-1], tokens[:, 1:], mask)

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """Position length+j predicts token j of the first copy."""
        pred = torch.zeros_like(inputs)
        pred[:, self.length:] = inputs[:, :self.length]
        return pred


# --------------------------------------------------------------------------- factual capacity
@dataclass
class FactTable:
    """A fixed random table of facts `key (key_len tokens) -> value (value_len tokens)`, drawn from `seed`.

    Token layout (vocab_size ids): 0 is a separator, keys use ids 1..key_vocab, values the next value_vocab ids.
    Keys are distinct; values are uniform and independent, so a fact carries exactly value_len·log2(value_vocab)
    bits that no rule can predict — the model can only memorise them. A training sequence packs
    `facts_per_seq` random facts, each written `key SEP value`; only the value tokens are scored.
    """

    n_facts: int = 1024
    key_len: int = 2
    value_len: int = 1
    key_vocab: int = 64
    value_vocab: int = 64
    facts_per_seq: int = 8
    seed: int = 0

    def __post_init__(self):
        if min(self.n_facts, self.key_len, self.value_len, self.facts_per_seq) < 1:
            raise ValueError("n_facts, key_len, value_len and facts_per_seq must be positive")
        if self.key_vocab < 1 or self.value_vocab < 2:
            raise ValueError(f"key_vocab must be >= 1 and value_vocab >= 2, got {self.key_vocab}, {self.value_vocab}")
        if self.n_facts > self.key_vocab ** self.key_len:
            raise ValueError(f"{self.n_facts} distinct keys of {self.key_len} tokens need key_vocab**key_len >= "
                             f"n_facts; key_vocab={self.key_vocab} gives {self.key_vocab ** self.key_len}")
        gen = torch.Generator().manual_seed(self.seed)
        codes = torch.randperm(self.key_vocab ** self.key_len, generator=gen)[:self.n_facts]
        digits = [(codes // self.key_vocab ** i) % self.key_vocab for i in reversed(range(self.key_len))]
        self.keys = torch.stack(digits, dim=1) + 1                                         # [n_facts, key_len]
        self.values = torch.randint(0, self.value_vocab, (self.n_facts, self.value_len), generator=gen) \
            + 1 + self.key_vocab                                                           # [n_facts, value_len]

    @property
    def vocab_size(self) -> int:
        return 1 + self.key_vocab + self.value_vocab

    @property
    def fact_len(self) -> int:
        return self.key_len + 1 + self.value_len

    @property
    def seq_len(self) -> int:
        """Length of the model inputs (the packed facts minus the last token)."""
        return self.facts_per_seq * self.fact_len - 1

    @property
    def total_bits(self) -> float:
        """Information in the table's values: n_facts · value_len · log2(value_vocab)."""
        return self.n_facts * self.value_len * math.log2(self.value_vocab)

    def _pack(self, fact_ids: torch.Tensor) -> TaskBatch:
        """Sequences of the facts `fact_ids` [B, facts_per_seq]."""
        B, m = fact_ids.shape
        sep = torch.zeros(B, m, 1, dtype=torch.long)
        tokens = torch.cat([self.keys[fact_ids], sep, self.values[fact_ids]], dim=2).reshape(B, -1)
        scored = torch.zeros(self.fact_len, dtype=torch.bool)
        scored[self.key_len:self.key_len + self.value_len] = True      # positions whose *next* token is a value
        mask = scored.repeat(m)[None, :-1].expand(B, -1).clone()
        return TaskBatch(tokens[:, :-1], tokens[:, 1:], mask)

    def batch(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """`batch_size` sequences of facts drawn uniformly (with replacement) from the table."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self._pack(torch.randint(0, self.n_facts, (batch_size, self.facts_per_seq), generator=generator))

    def all_facts(self) -> TaskBatch:
        """Every fact once, in table order (the last sequence padded with repeats of fact 0, which are not scored)."""
        m = self.facts_per_seq
        n_seq = -(-self.n_facts // m)
        ids = torch.zeros(n_seq * m, dtype=torch.long)
        ids[:self.n_facts] = torch.arange(self.n_facts)
        b = self._pack(ids.view(n_seq, m))
        real = torch.arange(n_seq * m).view(n_seq, m) < self.n_facts
        b.mask &= real.repeat_interleave(self.fact_len, dim=1)[:, :-1]
        return b

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """The lookup table: at every position before a value token, the stored value token of that key."""
        lookup = {tuple(k.tolist()): v for k, v in zip(self.keys, self.values)}
        pred = torch.zeros_like(inputs)
        B, T = inputs.shape
        for start in range(0, T - self.key_len + 1, self.fact_len):
            for b in range(B):
                v = lookup.get(tuple(inputs[b, start:start + self.key_len].tolist()))
                if v is not None:
                    stop = min(T, start + self.key_len + self.value_len)
                    pred[b, start + self.key_len:stop] = v[:stop - start - self.key_len]
        return pred

    @torch.no_grad()
    def bits_stored(self, model: nn.Module, batch_size: int = 256) -> dict:
        """How much of the table `model` holds, on every fact once.

        bits: Σ over facts of max(0, value_len·log2(value_vocab) − cross-entropy of the fact's value in bits).
        Values are uniform and independent, so a model that knows nothing about a fact scores 0 on it and one that
        is certain scores its full value_len·log2(value_vocab); clipping at 0 keeps a confidently wrong fact from
        cancelling another's knowledge. (Allen-Zhu & Li, arXiv:2404.05405 §2, define bits of knowledge by a
        similar cross-entropy bound.) Also returned: exact (fraction of facts with every value token the argmax),
        and bits_exact = exact · total_bits.
        """
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        full = self.all_facts()
        ce_bits, correct = [], []
        for i in range(0, full.inputs.shape[0], batch_size):
            x, y, m = (t[i:i + batch_size].to(device) for t in (full.inputs, full.targets, full.mask))
            logits = model(x)[0].float()
            nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none") / math.log(2)
            right = logits.argmax(-1) == y
            B = x.shape[0]
            pad = torch.zeros(B, 1, dtype=torch.bool, device=device)          # the last target is dropped
            per_fact = self.fact_len
            mf = torch.cat([m, pad], 1).view(B, -1, per_fact)
            nf = torch.cat([nll, pad.float()], 1).view(B, -1, per_fact)
            rf = torch.cat([right, pad], 1).view(B, -1, per_fact)
            has = mf.any(-1)
            ce_bits.append((nf * mf).sum(-1)[has].cpu())
            correct.append(((rf | ~mf).all(-1))[has].cpu())
        model.train(was_training)
        ce = torch.cat(ce_bits)
        per_fact_bits = self.value_len * math.log2(self.value_vocab)
        exact = torch.cat(correct).float().mean().item()
        return {"bits": (per_fact_bits - ce).clamp(min=0).sum().item(), "exact": exact,
                "bits_exact": exact * self.total_bits, "total_bits": self.total_bits}


# --------------------------------------------------------------------------- training on a task
@dataclass
class TaskResult:
    """A training run on a synthetic task: loss every step, the final metric, wall time."""

    losses: list[float]
    seconds: float
    metric: float | dict | None = None


def train_on_task(model: nn.Module, task, steps: int, batch_size: int = 64, lr: float = 3e-3,
                  weight_decay: float = 0.0, warmup: int | None = None, seed: int = 0, grad_clip: float = 1.0,
                  fused: bool = True) -> TaskResult:
    """Train `model` on batches of `task` (anything with `.batch(batch_size, generator)`), loss on scored positions.

    AdamW with linear warm-up and cosine decay to lr/10, as `utils.tinylm.train`; batches from a generator seeded
    by `seed`, so the same seed gives every variant the same data (paired seeds). Returns the per-step losses.
    """
    from .tinylm import lr_schedule, make_optimizer

    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    device = next(model.parameters()).device
    opt = make_optimizer(model, lr, weight_decay, fused=fused)
    schedule = lr_schedule(lr, steps, max(1, steps // 10) if warmup is None else warmup)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        b = task.batch(batch_size, gen).to(device)
        _, loss = model(b.inputs, b.lm_targets)
        aux = getattr(model, "aux_loss", None)
        opt.zero_grad(set_to_none=True)
        (loss + aux if torch.is_tensor(aux) else loss).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return TaskResult(losses, time.perf_counter() - t0)


def train_seeds_on_task(models: list[nn.Module], task, steps: int, seeds: list[int], batch_size: int = 64,
                        lr: float = 3e-3, weight_decay: float = 0.0, warmup: int | None = None,
                        grad_clip: float = 1.0) -> list[TaskResult]:
    """Train several copies of one architecture (one per seed) at once, as one batched computation.

    `models[i]` trains exactly as `train_on_task(models[i], task, ..., seed=seeds[i], fused=False)` would (same
    batches, AdamW with matrices decayed, schedule, per-model gradient clipping), but the copies' parameters are
    stacked and the forward pass is `torch.func.vmap`-ed over them (PyTorch's model-ensembling recipe): tiny models
    are overhead-bound on a CPU, so S copies cost little more than one. The models must share one architecture,
    have no auxiliary loss, and use only operations with a vmap rule (explicit matmul + softmax attention: on a CPU
    `F.scaled_dot_product_attention` falls back to a slow per-copy loop). Trained weights are written back into
    `models`; returns one TaskResult per model (per-step losses; `seconds` is the shared wall time).
    """
    from torch.func import functional_call, stack_module_state, vmap

    from .tinylm import lr_schedule

    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if len(models) != len(seeds) or not models:
        raise ValueError(f"need one seed per model, got {len(models)} models and {len(seeds)} seeds")
    shapes = {tuple((n, tuple(p.shape)) for n, p in m.named_parameters()) for m in models}
    if len(shapes) != 1:
        raise ValueError("the models must share one architecture (the same parameter names and shapes)")
    params, buffers = stack_module_state(models)          # {name: [S, *shape]} leaves that require grad
    base = copy.deepcopy(models[0]).to("meta").train()     # the architecture, without its weights

    def loss_of(p, b, inputs, targets):
        return functional_call(base, (p, b), (inputs, targets))[1]

    batched_loss = vmap(loss_of)
    stacked = list(params.values())
    groups = [{"params": [p for p in stacked if p.dim() >= 3], "weight_decay": weight_decay},   # matrices
              {"params": [p for p in stacked if p.dim() < 3], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    schedule = lr_schedule(lr, steps, max(1, steps // 10) if warmup is None else warmup)
    device = stacked[0].device
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        batches = [task.batch(batch_size, g) for g in gens]
        inputs = torch.stack([b.inputs for b in batches]).to(device)
        targets = torch.stack([b.lm_targets for b in batches]).to(device)
        loss = batched_loss(params, buffers, inputs, targets)            # [S]: each copy's loss on its batch
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()                                            # the copies do not interact
        if grad_clip:   # per copy, as clip_grad_norm_ on each model
            grads = [p.grad for p in stacked if p.grad is not None]
            norm = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
            coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
        opt.step()
        losses.append(loss.detach().cpu())
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for i, m in enumerate(models):
            m.load_state_dict({**{k: v[i] for k, v in params.items()}, **{k: v[i] for k, v in buffers.items()}})
            m.eval()
    per_step = torch.stack(losses) if losses else torch.zeros(0, len(models))
    return [TaskResult(per_step[:, i].tolist(), seconds) for i in range(len(models))]


@torch.no_grad()
def task_accuracy(model: nn.Module, task, n_sequences: int = 512, seed: int = 12345, batch_size: int = 256) -> float:
    """Accuracy of `model` on the scored positions of `n_sequences` held-out sequences of `task` (fixed by `seed`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    hits = total = 0
    for i in range(0, n_sequences, batch_size):
        b = task.batch(min(batch_size, n_sequences - i), gen).to(device)
        pred = model(b.inputs)[0].argmax(-1)
        hits += ((pred == b.targets) & b.mask).sum().item()
        total += b.mask.sum().item()
    model.train(was_training)
    return hits / total
