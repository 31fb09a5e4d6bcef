"""Simulated FP8 training as DeepSeek-V3 does it (arXiv 2412.19437, Section 3.3): a custom autograd Linear.

All three GEMMs of a Linear run on e4m3 operands — Fprop ``y = x Wᵀ``, Dgrad ``dx = dy W``, Wgrad ``dW = dyᵀ x`` —
each operand scaled by its own max-abs per tile *along the GEMM's contraction dimension*, computed online from the
current values (no delayed history):

- activations / output gradients: 1 x 128 tiles (one scale per token per 128 channels) for Fprop and Dgrad; for
  Wgrad the contraction runs over tokens, so their tiles are 128 x 1 (128 tokens of one channel);
- weights: 128 x 128 blocks (one block layout serves both W in Fprop and Wᵀ in Dgrad);
- products accumulated in FP32, master weights and their gradients in FP32 (the optimizer never sees FP8).

The simulation quantizes and dequantizes (``utils.quant.fake_quantize_fp8``) and multiplies in FP32, so it shows
the *numerics* of the recipe, not its speed: a CPU has no FP8 matrix unit. It also accumulates exactly in FP32,
so it does not show the limited accumulation precision of H800 tensor cores that V3 promotes to CUDA cores
every 128 elements. ``granularity="tensor"`` is the ablation: one scale per tensor for every operand.

Widths that are not a multiple of the tile are zero-padded to whole tiles (as V3's weight files are), or refused
with ``pad=False``. Embedding, output head and norms stay high precision: ``to_fp8`` only swaps the ``nn.Linear``
modules inside the transformer blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import fake_quantize_fp8

GRANULARITIES = ("tile", "tensor")


def _blocks(granularity: str, tile: int) -> dict[str, tuple[int, int]]:
    """The block of every operand: act (Fprop/Dgrad rows), act_t (Wgrad, along tokens), weight."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if granularity == "tensor":
        return {"act": (-1, -1), "act_t": (-1, -1), "weight": (-1, -1)}
    return {"act": (1, tile), "act_t": (tile, 1), "weight": (tile, tile)}


class Fp8LinearFunction(torch.autograd.Function):
    """y = q(x) q(W)ᵀ; dx = q(dy) q(W); dW = q(dy)ᵀ q(x) — every q an e4m3 fake-quantization per tile, FP32 GEMMs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, granularity: str = "tile", tile: int = 128):
        b = _blocks(granularity, tile)
        x2 = x.reshape(-1, x.shape[-1]).float()
        wq = fake_quantize_fp8(weight.float(), b["weight"])            # 128x128 blocks
        y = fake_quantize_fp8(x2, b["act"]) @ wq.T                       # Fprop: contraction over in_features
        ctx.save_for_backward(x2, wq)
        ctx.blocks, ctx.x_shape = b, x.shape
        return y.reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, wq = ctx.saved_tensors
        b = ctx.blocks
        dy2 = dy.reshape(-1, dy.shape[-1]).float()
        dx = fake_quantize_fp8(dy2, b["act"]) @ wq                       # Dgrad: contraction over out_features
        dw = fake_quantize_fp8(dy2, b["act_t"]).T @ fake_quantize_fp8(x2, b["act_t"])   # Wgrad: over tokens
        return dx.reshape(ctx.x_shape).to(dy.dtype), dw, None, None


class Fp8Linear(nn.Module):
    """A bias-free Linear whose three GEMMs run in simulated e4m3 (`Fp8LinearFunction`); the weight stays FP32."""

    def __init__(self, in_features: int, out_features: int, granularity: str = "tile", tile: int = 128,
                 pad: bool = True, weight: nn.Parameter | None = None):
        super().__init__()
        _blocks(granularity, tile)
        if granularity == "tile" and not pad and (in_features % tile or out_features % tile):
            raise ValueError(f"FP8 tiles of {tile} do not divide the Linear's widths ({in_features} -> "
                             f"{out_features}): pass pad=True to zero-pad to whole tiles (as DeepSeek-V3), or pick a "
                             f"tile that divides both")
        self.in_features, self.out_features = in_features, out_features
        self.granularity, self.tile = granularity, tile
        self.weight = weight if weight is not None else nn.Parameter(torch.empty(out_features, in_features))
        if weight is None:
            nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Fp8LinearFunction.apply(x, self.weight, self.granularity, self.tile)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, e4m3, granularity={self.granularity}, tile={self.tile}"


def to_fp8(model: nn.Module, granularity: str = "tile", tile: int = 128, pad: bool = True,
           within: str = "blocks") -> nn.Module:
    """Swap every bias-free `nn.Linear` under `model.<within>` for an `Fp8Linear` sharing its weight (in place).

    Embedding, output head and norms, outside the blocks, stay high precision, as in DeepSeek-V3.
    Returns the model; `fp8_linears(model)` lists what was swapped.
    """
    root = getattr(model, within, None)
    if root is None:
        raise ValueError(f"the model has no submodule {within!r} to convert")
    swaps = [(parent, name, child) for parent in root.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    if not swaps:
        raise ValueError(f"no nn.Linear found under model.{within}")
    biased = [name for _, name, lin in swaps if lin.bias is not None]
    if biased:
        raise ValueError(f"Fp8Linear is bias-free; these Linears have a bias: {biased}")
    for parent, name, lin in swaps:
        setattr(parent, name, Fp8Linear(lin.in_features, lin.out_features, granularity, tile, pad, lin.weight))
    return model


def fp8_linears(model: nn.Module) -> list[str]:
    """Names of the `Fp8Linear` modules in `model`."""
    return [n for n, m in model.named_modules() if isinstance(m, Fp8Linear)]
