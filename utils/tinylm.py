"""A tiny decoder-only language model with pluggable attention and FFN blocks, byte-level Shakespeare, a training loop.

Several notebooks train small LMs that differ in one part (the attention in 02, the FFN in 03, the data in 11).
This module holds what they share; the part being taught is written in its notebook and plugged in:

    cfg = TinyConfig(d_model=128, n_layers=2, n_heads=4, context=128)
    model = TinyLM(cfg, attention=lambda cfg: MyAttention(cfg), seed=0)     # ffn defaults to SwiGLU
    train_ids, val_ids = shakespeare_bytes()
    result = train(model, train_ids, val_ids, steps=300, batch_size=16, seed=0)
    result.val_loss                                                          # nats per byte

Interfaces:
- an attention block is an `nn.Module` mapping `x [B, T, d_model] -> [B, T, d_model]`, causal, with its own
  position encoding (use `rope_cos_sin` + `apply_rope`);
- an FFN block maps `x [B, T, d_model] -> [B, T, d_model]`; it may set `self.aux_loss` (a scalar tensor) during
  forward, e.g. a mixture-of-experts balance loss: `TinyLM.forward` sums them into `model.aux_loss` and `train`
  adds that to the loss.

Tokens are bytes (vocabulary 256): with a tiny model a 49k-token vocabulary would make the embedding table most
of the parameters, and each of its rows would be trained on only a handful of examples.

What fits in a lecture (measured on the course machine, 2 threads, AMD EPYC Zen 3 with AVX2 and no native bf16;
other jobs were running, load average 2.1-2.7 on 2 cores, so times are pessimistic):

- Baselines, add-k byte n-grams fitted on the modern-spelling train split, scored on its validation split
  (k = 0.1): 1-gram 3.34, 2-gram 2.50, 3-gram 1.98, 4-gram 1.67 nats/byte (k = 0.01: 4-gram 1.63, 5-gram 1.53).
- Throughput of d=128, 4 layers, context 128, batch 32, in one process, interleaved: default `train` about
  10,000 tokens/s; fused AdamW 1.03x (within the noise), foreach AdamW 0.82x, torch.compile 1.04x after a
  27 s compile (does not pay inside a 90 s budget), bf16 autocast about 2.7x *slower* (no native bf16: emulated).
  The optimizer is not the bottleneck; the matmuls of a model this small are. So there is no speed-up to have
  here, only a schedule.
- `SHAKESPEARE_RECIPE` (that shape, lr 3e-3, warm-up 10%, cosine to lr/10, 300 steps, fused AdamW): validation
  loss on 128 fixed windows at (step, training seconds at load ~2.3): (37, 21 s) 2.63, (74, 57 s) 2.25,
  (111, 94 s) 2.06, (148, 110 s) 1.96, (185, 127 s) 1.87, (222, 143 s) 1.82, (259, 159 s) 1.78,
  (300, 192 s) 1.75 nats/byte — past the trigram (1.98) by 0.23, not yet the 4-gram. At 6,400 tokens/s under
  that load the run took 192 s; on a quiet machine (10,000 tokens/s) 300 steps take about 125 s.
- The same recipe with 200 steps, what a lecture's 60-90 s buys: (25, 10 s) 2.99, (50, 21 s) 2.53,
  (75, 30 s) 2.35, (100, 40 s) 2.20, (125, 50 s) 2.09, (150, 60 s) 2.03, (175, 72 s) 1.98, (200, 83 s) 1.95
  nats/byte at 9,900 tokens/s (load ~2.0): only 0.03 past the trigram — a tie, not a clear margin.
- So inside a 90 s lecture budget one Shakespeare run only ties the trigram on this machine; a clear margin
  (1.75) takes about two minutes. Four variants x three seeds cannot fit (12 runs of 300 steps take about
  25 minutes even on a quiet machine). Compare architectures on `utils.synthetic` (MQAR,
  factual capacity), where a variant-seed takes seconds, or on the real model; keep Shakespeare runs for what
  one or two runs show.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 256  # bytes


# --------------------------------------------------------------------------- tokenization and data
def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of `text` as a 1-D uint8 tensor (token ids 0..255)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).clone()


def decode(ids) -> str:
    """Inverse of `encode` (invalid UTF-8 sequences, possible in sampled text, become U+FFFD)."""
    ids = torch.as_tensor(ids).flatten().tolist()
    if any(not 0 <= i < VOCAB_SIZE for i in ids):
        raise ValueError("byte token ids must be in 0..255")
    return bytes(ids).decode("utf-8", errors="replace")


def shakespeare_bytes(edition: str = "modern", val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) byte tensors of Shakespeare's plays (the last `val_fraction` of every play is validation)."""
    from .corpora import shakespeare_split

    train_text, val_text = shakespeare_split(edition, val_fraction)
    return encode(train_text), encode(val_text)


def get_batch(data: torch.Tensor, batch_size: int, context: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a 1-D token stream: inputs `x` and next-token targets `y`, both [batch_size, context] int64."""
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D token stream, got shape {tuple(data.shape)}")
    if batch_size < 1 or context < 1:
        raise ValueError(f"batch_size and context must be positive, got {batch_size} and {context}")
    if data.numel() <= context:
        raise ValueError(f"need more than context={context} tokens, got {data.numel()}")
    starts = torch.randint(0, data.numel() - context, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx].long()
    return chunk[:, :-1].to(device), chunk[:, 1:].to(device)


def eval_windows(data: torch.Tensor, n_windows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_windows` evenly spaced, fixed windows of a token stream (the same every call): (x, y) [n_windows, context]."""
    if data.numel() <= context:
        raise ValueError(f"need more than context={context} tokens, got {data.numel()}")
    starts = torch.linspace(0, data.numel() - context - 1, n_windows).long()
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


# --------------------------------------------------------------------------- building blocks
@dataclass
class TinyConfig:
    """Shape of a tiny decoder-only LM. Attention/FFN factories may read any extra field from `extra`."""

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # for the default attention; None means n_heads (MHA)
    context: int = 128
    ffn_hidden: int | None = None  # None: about 8/3 d_model, rounded to a multiple of 16 (SwiGLU)
    vocab_size: int = VOCAB_SIZE
    rope_theta: float = 10_000.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if min(self.d_model, self.n_layers, self.n_heads, self.context, self.vocab_size) < 1:
            raise ValueError("d_model, n_layers, n_heads, context and vocab_size must be positive")
        if self.ffn_hidden is None:
            self.ffn_hidden = 16 * math.ceil(8 * self.d_model / 3 / 16)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama's normalization)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [len(positions), dim] of rotary embeddings in the 'rotate half' layout (Llama, HF)."""
    if dim % 2:
        raise ValueError(f"rotary dim must be even, got {dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, dim] by position: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Default attention: grouped-query causal self-attention with RoPE (n_kv_heads = n_heads is plain MHA)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
        self.hd, self.theta = cfg.head_dim, cfg.rope_theta
        self.q = nn.Linear(cfg.d_model, self.n_heads * self.hd, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * self.n_kv * self.hd, bias=False)
        self.o = nn.Linear(self.n_heads * self.hd, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.n_kv, self.hd).permute(2, 0, 3, 1, 4)
        cos, sin = rope_cos_sin(torch.arange(T, device=x.device), self.hd, self.theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    """Llama's FFN: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, cfg: TinyConfig, attention: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model), attention
        self.norm2, self.ffn = RMSNorm(cfg.d_model), ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


# autograd nodes that only move or select elements, and nodes through which a sublayer's output stays linear
_SHAPE_ONLY = ("TBackward", "PermuteBackward", "TransposeBackward", "ViewBackward", "UnsafeViewBackward",
               "ReshapeAliasBackward", "SelectBackward", "SliceBackward", "IndexBackward", "ExpandBackward",
               "CloneBackward", "ToCopyBackward", "SqueezeBackward", "UnsqueezeBackward", "SplitBackward",
               "SplitWithSizesBackward", "UnbindBackward", "AliasBackward", "AsStridedBackward")
_LINEAR_THROUGH = _SHAPE_ONLY + ("AddBackward", "SubBackward", "NegBackward", "MulBackward", "DivBackward",
                                 "IndexAddBackward", "CopySlices", "CatBackward", "StackBackward",
                                 "IndexPutBackward", "ScatterAddBackward", "SumBackward")
_MATMUL = ("MmBackward", "AddmmBackward", "BmmBackward", "BaddbmmBackward", "MvBackward", "LinearBackward",
           "MatmulBackward")


def _node_kind(node) -> str:
    return type(node).__name__.rstrip("0123456789")


def _leaf_params(node, found: set) -> None:
    """Parameters reached from `node` through shape-only ops (a weight feeding a matmul, transposed or sliced)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if hasattr(n, "variable"):
            found.add(id(n.variable))
        elif _node_kind(n) in _SHAPE_ONLY:
            stack += [m for m, _ in n.next_functions]


def _last_matmul_weights(out: torch.Tensor) -> set:
    """ids of the tensors multiplied last into `out`: walk back through linear ops to the first matmuls."""
    found, stack, seen = set(), [out.grad_fn], set()
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        kind = _node_kind(n)
        if kind in _MATMUL:
            for m, _ in n.next_functions:
                _leaf_params(m, found)
        elif kind in _LINEAR_THROUGH:
            stack += [m for m, _ in n.next_functions]
    return found


def residual_output_params(model: TinyLM) -> set[str]:
    """Names of the parameters that write into the residual stream: each block's attention and FFN output projections.

    Found by what they do, not by their names: each sublayer (a copy, in eval mode, so nothing it keeps is touched)
    runs on a random probe, and its output's autograd graph is walked back through linear operations (adds,
    gate multiplications, scatters, slices) to the last matrix multiplications; the weights they multiply are the
    output projections — `o`/`o_proj` of an attention, `down` of a SwiGLU, a shared expert's down and a tensor of
    routed experts' downs alike. The probe has 2·context tokens per sublayer, so that a freshly initialised router
    sends tokens to every expert (experts held as separate modules are found only if some token reaches them).
    """
    found: set[str] = set()
    gen = torch.Generator().manual_seed(0)
    for i, block in enumerate(model.blocks):
        for part in ("attn", "ffn"):
            sub = copy.deepcopy(getattr(block, part)).eval()
            names = {id(p): n for n, p in sub.named_parameters() if p.dim() >= 2}   # matrices, not biases
            for p in sub.parameters():
                p.requires_grad_(True)
            x = torch.randn(2, model.cfg.context, model.cfg.d_model, generator=gen)
            with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
                out = sub(x)
            if not torch.is_tensor(out) or out.grad_fn is None:
                continue
            found |= {f"blocks.{i}.{part}.{names[k]}" for k in _last_matmul_weights(out) if k in names}
    return found


class TinyLM(nn.Module):
    """Embedding -> n_layers pluggable blocks -> RMSNorm -> tied output head. `forward(ids, targets)` -> (logits, loss).

    `attention(cfg)` and `ffn(cfg)` are factories called once per layer (default: GQA/MHA and SwiGLU).
    Parameters are initialised deterministically from `seed` (normal, std 0.02; residual-output projections scaled
    by 1/sqrt(2·n_layers), found by `residual_output_params`), without touching the global random state.
    `residual_out_names` lists the parameters that got the scaled std.
    """

    def __init__(self, cfg: TinyConfig, attention: Callable[[TinyConfig], nn.Module] | None = None,
                 ffn: Callable[[TinyConfig], nn.Module] | None = None, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        attention = attention or CausalSelfAttention
        ffn = ffn or SwiGLU
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg, attention(cfg), ffn(cfg)) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.d_model)
            self.residual_out_names = residual_output_params(self)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * cfg.n_layers) if name in self.residual_out_names else 0.02
                    nn.init.normal_(p, std=std)
        self.aux_loss = torch.zeros(())

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        if ids.shape[-1] > self.cfg.context:
            raise ValueError(f"sequence length {ids.shape[-1]} exceeds the model's context {self.cfg.context}")
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits = self.norm(x) @ self.embed.weight.T
        aux = [m.aux_loss for m in self.modules() if m is not self and torch.is_tensor(getattr(m, "aux_loss", None))]
        self.aux_loss = sum(aux) if aux else torch.zeros((), device=ids.device)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (the tied embedding/head counted once, or not at all)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What a training run produced: losses in nats per token (per byte with byte tokens)."""

    train_losses: list[float]           # every step
    val_steps: list[int]
    val_losses: list[float]             # at val_steps
    seconds: float
    tokens_seen: int
    val_times: list[float] = field(default_factory=list)   # training seconds (evaluation excluded) at val_steps

    @property
    def val_loss(self) -> float:
        """Validation loss at the end of training."""
        return self.val_losses[-1]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, fused: bool = False) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95), weight decay on matrices only; `fused=True` uses torch's fused kernel (opt-in:
    slightly different rounding from the default per-tensor loop)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), **({"fused": True} if fused else {}))


def lr_schedule(lr: float, steps: int, warmup: int, final_ratio: float = 0.1) -> Callable[[int], float]:
    """Learning rate at each step: linear warm-up over `warmup` steps, then cosine decay to `final_ratio`·lr."""
    if warmup < 0 or steps < 1:
        raise ValueError(f"steps must be positive and warmup >= 0, got {steps} and {warmup}")

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    return lr_at


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, context: int, n_windows: int = 32, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over `n_windows` fixed, evenly spaced windows of `data` (deterministic)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = eval_windows(data, n_windows, context)
    total = 0.0
    for i in range(0, n_windows, batch_size):
        _, loss = model(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        total += loss.item() * x[i:i + batch_size].shape[0]
    model.train(was_training)
    return total / n_windows


def train(model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor, steps: int = 300,
          batch_size: int = 16, context: int | None = None, lr: float = 3e-3, weight_decay: float = 0.1,
          warmup: int | None = None, grad_clip: float = 1.0, eval_every: int | None = None, eval_windows: int = 32,
          seed: int = 0, progress: bool = True, desc: str = "training", fused: bool = False,
          compile: bool = False, autocast: torch.dtype | None = None,
          optimizer: Callable[[nn.Module, float, float], torch.optim.Optimizer] | None = None) -> TrainResult:
    """AdamW with linear warm-up and cosine decay to lr/10; batches drawn from a generator seeded by `seed`.

    Same model init + same seed + same thread count -> the same losses. Validation runs every `eval_every`
    steps (default: 4 times per run) and at the end, on fixed windows (`evaluate`).
    Opt-in speed-ups (off by default, so stored results stay as they are): `fused` AdamW kernel, `compile` the
    training forward with torch.compile (compilation time counts in `seconds`), `autocast` to e.g. torch.bfloat16
    (pays off only on CPUs with native bf16; measured in the module docstring). See `Recipe` for a tuned preset.
    `optimizer(model, lr, weight_decay)` replaces `make_optimizer` (e.g. AdamW with low-precision moments); the
    schedule sets each param group's "lr" every step.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    context = context or model.cfg.context
    warmup = max(1, steps // 10) if warmup is None else warmup
    eval_every = eval_every or max(1, steps // 4)
    device = next(model.parameters()).device
    opt = make_optimizer(model, lr, weight_decay, fused=fused) if optimizer is None else optimizer(model, lr,
                                                                                                   weight_decay)
    lr_at = lr_schedule(lr, steps, warmup)
    forward = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(seed)
    train_losses, val_steps, val_losses, val_times = [], [], [], []
    eval_time = 0.0
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch(train_data, batch_size, context, gen, device)
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            _, loss = forward(x, y)
        aux = getattr(model, "aux_loss", None)
        total = loss + aux if torch.is_tensor(aux) else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        train_losses.append(loss.item())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val_steps.append(step + 1)
            t_eval = time.perf_counter()
            val_times.append(t_eval - t0 - eval_time)
            val_losses.append(evaluate(model, val_data, context, eval_windows))
            eval_time += time.perf_counter() - t_eval
            bar.set_postfix(train=f"{train_losses[-1]:.3f}", val=f"{val_losses[-1]:.3f}")
    bar.close()
    model.eval()
    return TrainResult(train_losses, val_steps, val_losses, time.perf_counter() - t0, steps * batch_size * context,
                       val_times)


@dataclass(frozen=True)
class Recipe:
    """A training preset: the model's shape and the optimiser's settings. `run` trains a fresh model with it.

    Opt-in: nothing else in the module uses it, so notebooks that call `train` directly keep their numbers.
    `SHAKESPEARE_RECIPE` is the preset measured in the module docstring.
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 128
    batch_size: int = 32
    steps: int = 300
    lr: float = 3e-3
    warmup: int | None = None
    weight_decay: float = 0.1
    fused: bool = True
    compile: bool = False
    eval_windows: int = 64

    def config(self, **overrides) -> TinyConfig:
        """The TinyConfig of this recipe (`overrides` change any TinyConfig field, e.g. n_kv_heads)."""
        return TinyConfig(**{"d_model": self.d_model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                             "context": self.context, **overrides})

    def run(self, train_data: torch.Tensor, val_data: torch.Tensor, seed: int = 0,
            attention: Callable[[TinyConfig], nn.Module] | None = None,
            ffn: Callable[[TinyConfig], nn.Module] | None = None, device: str | torch.device = "cpu",
            **train_kwargs) -> tuple[TinyLM, TrainResult]:
        """Build TinyLM(config, attention, ffn, seed) on `device` and train it with this recipe (`train_kwargs`
        override any argument of `train`)."""
        model = TinyLM(self.config(), attention=attention, ffn=ffn, seed=seed).to(device)
        kw = dict(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                  weight_decay=self.weight_decay, fused=self.fused, compile=self.compile,
                  eval_windows=self.eval_windows, seed=seed)
        return model, train(model, train_data, val_data, **{**kw, **train_kwargs})


# d=128, 4 layers, context 128, batch 32, 300 steps: 1.75 nats/byte in ~125 s on a quiet machine (module docstring)
SHAKESPEARE_RECIPE = Recipe()

@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, n_new: int, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue a 1-D prompt by `n_new` tokens (greedy at temperature 0, else sampled); no KV cache, for simplicity."""
    if n_new < 0 or temperature < 0:
        raise ValueError(f"n_new and temperature must be >= 0, got {n_new} and {temperature}")
    model.eval()
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt_ids).long().flatten().to(device)
    for _ in range(n_new):
        logits, _ = model(ids[-model.cfg.context:][None])
        last = logits[0, -1]
        if temperature == 0:
            nxt = last.argmax()
        else:
            nxt = torch.multinomial(F.softmax(last / temperature, -1).cpu(), 1, generator=generator)[0].to(device)
        ids = torch.cat([ids, nxt.view(1)])
    return ids
