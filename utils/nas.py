"""Plumbing for notebook 09 (architecture search): a small space of tiny decoders, its blocks, building and timing.

What is taught — the latency predictor, the quality proxy, the search strategies, the Pareto front — is written in
the notebook. This module holds what it needs that is not the lesson:

- `Arch`, one tiny decoder (depth, width, heads / KV heads, FFN ratio, attention GQA or MLA, FFN dense or MoE),
  validated on construction (heads must divide the width, KV heads the heads);
- `SearchSpace`, the product of a few choices per field, its valid members (`members`) and its size;
- `build(arch, ...)`, a `utils.tinylm.TinyLM` with the arch's blocks plugged in: `LatentAttention` (a compact
  training form of DeepSeek-V2's MLA, taught in notebook 02) and `RoutedFFN` (top-k routed SwiGLU experts, taught
  in notebook 03), or tinylm's own GQA attention and SwiGLU;
- `block_modules(arch)`, the stem and one layer's attention and FFN as separate modules, for a per-block
  latency table; `forward_ms`, best-of-N latency of a module on a fixed input.

    space = SearchSpace()
    arch = space.members()[0]
    model = build(arch, context=32, vocab_size=64, seed=0)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .tinylm import RMSNorm, TinyConfig, TinyLM, apply_rope, rope_cos_sin

ATTENTIONS = ("gqa", "mla")      # gqa with n_kv_heads == n_heads is plain MHA
FFNS = ("dense", "moe")
MOE_EXPERTS, MOE_TOP_K = 4, 2    # each expert has ffn_ratio·d/top_k hidden units: active FFN compute = dense's


@dataclass(frozen=True)
class Arch:
    """One tiny decoder of the search space (MLA ignores n_kv_heads: its cache is a latent, see `LatentAttention`)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn_ratio: int
    attention: str = "gqa"
    ffn: str = "dense"

    def __post_init__(self):
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_ratio"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"invalid architecture: n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"invalid architecture: n_kv_heads={self.n_kv_heads} does not divide "
                             f"n_heads={self.n_heads}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        if self.attention == "mla" and (self.d_model // self.n_heads) < 4:
            raise ValueError(f"MLA needs a head dimension of at least 4, got {self.d_model // self.n_heads}")
        if self.ffn == "moe" and (self.ffn_ratio * self.d_model) % MOE_TOP_K:
            raise ValueError(f"ffn_ratio·d_model must be divisible by top-k={MOE_TOP_K} for the MoE FFN")

    @property
    def attention_kind(self) -> str:
        """'MHA', 'GQA-k' (k KV heads), 'MQA' or 'MLA'."""
        if self.attention == "mla":
            return "MLA"
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        return "MQA" if self.n_kv_heads == 1 else f"GQA-{self.n_kv_heads}"

    def label(self) -> str:
        """Short readable name, e.g. 'L2 d64 h4 GQA-2 ffn×2 moe'."""
        return (f"L{self.n_layers} d{self.d_model} h{self.n_heads} {self.attention_kind} ffn×{self.ffn_ratio} "
                f"{self.ffn}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    """The product of the choices of each `Arch` field; `members()` keeps the valid combinations.

    MLA's members keep n_kv_heads = n_heads (the field means nothing for it), so each MLA shape is counted once.
    """

    n_layers: tuple = (1, 2, 3)
    d_model: tuple = (32, 64)
    n_heads: tuple = (2, 4)
    n_kv_heads: tuple = (1, 2, 4)
    ffn_ratio: tuple = (2, 4)
    attention: tuple = ATTENTIONS
    ffn: tuple = FFNS

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, tuple) or not v:
                raise ValueError(f"empty search space: {f.name} has no choices ({v!r}); give at least one")

    def choices(self) -> dict[str, tuple]:
        """{field: its choices}."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def members(self) -> list[Arch]:
        """Every valid architecture, in a fixed order (invalid combinations are skipped, not an error)."""
        out = []
        for combo in itertools.product(*self.choices().values()):
            kw = dict(zip(self.choices(), combo))
            if kw["attention"] == "mla" and kw["n_kv_heads"] != kw["n_heads"]:
                continue
            try:
                out.append(Arch(**kw))
            except ValueError:
                continue
        if not out:
            raise ValueError(f"empty search space: no valid architecture among the choices {self.choices()}")
        return out


def mutate(arch: Arch, space: SearchSpace, rng) -> Arch:
    """A valid member of `space` that differs from `arch` in one field (the field and its new choice drawn from the
    numpy Generator `rng`; MLA children get n_kv_heads = n_heads; invalid draws are redrawn)."""
    valid = set(space.members())
    names = list(space.choices())
    for _ in range(1000):
        name = names[rng.integers(len(names))]
        options = [c for c in space.choices()[name] if c != getattr(arch, name)]
        if not options:
            continue
        child = {**arch.as_dict(), name: options[rng.integers(len(options))]}
        if child["attention"] == "mla":
            child["n_kv_heads"] = child["n_heads"]
        try:
            child = Arch(**child)
        except ValueError:
            continue
        if child in valid and child != arch:
            return child
    raise ValueError(f"{arch.label()} has no valid one-field mutation in this space")


# --------------------------------------------------------------------------- blocks
class LatentAttention(nn.Module):
    """MLA for training (DeepSeek-V2, arXiv:2405.04434 §2.1): keys and values come up from a shared latent of
    d_model/2 numbers per token, plus one RoPE key of head_dim/2 shared by all heads (the cached part)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.H, self.hd, self.theta = cfg.n_heads, cfg.head_dim, cfg.rope_theta
        self.dr = max(2, (self.hd // 2) // 2 * 2)          # RoPE part of each query/key
        self.dn = self.hd - self.dr                          # position-free part
        self.dc = cfg.d_model // 2                           # latent size
        self.q = nn.Linear(cfg.d_model, self.H * self.hd, bias=False)
        self.kv_a = nn.Linear(cfg.d_model, self.dc + self.dr, bias=False)
        self.kv_norm = RMSNorm(self.dc)
        self.kv_b = nn.Linear(self.dc, self.H * (self.dn + self.hd), bias=False)
        self.o = nn.Linear(self.H * self.hd, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, dn, dr, hd = self.H, self.dn, self.dr, self.hd
        cos, sin = rope_cos_sin(torch.arange(T, device=x.device), dr, self.theta)
        q_nope, q_rope = self.q(x).view(B, T, H, hd).transpose(1, 2).split([dn, dr], dim=-1)
        c, k_rope = self.kv_a(x).split([self.dc, dr], dim=-1)
        kv = self.kv_b(self.kv_norm(c)).view(B, T, H, dn + hd).transpose(1, 2)
        k_nope, v = kv.split([dn, hd], dim=-1)
        k_rope = apply_rope(k_rope[:, None], cos, sin).expand(-1, H, -1, -1)
        q = torch.cat([q_nope, apply_rope(q_rope, cos, sin)], dim=-1)
        y = F.scaled_dot_product_attention(q, torch.cat([k_nope, k_rope], dim=-1), v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, H * hd))


class RoutedFFN(nn.Module):
    """Top-k routed SwiGLU experts (softmax router, gates renormalised over the chosen k), one matmul per expert;
    no balance loss (notebook 03 is about balancing; here a run lasts a few dozen steps)."""

    def __init__(self, cfg: TinyConfig, n_experts: int = MOE_EXPERTS, top_k: int = MOE_TOP_K):
        super().__init__()
        self.E, self.k = n_experts, top_k
        h = cfg.ffn_hidden // top_k
        self.router = nn.Linear(cfg.d_model, n_experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n_experts, cfg.d_model, 2 * h))
        self.down = nn.Parameter(torch.empty(n_experts, h, cfg.d_model))
        nn.init.normal_(self.gate_up, std=0.02)
        nn.init.normal_(self.down, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.router(x).softmax(-1)
        gates, idx = probs.topk(self.k, dim=-1)
        gates = gates / gates.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.E):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            g, u = (x[token] @ self.gate_up[e]).chunk(2, dim=-1)
            out.index_add_(0, token, (F.silu(g) * u) @ self.down[e] * gates[token, slot, None])
        return out.view(shape)


def config(arch: Arch, context: int, vocab_size: int) -> TinyConfig:
    """The TinyConfig of `arch` (FFN hidden = ffn_ratio·d_model)."""
    return TinyConfig(d_model=arch.d_model, n_layers=arch.n_layers, n_heads=arch.n_heads,
                      n_kv_heads=arch.n_kv_heads, context=context, ffn_hidden=arch.ffn_ratio * arch.d_model,
                      vocab_size=vocab_size)


def _factories(arch: Arch) -> tuple[Callable | None, Callable | None]:
    attention = LatentAttention if arch.attention == "mla" else None     # None: tinylm's GQA/MHA
    ffn = RoutedFFN if arch.ffn == "moe" else None                        # None: tinylm's SwiGLU
    return attention, ffn


def build(arch: Arch, context: int, vocab_size: int, seed: int = 0) -> TinyLM:
    """A TinyLM of shape `arch`, initialised from `seed`."""
    if not isinstance(arch, Arch):
        raise ValueError(f"expected an Arch, got {type(arch).__name__}")
    attention, ffn = _factories(arch)
    return TinyLM(config(arch, context, vocab_size), attention=attention, ffn=ffn, seed=seed)


class _Stem(nn.Module):
    """What every arch of one width runs once per forward: embedding, final norm, tied head."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.embed, self.norm = nn.Embedding(cfg.vocab_size, cfg.d_model), RMSNorm(cfg.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embed(ids)) @ self.embed.weight.T


class _Sublayer(nn.Module):
    """x + inner(norm(x)): one residual half of a tinylm Block."""

    def __init__(self, d_model: int, inner: nn.Module):
        super().__init__()
        self.norm, self.inner = RMSNorm(d_model), inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(self.norm(x))


def block_keys(arch: Arch) -> dict[str, str]:
    """The per-block table's keys of `arch`: its stem, its attention sublayer and its FFN sublayer."""
    d = arch.d_model
    attn = f"attn d{d} h{arch.n_heads} " + ("mla" if arch.attention == "mla" else f"kv{arch.n_kv_heads}")
    return {"stem": f"stem d{d}", "attention": attn, "ffn": f"ffn d{d} ×{arch.ffn_ratio} {arch.ffn}"}


def block_modules(arch: Arch, context: int, vocab_size: int, seed: int = 0) -> dict[str, nn.Module]:
    """{table key: module} for the stem (input: ids) and one layer's attention and FFN sublayers (input: x)."""
    cfg = config(arch, context, vocab_size)
    attention, ffn = _factories(arch)
    keys = block_keys(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from .tinylm import CausalSelfAttention, SwiGLU
        return {keys["stem"]: _Stem(cfg).eval(),
                keys["attention"]: _Sublayer(cfg.d_model, (attention or CausalSelfAttention)(cfg)).eval(),
                keys["ffn"]: _Sublayer(cfg.d_model, (ffn or SwiGLU)(cfg)).eval()}


@torch.inference_mode()
def forward_ms(module: nn.Module, inputs: torch.Tensor, repeats: int = 15, warmup: int = 3) -> float:
    """Best-of-`repeats` wall time of `module(inputs)` in milliseconds (after `warmup` untimed calls)."""
    from .timing import benchmark

    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    return benchmark(lambda: module(inputs), warmup=warmup, repeats=repeats).best * 1e3


def token_inputs(context: int, vocab_size: int) -> torch.Tensor:
    """The fixed input of a whole-model or stem timing: one sequence of `context` token ids."""
    return torch.randint(0, vocab_size, (1, context), generator=torch.Generator().manual_seed(0))


def block_inputs(key: str, context: int, vocab_size: int, d_model: int) -> torch.Tensor:
    """The fixed input of the block `key` of `block_modules`: ids for the stem, activations [1, context, d] else."""
    if key.startswith("stem"):
        return token_inputs(context, vocab_size)
    return torch.randn(1, context, d_model, generator=torch.Generator().manual_seed(0))


def flops(arch: Arch, context: int, vocab_size: int) -> int:
    """Matmul FLOPs of one forward of one `context`-token sequence (torch's FlopCounterMode; MoE: as routed)."""
    from .measure import count_flops

    model = build(arch, context, vocab_size).eval()
    with torch.inference_mode():
        return count_flops(lambda: model(token_inputs(context, vocab_size)))[0]


def measure_latency(archs, context: int, vocab_size: int, repeats: int = 30, rounds: int = 3,
                    progress: bool = True) -> tuple[dict[str, float], list[float]]:
    """(per-block table {key: ms}, whole-model ms of each arch): the minimum over `rounds` interleaved rounds of
    best-of-`repeats` timings, so that a burst of another process's work in one round does not stick."""
    from tqdm.auto import tqdm

    if rounds < 1:
        raise ValueError(f"rounds must be positive, got {rounds}")
    archs = list(archs)
    blocks: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    for a in archs:
        for key, module in block_modules(a, context, vocab_size).items():
            blocks.setdefault(key, (module, block_inputs(key, context, vocab_size, a.d_model)))
    models = [build(a, context, vocab_size).eval() for a in archs]
    ids = token_inputs(context, vocab_size)
    block_ms = {k: float("inf") for k in blocks}
    model_ms = [float("inf")] * len(archs)
    for _ in tqdm(range(rounds), desc="timing rounds", disable=not progress):
        for k, (module, x) in blocks.items():
            block_ms[k] = min(block_ms[k], forward_ms(module, x, repeats))
        for i, m in enumerate(models):
            model_ms[i] = min(model_ms[i], forward_ms(m, ids, repeats))
    return block_ms, model_ms


# --------------------------------------------------------------------------- weight sharing (a supernet)
def shared_members(space: SearchSpace | None = None) -> list[Arch]:
    """The members of `space` a `SuperNet` holds: dense-FFN GQA/MHA ones (MLA and MoE have other weights)."""
    return [a for a in (space or SearchSpace()).members() if a.attention == "gqa" and a.ffn == "dense"]


class SuperNet(nn.Module):
    """One weight-shared TinyLM that holds every dense GQA/MHA member of a space (OFA-style, Cai et al. 2020).

    Its weights are those of the largest member (`largest`: most layers, widest, most heads and KV heads, widest
    FFN). A sub-network `arch` uses the first `n_layers` blocks and, in each matrix, the first rows and columns:
    embedding and norms the first `d_model` channels; queries and the output projection the first `d_model`
    channels (a head is `d_model / n_heads` of them); keys and values the first `n_kv_heads · head_dim` rows of
    the largest member's key and value halves; the FFN the first `ffn_ratio · d_model` hidden units.
    `forward(ids, arch)` runs it on sliced views (gradients reach the shared weights); `extract(arch)` copies the
    slices into a stand-alone `build(arch)` model, which computes the same thing.
    """

    def __init__(self, members: list[Arch], context: int, vocab_size: int, seed: int = 0):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a supernet needs at least one member")
        if any(a.attention != "gqa" or a.ffn != "dense" for a in members):
            raise ValueError("a SuperNet shares weights between dense-FFN GQA/MHA members only")
        self.members, self.context, self.vocab_size = members, context, vocab_size
        self._member_set = frozenset(members)
        self.largest = Arch(n_layers=max(a.n_layers for a in members), d_model=max(a.d_model for a in members),
                            n_heads=max(a.n_heads for a in members), n_kv_heads=max(a.n_heads for a in members),
                            ffn_ratio=max(a.ffn_ratio for a in members))
        self.net = build(self.largest, context, vocab_size, seed=seed)
        self.smallest = min(members, key=lambda a: (a.n_layers, a.d_model, a.ffn_ratio, a.n_kv_heads, a.n_heads))

    def _check(self, arch: Arch) -> None:
        if arch not in self._member_set:
            raise ValueError(f"{arch.label() if isinstance(arch, Arch) else arch!r} is not a member of this supernet")

    def forward(self, ids: torch.Tensor, arch: Arch, targets: torch.Tensor | None = None):
        """(logits, loss) of sub-network `arch` with the shared weights (a TinyLM forward on sliced matrices)."""
        self._check(arch)
        d, H, kv, hd = arch.d_model, arch.n_heads, arch.n_kv_heads, arch.d_model // arch.n_heads
        D, hidden = self.largest.d_model, arch.ffn_ratio * arch.d_model
        B, T = ids.shape

        def rms(x, norm):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight[:d]

        emb = self.net.embed.weight[:, :d]
        x = emb[ids]
        cos, sin = rope_cos_sin(torch.arange(T, device=ids.device), hd)
        for block in self.net.blocks[:arch.n_layers]:
            a, h = block.attn, rms(x, block.norm1)
            q = F.linear(h, a.q.weight[:d, :d]).view(B, T, H, hd).transpose(1, 2)
            k = F.linear(h, a.kv.weight[:kv * hd, :d]).view(B, T, kv, hd).transpose(1, 2)
            v = F.linear(h, a.kv.weight[D:D + kv * hd, :d]).view(B, T, kv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != H)
            x = x + F.linear(y.transpose(1, 2).reshape(B, T, d), a.o.weight[:d, :d])
            f, h = block.ffn, rms(x, block.norm2)
            g, u = F.linear(h, f.gate.weight[:hidden, :d]), F.linear(h, f.up.weight[:hidden, :d])
            x = x + F.linear(F.silu(g) * u, f.down.weight[:d, :hidden])
        logits = rms(x, self.net.norm) @ emb.T
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def extract(self, arch: Arch) -> TinyLM:
        """A stand-alone `build(arch)` model holding copies of `arch`'s slices of the shared weights."""
        self._check(arch)
        d, D = arch.d_model, self.largest.d_model
        hidden, kvd = arch.ffn_ratio * arch.d_model, arch.n_kv_heads * (arch.d_model // arch.n_heads)
        model = build(arch, self.context, self.vocab_size)
        model.embed.weight.copy_(self.net.embed.weight[:, :d])
        model.norm.weight.copy_(self.net.norm.weight[:d])
        for mine, big in zip(model.blocks, self.net.blocks):
            mine.norm1.weight.copy_(big.norm1.weight[:d])
            mine.norm2.weight.copy_(big.norm2.weight[:d])
            mine.attn.q.weight.copy_(big.attn.q.weight[:d, :d])
            mine.attn.kv.weight.copy_(torch.cat([big.attn.kv.weight[:kvd, :d], big.attn.kv.weight[D:D + kvd, :d]]))
            mine.attn.o.weight.copy_(big.attn.o.weight[:d, :d])
            for name in ("gate", "up"):
                getattr(mine.ffn, name).weight.copy_(getattr(big.ffn, name).weight[:hidden, :d])
            mine.ffn.down.weight.copy_(big.ffn.down.weight[:d, :hidden])
        return model.eval()


# --------------------------------------------------------------------------- the stored table of notebook 09
TABLE_PATH = Path(__file__).parent / "data" / "nas09_course_machine.json"


@dataclass(frozen=True)
class ProxySetup:
    """The quality proxy of notebook 09: MQAR answers' cross-entropy after `steps` of training (`long_steps`: the
    reference it is ranked against)."""

    vocab_size: int = 64
    n_pairs: int = 4
    seq_len: int = 24
    steps: int = 40
    long_steps: int = 200
    batch_size: int = 32
    lr: float = 1e-2
    eval_sequences: int = 256

    def task(self):
        from .synthetic import MQAR

        return MQAR(vocab_size=self.vocab_size, n_pairs=self.n_pairs, seq_len=self.seq_len)


@torch.no_grad()
def answer_loss(model: nn.Module, task, n_sequences: int = 256, seed: int = 12345) -> tuple[float, float]:
    """(mean cross-entropy in nats, accuracy) on the scored positions of `n_sequences` fixed held-out sequences."""
    model.eval()
    b = task.batch(n_sequences, torch.Generator().manual_seed(seed))
    logits = model(b.inputs)[0]
    nll = F.cross_entropy(logits[b.mask], b.targets[b.mask])
    acc = (logits.argmax(-1)[b.mask] == b.targets[b.mask]).float().mean()
    return float(nll), float(acc)


def proxy_quality(arch: Arch, setup: ProxySetup = ProxySetup(), steps: int | None = None,
                  seed: int = 0) -> dict:
    """Train a fresh `arch` (init and data from `seed`) on the proxy task; {'loss', 'acc', 'seconds'}."""
    from .synthetic import train_on_task

    task = setup.task()
    model = build(arch, setup.seq_len, setup.vocab_size, seed=seed)
    r = train_on_task(model, task, steps=steps or setup.steps, batch_size=setup.batch_size, lr=setup.lr, seed=seed,
                      fused=False)   # fused AdamW costs ~15x more per step on this CPU at these sizes
    loss, acc = answer_loss(model, task, setup.eval_sequences)
    return {"loss": loss, "acc": acc, "seconds": r.seconds}


def tabulate(space: SearchSpace | None = None, setup: ProxySetup = ProxySetup(), sample_every: int = 7,
             repeats: int = 30, rounds: int = 3, threads: int = 1, train: bool = True, progress: bool = True) -> dict:
    """Measure everything notebook 09 stores: per-block and whole-model latency (ms, best-of-`repeats`), FLOPs,
    parameters and the proxy of every member; for every `sample_every`-th member also a second proxy seed and the
    long run, all with `threads` torch threads (1: a tiny model gains nothing from a second thread, and loses a lot
    when another process holds that core). Takes minutes; run it under the course's heavy lock (`python -m
    utils.nas`)."""
    from tqdm.auto import tqdm

    from .measure import fingerprint
    from .timing import threads as torch_threads

    with torch_threads(threads):
        return _tabulate(space, setup, sample_every, repeats, rounds, train, progress, fingerprint, tqdm)


def _tabulate(space, setup, sample_every, repeats, rounds, train, progress, fingerprint, tqdm) -> dict:
    space = space or SearchSpace()
    T, V = setup.seq_len, setup.vocab_size
    members = space.members()
    blocks, latency = measure_latency(members, T, V, repeats, rounds, progress)
    rows = []
    for i, arch in enumerate(tqdm(members, desc="tabulating", disable=not progress)):
        model = build(arch, T, V).eval()
        row = {"arch": arch.as_dict(), "params": model.num_params(), "flops": flops(arch, T, V),
               "latency_ms": latency[i]}
        if not train:
            rows.append(row)
            continue
        q = proxy_quality(arch, setup, seed=0)
        row.update(proxy_loss=q["loss"], proxy_acc=q["acc"], proxy_seconds=q["seconds"])
        if i % sample_every == 0:
            q1 = proxy_quality(arch, setup, seed=1)
            ql = proxy_quality(arch, setup, steps=setup.long_steps, seed=0)
            row.update(proxy_loss_seed1=q1["loss"], long_loss=ql["loss"], long_acc=ql["acc"],
                       long_seconds=ql["seconds"])
        rows.append(row)
    return {"machine": str(fingerprint("cpu")), "threads": torch.get_num_threads(), "repeats": repeats,
            "rounds": rounds, "setup": asdict(setup),
            "space": {k: list(v) for k, v in space.choices().items()}, "block_ms": blocks, "rows": rows}


def load_table(path: Path | None = None) -> dict:
    """The table `tabulate` measured on the course machine (stored with the course)."""
    import json

    path = Path(path or TABLE_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it is part of the course; regenerate it with "
                                "`python -m utils.nas` (minutes)")
    return json.loads(path.read_text())


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Measure notebook 09's stored table on this machine (minutes).")
    parser.add_argument("--latency-only", action="store_true",
                        help="re-measure FLOPs and latency only, keeping the stored proxy results")
    args = parser.parse_args()
    table = tabulate(train=not args.latency_only)
    if args.latency_only:
        old = load_table()
        for new_row, old_row in zip(table["rows"], old["rows"]):
            if new_row["arch"] != old_row["arch"]:
                raise ValueError("the stored table lists other architectures: run without --latency-only")
            new_row.update({k: v for k, v in old_row.items() if k not in new_row})
    TABLE_PATH.parent.mkdir(exist_ok=True)
    TABLE_PATH.write_text(json.dumps(table, indent=1))
    print(f"wrote {TABLE_PATH} ({len(table['rows'])} architectures, {len(table['block_ms'])} blocks)")
