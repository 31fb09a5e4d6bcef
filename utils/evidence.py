"""Evidence that resolves: paired per-token comparisons of language models, intervals, verdicts, paired seeds.

Two models are compared on the *same* tokens: score both with `token_nll` (or `compare_models`, which also gives
KL(reference ‖ model) per token in one pass), then put an interval on the mean per-token difference and ask whether
it resolves the claim:

    ref, _ = load_smollm2(); quant = ...                      # two models, one tokenizer
    nll_ref, nll_q, kl = compare_models(ref, quant, ids)      # per-token nats, aligned
    d = delta_nll(nll_q, nll_ref)                             # Δ mean NLL = Δ ln PPL, with a block-bootstrap interval
    print(d, verdict(d, claim="less", threshold=0.01))        # "quantization costs < 0.01 nats": holds / ...

Intervals respect the correlation of neighbouring tokens: the per-token series is cut into contiguous blocks
(default `BLOCK` tokens) and `scipy.stats.bootstrap` resamples whole blocks (bootstrap over block sums, BCa).
An iid bootstrap over tokens would pretend 32k correlated tokens are 32k independent draws; the unit tests show it
under-covers on autocorrelated data while the block bootstrap keeps its nominal rate.

Resolution, measured on SmolLM2-135M-Instruct (fp32 reference), Shakespeare validation text, windows of 512
tokens, 2 threads on an AVX2 CPU (AMD EPYC, Zen 3; load average about 2.6 from other jobs): scoring runs at about
210 tokens/s per model (32,768 tokens in 158 s), so 32k tokens do not fit a lecture — a paired comparison needs one
pass per model. `EVAL_TOKENS` = 8,192 (about 40 s per model) is the default evaluation size. 95% half-widths of
Δ mean NLL (variant − fp32) and of mean KL(fp32 ‖ variant), default block, at 8k / 32k tokens:
  - weights rounded to bf16 (fp32 compute):  Δ = −0.0001 ± 0.0002 / ± 0.0001 nats;  KL 0.00004
  - int8 per-channel RTN:                    Δ = +0.0049 ± 0.0019 / ± 0.0010 nats;  KL 0.0032 ± 0.0002 / ± 0.0001
  - int4 group-128 RTN:                      Δ = +0.45   ± 0.029  / ± 0.015 nats;   KL 0.60 ± 0.027 / ± 0.010
So about ±0.002 nats at 8k tokens and ±0.001 at 32k for an int8-sized change: the width grows with how much the
variant changes the model and shrinks as 1/√tokens. Blocks of 64 to 512 tokens give widths within about 15% of
each other (per-token differences are only weakly correlated on this text); an iid bootstrap (block 1) is up to
25% narrower for Δ NLL and 40% for KL. `BLOCK` = 256 leaves at least 10 blocks from 2,560 tokens on.

Seeds of trained comparisons (`paired_seeds`, `seed_interval`): "paired" means that for every seed `s` each variant
is trained with the same initialisation seed and the same data order (pass `s` both to the model constructor and to
the training loop, e.g. `TinyLM(cfg, seed=s)` and `train(..., seed=s)`), so the per-seed difference cancels what the
seed does to both; the spread is a paired t-interval over at least two (by default three) per-seed differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

WINDOW = 512          # tokens per scored window (the course's perplexity window, `utils.model.TOKENS_PER_WINDOW`)
BATCH_SIZE = 1        # windows per forward pass: 512 x 49,152 fp32 logits = 100 MB; batch 4 was no faster on 2 cores
EVAL_TOKENS = 8192    # default evaluation size: about 40 s per SmolLM2 pass on 2 threads (see the module docstring)
BLOCK = 256           # tokens per bootstrap block
N_RESAMPLES = 2000
MIN_BLOCKS = 10
VERDICTS = ("holds", "not resolved", "fails")
CLAIMS = ("less", "greater", "within")


# --------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high] at confidence `level`."""

    estimate: float
    low: float
    high: float
    level: float

    @property
    def half_width(self) -> float:
        """Half the interval's width (the '±' of the estimate)."""
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside the closed interval."""
        return self.low <= value <= self.high

    def _decimals(self) -> int:
        hw = self.half_width
        if not math.isfinite(hw) or hw <= 0:
            return 4
        d = -math.floor(math.log10(hw))
        d += hw * 10.0**d < 2  # show the half-width with one digit, two when it starts with a 1
        return int(min(6, max(0, d)))

    def __format__(self, spec: str) -> str:
        spec = spec or f".{self._decimals()}f"
        f = lambda v: format(v, spec).replace("-", "\u2212")
        return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}] ({self.level * 100:g}%)"

    def __str__(self) -> str:
        return format(self, "")


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a confidence level strictly between 0 and 1 (e.g. 0.95), got {level!r}")


def _as_series(x, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D series of per-token values, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite values (nan or inf)")
    return arr


def _check_paired(a: np.ndarray, b: np.ndarray, ids_a=None, ids_b=None) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired series must score the same tokens, but they have {a.size} and {b.size} values; "
                         "score both models on the same stream with the same window and stride")
    if (ids_a is None) != (ids_b is None):
        raise ValueError("give the token ids of both streams (ids_a and ids_b) or of neither")
    if ids_a is not None:
        ta, tb = torch.as_tensor(ids_a).flatten(), torch.as_tensor(ids_b).flatten()
        if ta.shape != tb.shape:
            raise ValueError(f"the two token streams differ in length ({ta.numel()} vs {tb.numel()}): "
                             "a paired comparison needs the same tokens")
        if not torch.equal(ta.long(), tb.long()):
            first = int((ta.long() != tb.long()).nonzero()[0])
            raise ValueError(f"the two token streams differ (first at position {first}): "
                             "a paired comparison needs the same tokens, e.g. one tokenizer for both models")


def _block_sums(series: Sequence[np.ndarray], block: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Sums of each series over contiguous blocks of about `block` values (sizes differ by at most one)."""
    n = series[0].size
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive number of tokens, got {block!r}")
    n_blocks = n // block
    if n_blocks < MIN_BLOCKS:
        raise ValueError(f"{n} values make only {n_blocks} blocks of {block}; a block bootstrap needs at least "
                         f"{MIN_BLOCKS}: score more tokens or use a smaller block")
    edges = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
    counts = np.diff(edges).astype(np.float64)
    sums = [np.add.reduceat(s, edges[:-1]) for s in series]
    return sums, counts


def block_bootstrap(series: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], block: int = BLOCK,
                    level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                    method: str = "BCa") -> tuple[float, float]:
    """(low, high) of `statistic(*block_sums, counts)` by resampling whole blocks with `scipy.stats.bootstrap`.

    `statistic` receives, for every series, its per-block sums (resampled along the last axis) and then the
    per-block token counts; it must be vectorised along the last axis (reduce with `axis=-1`).
    """
    from scipy import stats

    _check_level(level)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    sums, counts = _block_sums(series, block)
    with warnings.catch_warnings():  # identical blocks make BCa degenerate: handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap((*sums, counts), lambda *cols, axis=-1: statistic(*cols), paired=True, vectorized=True,
                              confidence_level=level, n_resamples=n_resamples, method=method, batch=500,
                              rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates when every block agrees
        low = high = float(statistic(*sums, counts))
    return low, high


def mean_interval(x, block: int = BLOCK, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                  method: str = "BCa") -> Interval:
    """Mean of a per-token series with a block-bootstrap interval (e.g. mean KL to the reference)."""
    x = _as_series(x, "x")
    low, high = block_bootstrap([x], lambda s, c: s.sum(-1) / c.sum(-1), block, level, n_resamples, seed, method)
    return Interval(float(x.mean()), low, high, level)


def paired_interval(a, b, block: int = BLOCK, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
                    ids_a=None, ids_b=None, method: str = "BCa") -> Interval:
    """Mean of the per-token differences a − b with a block-bootstrap interval; a and b score the same tokens.

    Give `ids_a`/`ids_b` (the token streams each series was scored on) to have them checked equal.
    """
    _check_level(level)
    a, b = _as_series(a, "a"), _as_series(b, "b")
    _check_paired(a, b, ids_a, ids_b)
    return mean_interval(a - b, block, level, n_resamples, seed, method)


def delta_nll(nll_a, nll_b, **kwargs) -> Interval:
    """Δ mean NLL (nats per token) of model a minus model b on the same tokens; equals Δ ln PPL."""
    return paired_interval(nll_a, nll_b, **kwargs)


delta_ln_ppl = delta_nll


def delta_ppl(nll_a, nll_b, block: int = BLOCK, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = 0,
              ids_a=None, ids_b=None, method: str = "BCa") -> Interval:
    """ΔPPL = PPL(a) − PPL(b) on the same tokens, with a block-bootstrap interval."""
    _check_level(level)
    a, b = _as_series(nll_a, "nll_a"), _as_series(nll_b, "nll_b")
    _check_paired(a, b, ids_a, ids_b)
    stat = lambda sa, sb, c: np.exp(sa.sum(-1) / c.sum(-1)) - np.exp(sb.sum(-1) / c.sum(-1))
    low, high = block_bootstrap([a, b], stat, block, level, n_resamples, seed, method)
    return Interval(float(np.exp(a.mean()) - np.exp(b.mean())), low, high, level)


def mean_kl(kl, **kwargs) -> Interval:
    """Mean per-token KL(reference ‖ model) in nats, with a block-bootstrap interval."""
    kl = _as_series(kl, "kl")
    if kl.min() < -1e-4:
        raise ValueError(f"KL values must be non-negative, got a minimum of {kl.min():.3g}: "
                         "pass per-token KL(reference ‖ model), not a difference of NLLs")
    return mean_interval(kl, **kwargs)


# --------------------------------------------------------------------------- verdicts
def verdict(interval: Interval, claim: str = "less", threshold: float = 0.0) -> str:
    """'holds', 'not resolved' or 'fails' for a claim about the quantity `interval` estimates.

    claim="less":    the quantity is below `threshold` (default 0, e.g. Δ NLL < 0: a is better than b);
                     holds if the whole interval is below it, fails if the whole interval is above it.
    claim="greater": the mirror image.
    claim="within":  |quantity| < threshold (threshold > 0; "no worse/better than ±threshold");
                     holds if the interval lies inside (−threshold, threshold), fails if it lies entirely outside.
    A signed `threshold` expresses a margin: claim="less", threshold=-0.01 is "lower by more than 0.01";
    claim="less", threshold=0.01 is "not higher by 0.01 or more" (non-inferiority).
    """
    if not isinstance(interval, Interval):
        raise ValueError(f"verdict needs an Interval, got {type(interval).__name__}")
    if claim not in CLAIMS:
        raise ValueError(f"claim must be one of {CLAIMS}, got {claim!r}")
    lo, hi, t = interval.low, interval.high, float(threshold)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"interval bounds must be finite with low <= high, got [{lo}, {hi}]")
    if claim == "less":
        return "holds" if hi < t else "fails" if lo > t else "not resolved"
    if claim == "greater":
        return "holds" if lo > t else "fails" if hi < t else "not resolved"
    if t <= 0:
        raise ValueError(f"claim='within' needs a positive threshold (the allowed |difference|), got {threshold}")
    return "holds" if -t < lo and hi < t else "fails" if lo > t or hi < -t else "not resolved"


def claim_line(text: str, interval: Interval, claim: str = "less", threshold: float = 0.0, unit: str = "",
               spec: str = "") -> str:
    """One line for a claims cell: 'text: estimate [low, high] (95%) unit -> verdict'."""
    v = verdict(interval, claim, threshold)
    unit = f" {unit}" if unit else ""
    return f"{text}: {interval:{spec}}{unit} -> {v}"


# --------------------------------------------------------------------------- per-token scoring
def _check_stream(ids, window: int, stride: int | None) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        else:
            raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be integer token ids, got dtype {ids.dtype}")
    if not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"window must be an integer of at least 2 tokens, got {window!r}")
    if stride is not None and not (isinstance(stride, (int, np.integer)) and 1 <= stride <= window - 1):
        raise ValueError(f"stride must be None (non-overlapping windows) or an integer in 1..window-1="
                         f"{window - 1}, got {stride!r}")
    if ids.numel() < window:
        raise ValueError(f"the token stream has {ids.numel()} tokens, shorter than one window of {window}: "
                         "use more text or a smaller window")
    return ids.long()


def _window_starts(n: int, window: int, stride: int | None) -> torch.Tensor:
    step = window if stride is None else stride
    return torch.arange(0, n - window + 1, step)


def scored_positions(n_tokens: int, window: int = WINDOW, stride: int | None = None) -> torch.Tensor:
    """Positions (indices into the stream) of the tokens `token_nll` scores, in the order of its output.

    stride=None: non-overlapping windows; every token of a window but its first is scored with the tokens before
    it in that window as context (as `utils.model.perplexity`); a trailing partial window is dropped.
    stride=s: windows start every s tokens; the first window scores its tokens 1..window-1, each later window only
    its last s tokens, so every token from position 1 on is scored once with at least window-s tokens of context.
    """
    if n_tokens < window:
        raise ValueError(f"the token stream has {n_tokens} tokens, shorter than one window of {window}")
    _check_stream(torch.zeros(window, dtype=torch.long), window, stride)
    starts = _window_starts(n_tokens, window, stride)
    if stride is None:
        cols = torch.arange(1, window)
        return (starts[:, None] + cols).flatten()
    first = torch.arange(1, window)
    rest = (starts[1:, None] + torch.arange(window - stride, window)).flatten()
    return torch.cat([first, rest])


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.shape[:2] != x.shape:
        raise ValueError("model(ids) must return logits [batch, tokens, vocab] (a tensor, a tuple starting with "
                         "one, or an output with .logits)")
    return out


def iter_logprobs(model, ids, window: int = WINDOW, stride: int | None = None,
                  batch_size: int = BATCH_SIZE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (positions, log-probs [len(positions), vocab] fp32) batch by batch, in `scored_positions` order.

    Keeps one batch of log-probs in memory at a time (per window: 512 tokens x 49,152 vocab x 4 B = 100 MB).
    """
    ids = _check_stream(ids, window, stride)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    starts = _window_starts(ids.numel(), window, stride)
    try:
        device = next(model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    keep = window - 1 if stride is None else stride
    cols = torch.arange(window)
    for i in range(0, starts.numel(), batch_size):
        s = starts[i:i + batch_size]
        with torch.no_grad():  # scoped per batch: a grad mode held across `yield` would leak into the caller
            logits = _logits(model, ids[s[:, None] + cols].to(device))
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts tokens 1..window-1
            del logits
            if stride is None or i > 0:
                pos = (s[:, None] + torch.arange(window - keep, window)).flatten()
                logp = logp[:, -keep:].reshape(-1, logp.size(-1))
            else:  # the first window is scored in full, the others in the batch only their last `stride` tokens
                rest = (s[1:, None] + torch.arange(window - keep, window)).flatten()
                pos = torch.cat([torch.arange(1, window), rest])
                logp = torch.cat([logp[0], logp[1:, -keep:].reshape(-1, logp.size(-1))])
        yield pos, logp


def token_nll(model, ids, window: int = WINDOW, stride: int | None = None,
              batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Per-token negative log-likelihood (nats, fp32) of a causal LM on a 1-D token stream, in stream order.

    The tokens scored are `scored_positions(len(ids), window, stride)`: with stride=None the mean equals
    ln `utils.model.perplexity(model, ids, window)`. Deterministic for fixed arguments (keep batch_size fixed
    across a comparison: a different batch shape can change the last bits of the logits).
    """
    ids = _check_stream(ids, window, stride)
    out = []
    for pos, logp in iter_logprobs(model, ids, window, stride, batch_size):
        out.append(-logp.gather(1, ids[pos].to(logp.device)[:, None])[:, 0].cpu())
    return torch.cat(out)


_KL_CHUNK = 512  # rows of log-probs per KL step: keeps the temporaries at 2 x 512 x vocab floats


def kl_from_logprobs(logp_ref: torch.Tensor, logp_model: torch.Tensor) -> torch.Tensor:
    """KL(ref ‖ model) per row of two [tokens, vocab] log-prob tensors (e.g. from `iter_logprobs`), in nats."""
    if logp_ref.shape != logp_model.shape or logp_ref.dim() != 2:
        raise ValueError(f"log-probs must both be [tokens, vocab] of one shape, got {tuple(logp_ref.shape)} and "
                         f"{tuple(logp_model.shape)}")
    rows = zip(logp_ref.split(_KL_CHUNK), logp_model.to(logp_ref.device).split(_KL_CHUNK))
    return torch.cat([(r.exp() * (r - m)).sum(-1).clamp_min(0) for r, m in rows])


def compare_models(reference, model, ids, window: int = WINDOW, stride: int | None = None,
                   batch_size: int = BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nll_reference, nll_model, kl) per scored token in one pass; kl is KL(reference ‖ model) in nats.

    Both models see the same windows, so the three series align token by token (`scored_positions`).
    """
    ids = _check_stream(ids, window, stride)
    nll_r, nll_m, kl = [], [], []
    pairs = zip(iter_logprobs(reference, ids, window, stride, batch_size),
                iter_logprobs(model, ids, window, stride, batch_size))
    for (pos, lp_r), (_, lp_m) in pairs:
        lp_m = lp_m.to(lp_r.device)
        tgt = ids[pos].to(lp_r.device)[:, None]
        nll_r.append(-lp_r.gather(1, tgt)[:, 0].cpu())
        nll_m.append(-lp_m.gather(1, tgt)[:, 0].cpu())
        kl.append(kl_from_logprobs(lp_r, lp_m).cpu())
    return torch.cat(nll_r), torch.cat(nll_m), torch.cat(kl)


def token_kl(reference, model, ids, window: int = WINDOW, stride: int | None = None,
             batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Per-token KL(reference ‖ model) in nats over the next-token distributions, in `scored_positions` order."""
    return compare_models(reference, model, ids, window, stride, batch_size)[2]


# --------------------------------------------------------------------------- seeds of trained comparisons
def paired_seeds(n: int = 3, base: int = 0) -> list[int]:
    """Seeds base, base+1, ... base+n-1: use seed s for the init *and* the data order of every variant."""
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"a trained comparison needs at least 2 paired seeds (the course uses 3 or more), got {n!r}")
    if not isinstance(base, (int, np.integer)) or base < 0:
        raise ValueError(f"base must be a non-negative integer seed, got {base!r}")
    return list(range(base, base + n))


def seed_interval(values_a, values_b, level: float = 0.95) -> Interval:
    """Mean per-seed difference a − b with a paired t-interval (`scipy.stats.ttest_rel`); needs >= 2 seeds.

    values_a[i] and values_b[i] must come from the same seed (same init and data order).
    """
    from scipy import stats

    _check_level(level)
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"values_a and values_b must be 1-D with one value per seed each, got shapes "
                         f"{a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a spread over seeds needs at least 2 paired seeds, got {a.size}: one pair's |difference| "
                         "is not a spread; run more seeds (the course uses 3 or more)")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("values_a and values_b must be finite")
    d = a - b
    if np.ptp(d) == 0:  # every seed gives the same difference: a zero-width t-interval
        return Interval(float(d.mean()), float(d.mean()), float(d.mean()), level)
    ci = stats.ttest_rel(a, b).confidence_interval(confidence_level=level)
    return Interval(float(d.mean()), float(ci.low), float(ci.high), level)


def seed_mean_interval(values, level: float = 0.95) -> Interval:
    """Mean of one variant's per-seed values with a t-interval (scipy.stats.t); needs >= 2 seeds.

    For error bars of a single variant; a comparison of two variants needs `seed_interval` on the paired values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D with one value per seed, got shape {v.shape}")
    return seed_interval(v, np.zeros_like(v), level)   # the paired t-interval against 0 is the one-sample one


def seed_summary(values_a, values_b, level: float = 0.95, unit: str = "", spec: str = "") -> str:
    """'mean ± half-width unit over n paired seeds (95% t-interval)' of the per-seed differences a − b."""
    iv = seed_interval(values_a, values_b, level)
    spec = spec or f".{iv._decimals()}f"
    f = lambda v: format(v, spec).replace("-", "\u2212")
    unit = f" {unit}" if unit else ""
    n = len(values_a)
    return f"{f(iv.estimate)} ± {f(iv.half_width)}{unit} over {n} paired seeds ({level * 100:g}% t-interval)"


def run_paired(fn: Callable[[str, int], float], variants: Sequence[str],
               seeds: Sequence[int]) -> dict[str, list[float]]:
    """{variant: [fn(variant, seed) for seed in seeds]}: every variant trained on the same seeds, in the same order."""
    if len(seeds) < 2:
        raise ValueError(f"need at least 2 paired seeds, got {len(seeds)}")
    if len(set(variants)) != len(variants) or len(variants) < 1:
        raise ValueError(f"variants must be distinct names, got {list(variants)}")
    return {v: [float(fn(v, s)) for s in seeds] for v in variants}
