"""The course's decode engine: a Hugging Face Llama model run by a hand-written loop with a static KV cache.

    dec = StaticCacheDecoder(model, max_len=256, compile=True)   # compile: the single-token step, fullgraph
    out = dec.generate(prompt_ids, max_new_tokens=32)            # greedy; out.tokens, out.tok_s, out.decode_s
    out = dec.speculative_generate(prompt_ids, 32, PromptLookupDraft(dec.vocab_size), k=4)   # same tokens, fewer steps

The cache is pre-allocated for `max_len` positions (one key and one value tensor per layer), so every decode step
has the same shapes: that is what lets `torch.compile` build one graph for the step. The model's own modules (norms,
projections, MLP, head) are called, so a model whose `nn.Linear`s were swapped for int8/int4 kernels
(`utils.lowbit`) runs unchanged. If compiling fails (no C++ compiler, an unsupported op), the decoder warns and
runs the same step uncompiled: the tokens do not change, only the speed.

Speculative decoding (Leviathan et al. 2023, Chen et al. 2023): a draft proposes k tokens, one forward of the
target scores all of them, the longest prefix that matches the target's greedy choices is kept, plus the target's
own next token (the "bonus" token). `accept_reject` is the sampling version's rule, which preserves the target
distribution exactly.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class GenerateResult:
    """Generated tokens and what it took: target forwards after the prefill, drafted/accepted counts, seconds."""

    tokens: list[int]
    steps: int
    prefill_s: float
    decode_s: float
    drafted: int = 0
    accepted: int = 0
    accepted_per_step: list[int] = field(default_factory=list, repr=False)
    drafted_per_step: list[int] = field(default_factory=list, repr=False)
    step_s: list[float] = field(default_factory=list, repr=False)
    draft_s: float = 0.0

    def step_interval(self, level: float = 0.95) -> tuple[float, float, float]:
        """(median, low, high) seconds per decode step: a distribution-free interval for the median step time."""
        from scipy.stats import quantile_test

        if len(self.step_s) < 6:
            raise ValueError(f"need at least 6 timed steps for an interval, got {len(self.step_s)}")
        med = statistics.median(self.step_s)
        ci = quantile_test(self.step_s, q=med).confidence_interval(level)
        return med, float(ci.low), float(ci.high)

    @property
    def tok_s(self) -> float:
        """Decode tokens per second (tokens after the first, which comes from the prefill)."""
        return (len(self.tokens) - 1) / self.decode_s if self.decode_s > 0 and len(self.tokens) > 1 else float("nan")

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (nan without drafts)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    def acceptance_by_position(self, k: int) -> list[tuple[int, int]]:
        """(accepted, tried) of draft position j = 1..k: tried counts the verify steps whose draft had a j-th token
        and whose first j-1 drafts were accepted; accepted those where the j-th was accepted too."""
        if k < 1:
            raise ValueError(f"k must be >= 1 draft positions, got {k}")
        out = []
        for j in range(1, k + 1):
            tried = [a for a, d in zip(self.accepted_per_step, self.drafted_per_step) if d >= j and a >= j - 1]
            out.append((sum(a >= j for a in tried), len(tried)))
        return out

    @property
    def tokens_per_step(self) -> float:
        """Tokens produced per target forward after the prefill (1 for plain greedy)."""
        return (len(self.tokens) - 1) / self.steps if self.steps else float("nan")


class Draft(Protocol):
    """What `speculative_generate` needs from a draft."""

    vocab_size: int

    def propose(self, tokens: torch.Tensor, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """Up to k proposed next tokens (1-D long tensor, may be empty) after `tokens` (all L tokens so far).

        `hidden` [m, d] holds the target's last-layer states (before the final norm) of the positions verified since
        the previous call: positions L-1-m .. L-2 (position i's state predicted tokens[i+1]). m == L-1 means a new
        prompt (the prefill): a draft that keeps a history starts it afresh.
        """
        ...


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """E[tokens per verify step] = (1 - alpha^(k+1)) / (1 - alpha) for i.i.d. acceptance alpha (Leviathan eq. 1)."""
    if k < 1:
        raise ValueError(f"k must be >= 1 draft tokens, got {k}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be an acceptance rate in [0, 1], got {alpha}")
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def decoder_block(layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                  pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scaling: float) -> torch.Tensor:
    """One Llama decoder layer on x [1, T, d] at positions pos [T]: write K/V into the static cache, attend, MLP."""
    a = layer.self_attn
    _, T, _ = x.shape
    n_kv, hd = k_cache.shape[1], k_cache.shape[3]
    h = layer.input_layernorm(x)
    q = a.q_proj(h).view(1, T, -1, hd).transpose(1, 2)
    k = a.k_proj(h).view(1, T, n_kv, hd).transpose(1, 2)
    v = a.v_proj(h).view(1, T, n_kv, hd).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
    v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
    o = F.scaled_dot_product_attention(q.to(k_cache.dtype), k_cache, v_cache, attn_mask=mask, scale=scaling,
                                       enable_gqa=True)
    x = x + a.o_proj(o.transpose(1, 2).reshape(1, T, -1).to(x.dtype))
    return x + layer.mlp(layer.post_attention_layernorm(x))


class StaticCacheDecoder:
    """Greedy and speculative decoding of a HF Llama-architecture model with a pre-allocated KV cache."""

    def __init__(self, model, max_len: int = 512, compile: bool = False, dtype: torch.dtype | None = None,
                 attend: str = "cache"):
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
            raise ValueError(f"expected a Llama-architecture causal LM (model.model.layers, lm_head), got "
                             f"{type(model).__name__}")
        if not isinstance(max_len, int) or max_len < 2:
            raise ValueError(f"max_len must be an integer >= 2 positions, got {max_len!r}")
        if attend not in ("cache", "filled"):
            raise ValueError(f"attend must be 'cache' (the whole static cache, masked: static shapes, compilable) or "
                             f"'filled' (only the positions written so far; eager only), got {attend!r}")
        if attend == "filled" and compile:
            raise ValueError("attend='filled' changes the attention's shape every step: it cannot be compiled with "
                             "static shapes; use attend='cache' with compile=True")
        self.attend = attend
        cfg = model.config
        self.model, self.config, self.max_len = model, cfg, max_len
        self.layers, self.embed, self.norm, self.head = inner.layers, inner.embed_tokens, inner.norm, model.lm_head
        self.vocab_size = int(cfg.vocab_size)
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = dtype or self.embed.weight.dtype
        self.device = self.embed.weight.device
        shape = (1, self.n_kv, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        with torch.no_grad():
            pos = torch.arange(max_len, device=self.device)[None]
            cos, sin = inner.rotary_emb(torch.zeros(1, dtype=self.dtype, device=self.device), pos)
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)       # [max_len, head_dim]
        self._positions = torch.arange(max_len, device=self.device)
        self.scaling = self.head_dim ** -0.5
        self.compiled = False
        self.compile_s: float | None = None
        self._step = self.forward
        if compile:
            self._try_compile()

    # ------------------------------------------------------------------ the model, by hand
    def forward(self, ids: torch.Tensor, pos: torch.Tensor, block=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run tokens `ids` [T] at positions `pos` [T] against the cache (writing their keys/values into it).

        Returns (logits [T, vocab] in fp32, hidden [T, d]: the last layer's output before the final norm).
        `block` runs one decoder layer (default: the eager `decoder_block`; the compiled step passes its compiled
        copy, reused by every layer since all layers have the same shapes).
        """
        block = block or decoder_block
        x = self.embed(ids)[None].to(self.dtype)                                # [1, T, d]
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]          # [1, 1, T, hd]
        mask = self._positions[None, :] <= pos[:, None]                          # [T, max_len]: causal over the cache
        kc, vc = self.k_cache, self.v_cache
        if self.attend == "filled":   # attend over positions 0..max(pos) only: a view, so writes still reach the cache
            n = int(pos.max()) + 1
            mask = None if pos.numel() == 1 else mask[:, :n]
            kc, vc = [c[:, :, :n] for c in kc], [c[:, :, :n] for c in vc]
        for i, layer in enumerate(self.layers):
            x = block(layer, x, cos, sin, mask, pos, kc[i], vc[i], self.scaling)
        return self.head(self.norm(x))[0].float(), x[0]

    def _try_compile(self) -> None:
        """Compile the single-token step (fullgraph, static shapes) and run it once; on failure warn and fall back."""
        t0 = time.perf_counter()
        try:
            block = torch.compile(decoder_block, fullgraph=True, dynamic=False)

            def step(ids, pos):
                return self.forward(ids, pos, block)

            ids = torch.zeros(1, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                step(ids, self._positions[:1])
                step(ids, self._positions[:1])   # a second call: no recompile expected
        except Exception as e:  # no C++ compiler, unsupported op, ...: same results uncompiled, only slower
            warnings.warn(f"torch.compile is not available here ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "running the static-cache step uncompiled (same tokens, slower).", RuntimeWarning,
                          stacklevel=3)
            self._step, self.compiled, self.compile_s = self.forward, False, None
            return
        self._step, self.compiled, self.compile_s = step, True, time.perf_counter() - t0

    def step(self, ids: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A forward through the compiled step when it is one token, else the eager forward."""
        return (self._step if ids.shape[0] == 1 else self.forward)(ids, pos)

    # ------------------------------------------------------------------ generation
    def _prompt(self, prompt_ids, max_new_tokens: int) -> torch.Tensor:
        ids = torch.as_tensor(prompt_ids, device=self.device).flatten().long()
        if ids.numel() < 1:
            raise ValueError("the prompt must hold at least one token")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if ids.numel() + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceed the static "
                             f"cache of max_len={self.max_len} positions: build the decoder with a larger max_len")
        return ids

    def generate(self, prompt_ids, max_new_tokens: int, eos_token_id: int | None = None) -> GenerateResult:
        """Greedy decoding: prefill the prompt, then one (compiled) single-token step per new token."""
        ids = self._prompt(prompt_ids, max_new_tokens)
        n = ids.numel()
        with torch.inference_mode():
            t0 = time.perf_counter()
            logits, _ = self.forward(ids, self._positions[:n])
            nxt = logits[-1].argmax()
            out = [int(nxt)]
            t1 = time.perf_counter()
            steps, step_s = 0, []
            while len(out) < max_new_tokens and out[-1] != eos_token_id:
                ts = time.perf_counter()
                logits, _ = self._step(nxt.view(1), self._positions[n + steps: n + steps + 1])
                nxt = logits[-1].argmax()
                out.append(int(nxt))
                steps += 1
                step_s.append(time.perf_counter() - ts)
            t2 = time.perf_counter()
        return GenerateResult(out, steps, t1 - t0, t2 - t1, step_s=step_s)

    def speculative_generate(self, prompt_ids, max_new_tokens: int, draft: Draft, k: int,
                             eos_token_id: int | None = None) -> GenerateResult:
        """Greedy speculative decoding: the same tokens as `generate`, in fewer target forwards when drafts match."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k (draft tokens per verify step) must be an integer >= 1, got {k!r}")
        dv = getattr(draft, "vocab_size", None)
        if dv != self.vocab_size:
            raise ValueError(f"the draft's vocabulary ({dv}) differs from the target's ({self.vocab_size}): "
                             "draft and target must share one tokenizer")
        ids = self._prompt(prompt_ids, max_new_tokens)
        n = ids.numel()
        res = GenerateResult([], 0, 0.0, 0.0)
        with torch.inference_mode():
            t0 = time.perf_counter()
            logits, hidden = self.forward(ids, self._positions[:n])
            out = [int(logits[-1].argmax())]
            h = hidden
            t1 = time.perf_counter()
            cur = n                      # positions < cur hold verified keys/values; out[-1] is not yet in the cache
            while len(out) < max_new_tokens and out[-1] != eos_token_id:
                ts = time.perf_counter()
                room = min(k, max_new_tokens - len(out), self.max_len - cur - 1)
                context = torch.cat([ids, torch.tensor(out, device=self.device)])
                td = time.perf_counter()
                prop = draft.propose(context, h, room)[:room].to(self.device).long() if room > 0 else ids[:0]
                res.draft_s += time.perf_counter() - td
                inp = torch.cat([context[-1:], prop])
                logits, hidden = self.step(inp, self._positions[cur: cur + inp.numel()])
                pred = logits.argmax(-1)
                match = (prop == pred[: prop.numel()]).long()
                n_acc = int(match.cumprod(0).sum()) if prop.numel() else 0
                new = prop[:n_acc].tolist() + [int(pred[n_acc])]
                res.steps += 1
                res.step_s.append(time.perf_counter() - ts)
                res.drafted += int(prop.numel())
                res.accepted += n_acc
                res.accepted_per_step.append(n_acc)
                res.drafted_per_step.append(int(prop.numel()))
                h = hidden[: n_acc + 1]
                cur += n_acc + 1
                out += new
                if eos_token_id is not None and eos_token_id in new:
                    out = out[: len(out) - len(new) + new.index(eos_token_id) + 1]
                    break
            out = out[:max_new_tokens]
            t2 = time.perf_counter()
        res.tokens, res.prefill_s, res.decode_s = out, t1 - t0, t2 - t1
        return res


class PromptLookupDraft:
    """Prompt-lookup draft (Saxena 2023; transformers' `prompt_lookup_num_tokens`): find the last n-gram earlier in
    the context and propose the tokens that followed it. No model, no training."""

    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.vocab_size, self.max_ngram, self.min_ngram = vocab_size, max_ngram, min_ngram

    def propose(self, tokens: torch.Tensor, hidden: torch.Tensor | None = None, k: int = 4) -> torch.Tensor:
        """The k tokens after the most recent earlier occurrence of the longest matching suffix n-gram."""
        L = tokens.numel()
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            windows = tokens.unfold(0, n, 1)[:-1]                       # every n-gram except the suffix itself
            hits = (windows == tokens[-n:]).all(-1).nonzero().flatten()
            for start in hits.flip(0).tolist():                        # most recent first
                follow = tokens[start + n: start + n + k]
                if follow.numel():
                    return follow
        return tokens[:0]


def accept_reject(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor,
                  generator: torch.Generator | None = None) -> list[int]:
    """Speculative sampling's rule (Leviathan et al. 2023, Alg. 1): the emitted tokens for one verify step.

    p: target probabilities [k+1, V] (row j: after the context + first j draft tokens); q: draft probabilities
    [k, V] from which draft_tokens [k] were sampled. Token j is kept with probability min(1, p_j(x)/q_j(x)); at the
    first rejection a token is drawn from norm(max(0, p_j - q_j)) and the step ends; if all k are kept, a bonus token
    is drawn from p_k. The emitted tokens are distributed exactly as sampling from the target.
    """
    k = draft_tokens.numel()
    if k < 1:
        raise ValueError(f"need at least one draft token, got {k}")
    if p.shape[0] != k + 1 or q.shape[0] != k or p.shape[1] != q.shape[1]:
        raise ValueError(f"shapes must be p [k+1, V], q [k, V] for k={k} draft tokens; got p {tuple(p.shape)}, "
                         f"q {tuple(q.shape)}")
    out: list[int] = []
    for j in range(k):
        x = int(draft_tokens[j])
        r = torch.rand((), generator=generator, device=p.device)
        if r * q[j, x] < p[j, x]:                      # r < p/q without dividing by a zero q
            out.append(x)
            continue
        resid = (p[j] - q[j]).clamp(min=0)
        out.append(int(torch.multinomial(resid / resid.sum(), 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(p[k], 1, generator=generator)))
    return out
