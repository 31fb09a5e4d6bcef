"""Pruning from scratch: magnitude, Wanda and SparseGPT masks (unstructured and N:M), and structured surgery on a
Hugging Face Llama model (attention heads, FFN channels, whole blocks) that rebuilds smaller dense matrices.

    keep = magnitude_mask(w, 0.5)                       # bool [out, in]: True = weight kept (per matrix)
    keep = wanda_mask(w, x_norm, 0.5)                   # |W|·‖X_j‖₂, compared within each output row
    keep = wanda_mask(w, x_norm, n=2, m=4)              # 2:4 — keep 2 of every 4 consecutive inputs of a row
    w_pruned = sparsegpt_prune(w, xtx, 0.5)             # OBS with the inverse Hessian, lazy blocks of 128

References: Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models" (Wanda);
Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (their
`sparsegpt.py`: `fasterprune`, whose loop `sparsegpt_prune` follows); Men et al. 2024 (ShortGPT) and Gromov et al.
2024 for dropping whole blocks by how little they change their input.
"""

from __future__ import annotations

import torch


# --------------------------------------------------------------------------- arguments
def check_sparsity(sparsity: float) -> float:
    """A fraction of weights to remove, in [0, 1)."""
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    return float(sparsity)


def check_nm(n: int, m: int, width: int) -> None:
    """N:M keeps n of every m consecutive weights along a row: 1 <= n < m, and m must divide the row width."""
    if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 2:
        raise ValueError(f"N:M needs integers n >= 1 and m >= 2, got n={n!r}, m={m!r}")
    if n >= m:
        raise ValueError(f"N:M keeps n of every m weights, so n must be < m; got {n}:{m}")
    if width % m:
        raise ValueError(f"the row width {width} is not divisible by m={m}: N:M groups would straddle rows")


# --------------------------------------------------------------------------- masks from scores
def keep_mask(score: torch.Tensor, sparsity: float | None = None, per: str = "row", n: int | None = None,
              m: int | None = None) -> torch.Tensor:
    """Keep the highest-scoring weights: a `sparsity` fraction removed per output row / per matrix, or n of every m.

    score [..., out, in]; returns a bool mask of the same shape (True = kept). Ties are broken by position (stable).
    """
    if n is not None or m is not None:
        if n is None or m is None:
            raise ValueError("N:M needs both n and m")
        check_nm(n, m, score.shape[-1])
        g = score.reshape(*score.shape[:-1], score.shape[-1] // m, m)
        idx = torch.topk(g, n, dim=-1, sorted=False).indices
        return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(score.shape)
    s = check_sparsity(sparsity if sparsity is not None else -1)
    if per not in ("row", "matrix"):
        raise ValueError(f"per must be 'row' or 'matrix', got {per!r}")
    flat = score.reshape(*score.shape[:-1], -1) if per == "row" else score.reshape(*score.shape[:-2], -1)
    k = int(flat.shape[-1] * s)                              # how many to remove in each row / matrix
    if k == 0:
        return torch.ones_like(score, dtype=torch.bool)
    thresh = flat.kthvalue(k, dim=-1, keepdim=True).values   # the k-th smallest score (linear time, unlike a sort)
    below = flat < thresh
    ties = flat == thresh                                    # remove just enough tied scores, the first ones first
    need = k - below.sum(-1, keepdim=True)
    if bool((ties.sum(-1, keepdim=True) == need).all()):    # the usual case: no tie straddles the threshold
        return (~(below | ties)).reshape(score.shape)
    drop = below | (ties & (ties.cumsum(-1) <= need))
    return (~drop).reshape(score.shape)


def magnitude_mask(w: torch.Tensor, sparsity: float | None = None, per: str = "matrix", n: int | None = None,
                   m: int | None = None) -> torch.Tensor:
    """Keep the largest |W| (per matrix, as the Wanda repository's magnitude baseline; or per row; or N:M)."""
    return keep_mask(w.abs(), sparsity, per, n, m)


def wanda_score(w: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's importance |W_ij|·‖X_j‖₂: x_norm [in] is the L2 norm of input feature j over the calibration tokens."""
    if x_norm.shape[-1] != w.shape[-1]:
        raise ValueError(f"x_norm has {x_norm.shape[-1]} features, the weight has {w.shape[-1]} inputs")
    return w.abs() * x_norm.unsqueeze(-2)


def wanda_mask(w: torch.Tensor, x_norm: torch.Tensor, sparsity: float | None = None, n: int | None = None,
               m: int | None = None) -> torch.Tensor:
    """Wanda: keep the highest |W|·‖X_j‖₂ within each output row (or n of every m)."""
    return keep_mask(wanda_score(w, x_norm), sparsity, "row", n, m)


# --------------------------------------------------------------------------- SparseGPT
def sparsegpt_prune(w: torch.Tensor, xtx: torch.Tensor, sparsity: float | None = None, n: int | None = None,
                    m: int | None = None, block: int = 128, damp: float = 0.01, lazy: int = 32) -> torch.Tensor:
    """SparseGPT: prune W [..., out, in] column by column and update the later columns with the inverse Hessian.

    xtx [..., in, in] = XᵀX of the layer's calibration inputs (any positive scale). Within each block of `block`
    columns the mask is chosen by the OBS saliency w²/[H⁻¹]_jj²: the `sparsity` fraction of the block's weights
    (across all rows of the matrix) with the lowest saliency, or n of every m per row. Each pruned column's error
    is spread over the not-yet-pruned columns through the upper Cholesky factor of H⁻¹, as in `fasterprune`.
    `damp` adds damp·mean(diag H) to the diagonal. The later-column update is applied in sub-blocks of `lazy`
    columns (the reference applies it per mask block; the arithmetic is the same, a smaller sub-block is faster on
    a CPU). Returns the pruned, updated weight (float32).
    """
    if (n is None) == (sparsity is None):
        raise ValueError("give either sparsity (unstructured) or n and m (N:M), not both")
    if n is not None:
        check_nm(n, m, w.shape[-1])
        if block % m or lazy % m:
            raise ValueError(f"block ({block}) and lazy ({lazy}) must be multiples of m ({m})")
    else:
        check_sparsity(sparsity)
    if not damp > 0:
        raise ValueError(f"damp must be > 0 (a fraction of the mean Hessian diagonal), got {damp}")
    if block % lazy:
        raise ValueError(f"lazy ({lazy}) must divide block ({block})")
    *lead, out_f, in_f = w.shape
    if xtx.shape != (*lead, in_f, in_f):
        raise ValueError(f"xtx must be [..., {in_f}, {in_f}] matching w {tuple(w.shape)}, got {tuple(xtx.shape)}")
    W = w.reshape(-1, out_f, in_f).float().transpose(1, 2).contiguous()   # [B, in, out]: column j is row j
    H = xtx.reshape(-1, in_f, in_f).float().clone()
    diag = torch.diagonal(H, dim1=1, dim2=2)              # a view: writes go into H
    dead = diag == 0                                      # inputs never active: their weights do not matter
    diag[dead] = 1
    W[dead] = 0
    diag += damp * diag.mean(1, keepdim=True)
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)   # H⁻¹ = UᵀU, U upper triangular
    dU = torch.diagonal(U, dim1=1, dim2=2)                # [B, in]
    for i1 in range(0, in_f, block):                      # mask selection: blocks of `block` columns
        i2 = min(i1 + block, in_f)
        if n is None:                                     # OBS saliency w²/[H⁻¹]_jj², lowest pruned across the block
            sal = (W[:, i1:i2] / dU[:, i1:i2, None]) ** 2
            k = int(sal[0].numel() * sparsity)             # as the reference: prune saliency <= the k-th smallest
            thresh = sal.flatten(1).kthvalue(max(k, 1), dim=1).values[:, None, None]
            pruned = sal <= thresh if k else torch.zeros_like(sal, dtype=torch.bool)
        for j1 in range(i1, i2, lazy):                    # lazy updates: sub-blocks of `lazy` columns (same result)
            j2 = min(j1 + lazy, i2)
            W1, U1 = W[:, j1:j2], U[:, j1:j2, j1:j2]      # W1 is a view: updated in place
            E1 = torch.empty_like(W1)
            for i in range(j2 - j1):
                if n is None:
                    drop = pruned[:, j1 - i1 + i]
                else:
                    if i % m == 0:                        # N:M: choose the group's mask when its first column comes
                        sal = (W1[:, i:i + m] / dU[:, j1 + i:j1 + i + m, None]) ** 2     # [B, m, out]
                        group_drop = _group_rank(sal) >= n
                    drop = group_drop[:, i % m]
                col = W1[:, i]
                err = col * drop / U1[:, i, i, None]      # only the pruned weights carry an error
                E1[:, i] = err
                W1[:, i:] -= U1[:, i, i:, None] * err[:, None, :]
                W1[:, i].masked_fill_(drop, 0)            # exactly zero (the update above leaves rounding)
            W[:, j2:] -= U[:, j1:j2, j2:].transpose(1, 2) @ E1
    return W.transpose(1, 2).reshape(w.shape)


def _group_rank(sal: torch.Tensor) -> torch.Tensor:
    """Rank (0 = highest) of each of the m entries of sal [B, m, out] within its group; ties: the first ranks higher."""
    m = sal.shape[1]
    higher = (sal[:, None, :, :] > sal[:, :, None, :]).sum(2)               # how many entries of the group beat it
    earlier = torch.tril(torch.ones(m, m, dtype=torch.bool, device=sal.device), -1)
    ties = ((sal[:, None, :, :] == sal[:, :, None, :]) & earlier[None, :, :, None]).sum(2)
    return higher + ties


def output_error(w: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    """‖X·Wᵀ − X·W_newᵀ‖² / ‖X·Wᵀ‖²: the layer's relative output error on inputs x [tokens, in]."""
    y = x.float() @ w.float().T
    return float(((y - x.float() @ w_new.float().T) ** 2).sum() / (y ** 2).sum())


def sparsity_of(w: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((w == 0).float().mean())


# --------------------------------------------------------------------------- structured surgery (HF Llama)
def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype, device=weight.device)
    lin.weight.data.copy_(weight)
    return lin


def remove_heads(attn, heads: list[int], n_kv: int) -> None:
    """Remove query heads `heads` from a Llama attention module in place: fewer q_proj rows and o_proj columns.

    Under grouped-query attention query head h reads key/value head h // (n_q / n_kv), so the same number of heads
    must go from every group (the groups stay equal and in order); keys and values are untouched.
    """
    hd = attn.head_dim
    n_q = attn.q_proj.weight.shape[0] // hd
    gs = n_q // n_kv
    heads = sorted(set(int(h) for h in heads))
    if any(h < 0 or h >= n_q for h in heads):
        raise ValueError(f"head indices must be in 0..{n_q - 1}, got {heads}")
    if len(heads) >= n_q:
        raise ValueError(f"cannot remove {len(heads)} of {n_q} heads: at least one head per group must stay")
    per_group = [sum(h // gs == g for h in heads) for g in range(n_kv)]
    if len(set(per_group)) != 1:
        raise ValueError(f"remove the same number of heads from each of the {n_kv} key/value groups, got {per_group}")
    keep = [h for h in range(n_q) if h not in heads]
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep])
    attn.q_proj = _linear(attn.q_proj.weight.data[rows])
    attn.o_proj = _linear(attn.o_proj.weight.data[:, rows])
    attn.num_key_value_groups = len(keep) // n_kv


def remove_ffn_channels(mlp, channels: torch.Tensor) -> None:
    """Remove intermediate channels of a Llama MLP in place: rows of gate_proj and up_proj, columns of down_proj."""
    width = mlp.gate_proj.weight.shape[0]
    channels = torch.as_tensor(channels).long().unique()
    if channels.numel() and (channels.min() < 0 or channels.max() >= width):
        raise ValueError(f"channel indices must be in 0..{width - 1}")
    if channels.numel() >= width:
        raise ValueError(f"cannot remove {channels.numel()} of {width} channels")
    keep = torch.ones(width, dtype=torch.bool)
    keep[channels] = False
    mlp.gate_proj = _linear(mlp.gate_proj.weight.data[keep])
    mlp.up_proj = _linear(mlp.up_proj.weight.data[keep])
    mlp.down_proj = _linear(mlp.down_proj.weight.data[:, keep])


def remove_blocks(model, blocks: list[int]) -> None:
    """Drop whole decoder blocks from a HF Llama model in place (and renumber the cache slots of the rest)."""
    layers = model.model.layers
    blocks = sorted(set(int(b) for b in blocks))
    if any(b < 0 or b >= len(layers) for b in blocks):
        raise ValueError(f"block indices must be in 0..{len(layers) - 1}, got {blocks}")
    if len(blocks) >= len(layers):
        raise ValueError(f"cannot remove {len(blocks)} of {len(layers)} blocks")
    kept = [layer for i, layer in enumerate(layers) if i not in blocks]
    model.model.layers = torch.nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:len(kept)]


def thresholds(score: torch.Tensor, sparsities, per: str = "row") -> dict[float, torch.Tensor]:
    """{sparsity: the k-th smallest score per row / per matrix (keepdim)}, from one sort for every sparsity.

    `score > thresholds(...)[s]` keeps all but the int(width·s) lowest scores (exactly, unless scores tie).
    """
    if per not in ("row", "matrix"):
        raise ValueError(f"per must be 'row' or 'matrix', got {per!r}")
    flat = score if per == "row" else score.reshape(*score.shape[:-2], 1, -1)
    srt = flat.sort(dim=-1).values
    out = {}
    for s in sparsities:
        k = int(flat.shape[-1] * check_sparsity(s))
        out[s] = srt[..., k - 1:k] if k else torch.full_like(srt[..., :1], -torch.inf)
    return out
