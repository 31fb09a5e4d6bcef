"""Weight-only int8 / int4 linear layers on PyTorch's CPU kernels, swapped into a model for real decode speed.

`torch._weight_int8pack_mm` (int8 per output channel) and `torch._weight_int4pack_mm_for_cpu` (asymmetric int4 in
groups along the input dimension) take bf16 activations; both are private APIs that may change. Notebook 06 builds
and measures them; notebook 04 times them inside the static-cache decoder (`utils.decoder`). An asymmetric int4 grid
with groups of 32 (scale = (max - min) / 15, offset = min) is the GGUF Q4_1 grid the shipped SmolLM2 file uses.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ W^T with W as int8 per output channel (absmax / 127); bf16 activations."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        if lin.bias is not None:
            raise ValueError("Int8WeightOnlyLinear supports linears without bias only")
        w = lin.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.out_features = w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.q, self.scale)
        return y.reshape(*shape[:-1], -1)


class Int4WeightOnlyLinear(nn.Module):
    """y = x @ W^T with W as packed asymmetric int4 in groups of `group` inputs; bf16 activations (tinygemm)."""

    def __init__(self, lin: nn.Linear, group: int = 32,
                 grid: tuple[torch.Tensor, torch.Tensor] | None = None):
        """`grid`: (scale, minimum), each [out, in/group], of weights that already lie on an asymmetric int4 grid
        (e.g. GPTQ's, whose groups need not use codes 0 and 15): the codes are taken on that grid instead of one
        recomputed from each group's min and max."""
        super().__init__()
        if group not in (32, 64, 128, 256):
            raise ValueError(f"group must be 32, 64, 128 or 256 (the kernel's sizes), got {group}")
        if lin.bias is not None:
            raise ValueError("Int4WeightOnlyLinear supports linears without bias only")
        w = lin.weight.detach().float().cpu()                  # a CPU kernel: its buffers live on the CPU
        n, k = w.shape
        if k % group:
            raise ValueError(f"in_features {k} is not a multiple of the group size {group}")
        wg = w.reshape(n, k // group, group)
        if grid is None:
            lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
            scale = (hi - lo).clamp(min=1e-8) / 15
        else:
            scale, lo = (g.detach().float().to(w.device).reshape(n, k // group, 1) for g in grid)
            if not bool((scale > 0).all()):
                raise ValueError("grid scales must be positive")
        q = torch.round((wg - lo) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
        # the kernel's convention: w = (q - 8) * scale + zero, so zero = lo + 8 * scale
        sz = torch.stack([scale.squeeze(-1), (lo + 8 * scale).squeeze(-1)], -1).transpose(0, 1).contiguous()
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16))
        self.group, self.out_features = group, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.packed, self.group,
                                              self.scales_zeros)
        return y.reshape(*shape[:-1], -1)


def quantized_copy(model, blocks: str, head: str | None = None, group: int = 32,
                   per_projection: dict[str, str] | None = None, head_group: int | None = None,
                   grids: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A copy of `model` with the decoder blocks' linears in `blocks` ('bf16', 'int8' or 'int4') and the output head
    in `head` ('int8', 'int4' or None: bf16); norms and embedding become bf16, RoPE frequencies stay fp32. The
    original is not modified. `per_projection` overrides `blocks` per projection name (e.g. {'down_proj': 'int8'}):
    a kernel picked per shape. `head_group`: the int4 head's group size (default `group`). `grids` maps block
    Linear names (``model.layers.0.mlp.up_proj``) to the (scale, minimum) int4 grid their weights lie on."""
    makers = {"int8": Int8WeightOnlyLinear, "int4": lambda lin: Int4WeightOnlyLinear(lin, group)}
    grids = dict(grids or {})
    per_projection = dict(per_projection or {})
    if blocks not in (*makers, "bf16") or (head is not None and head not in makers):
        raise ValueError(f"blocks must be 'bf16', 'int8' or 'int4' and head 'int8', 'int4' or None, got {blocks!r}, "
                         f"{head!r}")
    bad = {n: f for n, f in per_projection.items() if n not in PROJECTIONS or f not in (*makers, "bf16")}
    if bad:
        raise ValueError(f"per_projection maps projection names {PROJECTIONS} to 'bf16', 'int8' or 'int4'; got {bad}")
    m = copy.deepcopy(model)
    if head is not None and m.lm_head.weight is m.get_input_embeddings().weight:
        m.lm_head = nn.Linear(m.lm_head.in_features, m.lm_head.out_features, bias=False)
        m.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    for i, layer in enumerate(m.model.layers):
        for part, mod in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for name, child in list(mod.named_children()):
                fmt = per_projection.get(name, blocks)
                full = f"model.layers.{i}.{part}.{name}"
                if isinstance(child, nn.Linear) and fmt == "int4" and full in grids:
                    setattr(mod, name, Int4WeightOnlyLinear(child, group, grid=grids.pop(full)))
                elif isinstance(child, nn.Linear) and fmt != "bf16":
                    setattr(mod, name, makers[fmt](child))
    if grids:
        raise ValueError(f"grids given for Linears that are not int4 block projections: {sorted(grids)[:3]}")
    if head is not None:
        m.lm_head = (Int4WeightOnlyLinear(m.lm_head, head_group or group) if head == "int4"
                     else makers[head](m.lm_head))
    m = m.to(torch.bfloat16)
    rope, rope0 = m.model.rotary_emb, model.model.rotary_emb
    for name, buf in rope0.named_buffers(recurse=False):   # angles = position x frequency: keep them in fp32
        setattr(rope, name, buf.detach().clone())
    return m


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every matmul weight (packed formats too) and norms; the embedding
    table only when the output head multiplies by it (a lookup reads one row)."""
    emb = model.get_input_embeddings().weight
    head_w = getattr(model.lm_head, "weight", None)
    seen, total = set(), 0
    for mod in model.modules():
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if t.data_ptr() in seen or (t is emb and head_w is not emb):
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total



def m1_matmul_rates(model, repeats: int = 5) -> dict[str, tuple[float, int]]:
    """Seconds per decode step and bytes read for each kind of matmul at M=1 (one token), as a step runs it.

    Each projection (q_proj, ..., down_proj) is applied for every layer back to back with its own weights, so the
    weights stream from memory as in a real step rather than sitting in cache; `lm_head` once. Returns
    {name: (median seconds for all layers, weight bytes read)}: bytes / seconds is the kernel's effective rate.
    """
    import statistics
    import time

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    layers = model.model.layers
    cfg = model.config
    d = cfg.hidden_size
    d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads)
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    out: dict[str, tuple[float, int]] = {}
    mods = {name: [getattr(ly.self_attn if name[0] in "qkvo" else ly.mlp, name) for ly in layers]
            for name in PROJECTIONS}
    mods["lm_head"] = [model.lm_head]
    with torch.inference_mode():
        for name, ms in mods.items():
            n_in = cfg.intermediate_size if name == "down_proj" else d_attn if name == "o_proj" else d
            x = torch.randn(1, 1, n_in, dtype=dtype)
            nbytes = sum(t.numel() * t.element_size() for m in ms for t in [*m.parameters(), *m.buffers()])
            times = []
            for r in range(repeats + 1):
                t0 = time.perf_counter()
                for m in ms:
                    m(x)
                if r:                       # the first pass is a warm-up
                    times.append(time.perf_counter() - t0)
            out[name] = (statistics.median(times), nbytes)
    return out
