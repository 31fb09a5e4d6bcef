"""A DeepSeek-V3-style multi-token-prediction (MTP) module on a frozen Llama model, and its use as a draft.

DeepSeek-V3 §2.2 (depth 1): for position i, h'_i = M [RMSNorm(h_i) ; RMSNorm(Emb(t_{i+1}))] (eq. 21), one transformer
block over the h' sequence (eq. 22), and the shared output head predicts t_{i+2} (eq. 23). Embedding and head are the
main model's (shared, frozen here); the norms, the projection M [d x 2d] and the block are the module's own.
`MTPDraft` proposes tokens for `utils.decoder.StaticCacheDecoder.speculative_generate`: the first from the target's
hidden states, further ones by feeding the module's own output back (a chain, as EAGLE does).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class MTPModule(nn.Module):
    """Depth-1 MTP: (hidden states h [B, S, d], next tokens [B, S]) -> logits for the token after next [B, S, V]."""

    def __init__(self, model, init_block_from_last_layer: bool = True):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

        cfg = model.config
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.embed, self.head = model.get_input_embeddings(), model.lm_head      # shared with the main model
        self.hnorm, self.enorm, self.out_norm = LlamaRMSNorm(d, eps), LlamaRMSNorm(d, eps), LlamaRMSNorm(d, eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        cfg = copy.deepcopy(cfg)
        cfg._attn_implementation = "sdpa"
        if init_block_from_last_layer:
            self.block = copy.deepcopy(model.model.layers[-1])
            self.out_norm.load_state_dict(model.model.norm.state_dict())
        else:
            self.block = LlamaDecoderLayer(cfg, layer_idx=0)
        self.block.self_attn.layer_idx = 0
        self.rotary = LlamaRotaryEmbedding(cfg)
        with torch.no_grad():                      # start as "pass h through": M = [I ; 0]
            self.proj.weight.zero_()
            self.proj.weight[:, :d] = torch.eye(d)
        self.vocab_size = int(cfg.vocab_size)
        dtype = self.embed.weight.dtype
        self.to(dtype)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The module's own parameters (norms, projection, block): the shared embedding and head stay frozen."""
        shared = {id(self.embed.weight), id(self.head.weight)}
        return [p for p in self.parameters() if id(p) not in shared]

    def states(self, hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """h' after the block [B, S, d] (causal over S), before the output norm and head."""
        x = self.proj(torch.cat([self.hnorm(hidden), self.enorm(self.embed(next_tokens))], dim=-1))
        pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        cos_sin = self.rotary(x, pos)
        out = self.block(x, attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, hidden: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the token after next: position i sees h_<=i and tokens_<=i+1."""
        return self.head(self.out_norm(self.states(hidden, next_tokens)))


def mtp_loss(mtp: MTPModule, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, i+2] from hidden[:, i] and tokens[:, i+1] (hidden, tokens: [B, S])."""
    if hidden.shape[:2] != tokens.shape or tokens.shape[1] < 3:
        raise ValueError(f"need hidden [B, S, d] and tokens [B, S] with S >= 3, got {tuple(hidden.shape)} and "
                         f"{tuple(tokens.shape)}")
    logits = mtp(hidden[:, :-2], tokens[:, 1:-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 2:].flatten())


def feature_loss(mtp: MTPModule, hidden: torch.Tensor, tokens: torch.Tensor, target_norm: nn.Module) -> torch.Tensor:
    """Self-distillation in feature space (EAGLE's regression loss, Li et al. 2024): the module's state at position
    i, from (h_i, t_{i+1}), should be the target's own next state h_{i+1}; compared after the final norm (what the
    shared head reads), with smooth L1. Then head(out_norm(state_i)) approximates the target's logits at i+1, whose
    argmax is the token the target itself would emit: what a speculative draft has to guess."""
    if hidden.shape[:2] != tokens.shape or tokens.shape[1] < 2:
        raise ValueError(f"need hidden [B, S, d] and tokens [B, S] with S >= 2, got {tuple(hidden.shape)} and "
                         f"{tuple(tokens.shape)}")
    s = mtp.states(hidden[:, :-1], tokens[:, 1:])
    with torch.no_grad():
        want = target_norm(hidden[:, 1:])
    return F.smooth_l1_loss(mtp.out_norm(s).float(), want.float())


@torch.no_grad()
def greedy_next(model, hidden: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The target's greedy next token at every position of cached states hidden [N, d]: argmax head(norm(h_i))."""
    return torch.cat([model.lm_head(model.model.norm(hidden[i: i + chunk])).argmax(-1)
                      for i in range(0, hidden.shape[0], chunk)])


@torch.no_grad()
def first_draft_hits(mtp: MTPModule, hidden: torch.Tensor, tokens: torch.Tensor, greedy: torch.Tensor) -> torch.Tensor:
    """Per position i (0 .. N-2): is the module's draft from (h_i, t_{i+1}) the target's own greedy token after
    t_{i+1} (greedy[i+1])? hidden [N, d], tokens [N], greedy [N] from `greedy_next`."""
    if not (hidden.shape[0] == tokens.numel() == greedy.numel()):
        raise ValueError(f"hidden, tokens and greedy must cover the same N positions, got {hidden.shape[0]}, "
                         f"{tokens.numel()}, {greedy.numel()}")
    s = mtp.states(hidden[None, :-1], tokens[None, 1:])
    return (mtp.head(mtp.out_norm(s)).argmax(-1)[0] == greedy[1:]).float()


def target_hidden_states(model, ids: torch.Tensor, window: int = 256) -> torch.Tensor:
    """The main model's last-layer states before the final norm, [N, d], for a token stream cut into windows."""
    ids = torch.as_tensor(ids).flatten()
    n = ids.numel() // window
    if n < 1:
        raise ValueError(f"need at least one window of {window} tokens, got {ids.numel()}")
    grabbed = []
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: grabbed.append(inp[0].detach()))
    try:
        with torch.inference_mode():
            for i in tqdm(range(n), desc="hidden states", leave=False):
                model(ids[i * window:(i + 1) * window][None], use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return torch.cat([g[0] for g in grabbed]).clone()


def train_mtp(mtp: MTPModule, hidden: torch.Tensor, tokens: torch.Tensor, steps: int, seq_len: int = 128,
              batch: int = 4, lr: float = 1e-3, seed: int = 0, autocast_bf16: bool = False,
              target_norm: nn.Module | None = None) -> list[float]:
    """AdamW on random windows of cached (hidden, token) streams; returns the loss of every step.

    Default objective: `mtp_loss` (cross-entropy on the text's token after next). With `target_norm` (the target's
    final norm): `feature_loss`, self-distillation onto the target's own next states; the output norm then stays
    frozen (a copy of the target's) and no step runs the 49k-row head, so a step is several times cheaper.
    autocast_bf16: run the forward under bf16 autocast (on a CPU with AMX the 49k-row head matmul is much faster).
    """
    if steps < 1 or seq_len < 3 or batch < 1:
        raise ValueError(f"need steps >= 1, seq_len >= 3, batch >= 1; got {steps}, {seq_len}, {batch}")
    n = tokens.numel() - seq_len
    if n < 1:
        raise ValueError(f"the stream ({tokens.numel()} tokens) is shorter than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    for p in (mtp.embed.weight, mtp.head.weight, *(mtp.out_norm.parameters() if target_norm is not None else ())):
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in mtp.trainable_parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    mtp.train()
    for _ in tqdm(range(steps), desc="MTP training", leave=False):
        starts = torch.randint(0, n, (batch,), generator=g)
        h = torch.stack([hidden[s: s + seq_len] for s in starts])
        t = torch.stack([tokens[s: s + seq_len] for s in starts])
        with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = mtp_loss(mtp, h, t) if target_norm is None else feature_loss(mtp, h, t, target_norm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    mtp.eval()
    return losses


@torch.no_grad()
def acceptance_by_position(mtp: MTPModule, hidden: torch.Tensor, tokens: torch.Tensor, depth: int = 3,
                           window: int = 64) -> list[float]:
    """Greedy-match rate of chained draft position j=1..depth on a held-out stream (the drafts that would be
    accepted, position by position, given all earlier ones were right): target next tokens are `tokens` itself."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    h, t = hidden[None], tokens[None]
    N = tokens.numel()
    hits = [0] * depth
    tries = [0] * depth
    states = mtp.states(h[:, :-1], t[:, 1:])              # state i predicts token i+2
    preds = mtp.head(mtp.out_norm(states)).argmax(-1)[0]
    first = preds[: N - 2] == tokens[2:]
    hits[0], tries[0] = int(first.sum()), first.numel()
    if depth > 1:   # chains: feed the module's own state and its draft back, over a sliding window
        for i in range(window, N - depth - 1, 7):
            ctx_h, ctx_t = h[:, i - window: i + 1], t[:, i - window + 1: i + 2]   # pairs (h_j, t_j+1), j <= i
            ok = True
            for j in range(depth):
                s = mtp.states(ctx_h, ctx_t)
                d = int(mtp.head(mtp.out_norm(s[:, -1])).argmax())
                if j > 0 and ok:
                    tries[j] += 1
                    hits[j] += int(d == tokens[i + 2 + j])
                ok = ok and d == int(tokens[i + 2 + j])
                ctx_h = torch.cat([ctx_h, s[:, -1:]], 1)
                ctx_t = torch.cat([ctx_t, torch.tensor([[d]])], 1)
    return [hits[j] / tries[j] if tries[j] else float("nan") for j in range(depth)]


class MTPDraft:
    """Draft for `StaticCacheDecoder.speculative_generate` from a trained `MTPModule` (chained for k > 1)."""

    def __init__(self, mtp: MTPModule, window: int = 48):
        if window < 1:
            raise ValueError(f"window must be >= 1 position, got {window}")
        self.mtp, self.window, self.vocab_size = mtp, window, mtp.vocab_size
        self.history: torch.Tensor | None = None

    @torch.no_grad()
    def propose(self, tokens: torch.Tensor, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """k draft tokens after `tokens`, given the target states of the newly verified positions."""
        L = tokens.numel()
        if self.history is None or hidden.shape[0] == L - 1:
            self.history = hidden.clone()
        else:
            self.history = torch.cat([self.history, hidden])[-(self.window + k):]
        w = min(self.window, self.history.shape[0])
        ctx_h = self.history[-w:][None].to(self.mtp.proj.weight.dtype)
        ctx_t = tokens[L - w:][None]
        out = []
        for _ in range(k):
            s = self.mtp.states(ctx_h, ctx_t)
            d = self.mtp.head(self.mtp.out_norm(s[:, -1])).argmax(-1)
            out.append(int(d))
            ctx_h = torch.cat([ctx_h, s[:, -1:]], 1)[:, -self.window:]
            ctx_t = torch.cat([ctx_t, d.view(1, 1)], 1)[:, -self.window:]
        return torch.tensor(out, dtype=torch.long)
