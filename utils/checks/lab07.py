"""Hidden tests of lab 07 (pruning and sparsity). Each `check_N(fn)` prints a pass line or a one-line verdict."""

from __future__ import annotations

import torch

from ..checking import CheckFailed, expect_tensor, expect_value_error, run_check
from ..checking import seeded_randn as _rand


def _row_keep_ref(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    k = int(score.shape[-1] * sparsity)
    order = torch.argsort(score, dim=-1, stable=True)
    return torch.ones_like(score, dtype=torch.bool).scatter_(-1, order[..., :k], False)


def _check_row_mask(what: str, got, score: torch.Tensor, sparsity: float, name: str) -> None:
    expect_tensor(what, got, shape=tuple(score.shape), dtype=torch.bool)
    k = int(score.shape[-1] * sparsity)
    removed = (~got).sum(-1)
    if not (removed == k).all():
        r = int((removed != k).nonzero()[0])
        raise CheckFailed(f"{what}: row {r} has {int(removed[r])} weights removed, every row should lose exactly "
                          f"int({score.shape[-1]} × {sparsity}) = {k} (compare within each output row, not across "
                          "the whole matrix)")
    kept_min = torch.where(got, score, torch.inf).amin(-1)
    gone_max = torch.where(~got, score, -torch.inf).amax(-1)
    if (gone_max > kept_min).any():
        r = int((gone_max > kept_min).nonzero()[0])
        raise CheckFailed(f"{what}: in row {r} a removed weight has a higher {name} ({gone_max[r]:.4g}) than a kept "
                          f"one ({kept_min[r]:.4g}): keep the largest, remove the smallest")


# --------------------------------------------------------------------------- exercise 1
def check_1(fn) -> None:
    """Exercise 1: a magnitude mask per output row."""

    def tests():
        for (o, i), s in [((4, 10), 0.5), ((6, 16), 0.25), ((3, 7), 0.7), ((5, 12), 0.0)]:
            w = _rand(o, i, seed=o * 100 + i)
            w[0] *= 10                                     # one row of large weights: a per-matrix threshold fails
            _check_row_mask(f"magnitude_mask_per_row(w [{o}, {i}], {s})", fn(w, s), w.abs(), s, "|w|")
        w = _rand(4, 8, seed=1)
        for bad in (-0.1, 1.0, 1.5):
            expect_value_error(f"magnitude_mask_per_row(w, sparsity={bad})", lambda bad=bad: fn(w, bad))
        return "each row loses exactly its share of smallest |w|; sparsity outside [0, 1) is refused."

    run_check(1, tests)


# --------------------------------------------------------------------------- exercise 2
def _wanda_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 12, generator=g)
    x = torch.randn(40, 12, generator=g) * 0.3
    x[:, 3] = 0.0
    x[:2, 3] = 6.0                                         # a feature with rare large values: L2 norm ≠ mean |x|
    x[:, 7] *= 8.0                                         # a feature with large values everywhere
    w[1] *= 20                                             # a row of large weights: a per-matrix threshold fails
    return w, x


def check_2(fn) -> None:
    """Exercise 2: the Wanda mask |W_ij|·‖X_j‖₂ compared within each output row."""

    def tests():
        for seed, s in [(0, 0.5), (1, 0.25), (2, 0.75)]:
            w, x = _wanda_inputs(seed)
            score = w.abs() * x.norm(dim=0)[None, :]
            got = fn(w, x, s)
            what = f"wanda_mask(w [6, 12], x [40 tokens, 12], {s})"
            expect_tensor(what, got, shape=(6, 12), dtype=torch.bool)
            if torch.equal(got, _row_keep_ref(w.abs(), s)) and not torch.equal(got, _row_keep_ref(score, s)):
                raise CheckFailed(f"{what}: this is the plain magnitude mask; Wanda scores |W_ij| · ‖X_j‖₂")
            alt = w.abs() * x.abs().mean(0)[None, :]
            if torch.equal(got, _row_keep_ref(alt, s)) and not torch.equal(got, _row_keep_ref(score, s)):
                raise CheckFailed(f"{what}: you used the mean |x_j|; Wanda uses the L2 norm ‖X_j‖₂ = sqrt(Σ_t x_tj²) "
                                  "over the calibration tokens")
            _check_row_mask(what, got, score, s, "Wanda score")
        return "the score |W|·‖X_j‖₂ and a per-row comparison, as in Sun et al. (2023)."

    run_check(2, tests)


# --------------------------------------------------------------------------- exercise 3
def check_3(fn) -> None:
    """Exercise 3: an N:M mask along the input dimension."""

    def tests():
        for (o, i), (n, m) in [((4, 8), (2, 4)), ((3, 16), (4, 8)), ((5, 12), (1, 4)), ((2, 6), (2, 3))]:
            score = _rand(o, i, seed=o + i + n).abs()
            got = fn(score, n, m)
            what = f"nm_mask(score [{o}, {i}], {n}, {m})"
            expect_tensor(what, got, shape=(o, i), dtype=torch.bool)
            per_group = got.reshape(o, i // m, m).sum(-1)
            if not (per_group == n).all():
                if o % m == 0 and (got.T.reshape(i, o // m, m).sum(-1) == n).all():
                    raise CheckFailed(f"{what}: the groups run down the columns (output dimension); N:M groups "
                                      f"are {m} consecutive weights of a row (the input dimension of the dot product)")
                raise CheckFailed(f"{what}: each group of {m} consecutive weights of a row must keep exactly {n}; "
                                  f"got counts {sorted(set(per_group.flatten().tolist()))}")
            g = score.reshape(o, i // m, m)
            kg = got.reshape(o, i // m, m)
            if (torch.where(~kg, g, -torch.inf).amax(-1) > torch.where(kg, g, torch.inf).amin(-1)).any():
                raise CheckFailed(f"{what}: in some group a removed weight scores higher than a kept one: keep the "
                                  f"top {n} of each group")
        s = _rand(4, 8, seed=3).abs()
        expect_value_error("nm_mask(score, n=4, m=4) (n must be < m)", lambda: fn(s, 4, 4))
        expect_value_error("nm_mask(score [4, 10], 2, 4) (width not divisible by m)",
                            lambda: fn(_rand(4, 10, seed=4).abs(), 2, 4))
        return "exactly n non-zeros in every group of m consecutive inputs; n >= m and ragged widths refused."

    run_check(3, tests)


# --------------------------------------------------------------------------- exercise 4
def sparsegpt_block_reference(w: torch.Tensor, u: torch.Tensor, prune: torch.Tensor) -> torch.Tensor:
    """Column-by-column OBS pruning of W [out, b] with the upper Cholesky factor U of H⁻¹ [b, b] and a fixed mask."""
    w = w.clone().double()
    u = u.double()
    for j in range(w.shape[1]):
        err = torch.where(prune[:, j], w[:, j], torch.zeros_like(w[:, j])) / u[j, j]
        w[:, j:] -= err[:, None] * u[j, j:][None, :]
        w[prune[:, j], j] = 0
    return w


def _obs_case(seed: int, out_f: int = 6, b: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, b, generator=g, dtype=torch.float64) @ (torch.eye(b, dtype=torch.float64)
                                                                  + 0.5 * torch.randn(b, b, generator=g,
                                                                                      dtype=torch.float64))
    w = torch.randn(out_f, b, generator=g, dtype=torch.float64)
    h = x[:150].T @ x[:150]
    h += 0.01 * torch.diagonal(h).mean() * torch.eye(b, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    prune = torch.rand(out_f, b, generator=g) < 0.5
    return w, u, prune, x


def check_4(fn) -> None:
    """Exercise 4: the SparseGPT column update for one block with a fixed mask."""

    def tests():
        gains = []
        for seed in (0, 1, 2):
            w, u, prune, x = _obs_case(seed)
            want = sparsegpt_block_reference(w, u, prune)
            got = fn(w.clone(), u.clone(), prune.clone())
            what = f"sparsegpt_block(w [6, 8], U [8, 8], mask) (case {seed})"
            expect_tensor(what, got, shape=(6, 8))
            got = got.double()
            if not (got[prune] == 0).all():
                raise CheckFailed(f"{what}: {int((got[prune] != 0).sum())} weights marked for pruning are not 0")
            if torch.allclose(got, w * ~prune, atol=1e-9):
                raise CheckFailed(f"{what}: the result is the plain masked weight — the Hessian update is missing: "
                                  "after pruning column j, subtract err_j · U[j, j:] from the columns j.. "
                                  "(err_j = w_j / U[j, j] on the pruned rows)")
            if not torch.allclose(got, want, rtol=1e-6, atol=1e-8):
                d = (got - want).abs().max().item()
                raise CheckFailed(f"{what}: differs from the reference by up to {d:.3g}; check the order (update the "
                                  "later columns with the *current* column, then zero it) and the division by U[j, j]")
            held = x[150:]
            y = held @ w.T
            gains.append(float(((y - held @ (w * ~prune).T) ** 2).sum() / ((y - held @ got.T) ** 2).sum()))
        return (f"matches the reference; held-out output error {min(gains):.1f}–{max(gains):.1f}× lower than plain "
                "masking on these cases.")

    run_check(4, tests)


# --------------------------------------------------------------------------- exercise 5
def attention_reference(x, wq, wk, wv, wo, head_dim: int, head_mask=None):
    """Causal multi-head attention of x [T, d] (no positions): heads of `head_dim`; head_mask [H] scales each head."""
    T = x.shape[0]
    q = (x @ wq.T).reshape(T, -1, head_dim).transpose(0, 1)
    k = (x @ wk.T).reshape(T, -1, head_dim).transpose(0, 1)
    v = (x @ wv.T).reshape(T, -1, head_dim).transpose(0, 1)
    att = (q @ k.transpose(1, 2)) / head_dim ** 0.5
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
    o = att @ v                                            # [H, T, hd]
    if head_mask is not None:
        o = o * head_mask[:, None, None]
    return o.transpose(0, 1).reshape(T, -1) @ wo.T


def check_5(fn) -> None:
    """Exercise 5: removing k heads gives a smaller layer equal to the masked original."""

    def tests():
        d, hd, H = 12, 3, 4
        g = torch.Generator().manual_seed(0)
        mats = [torch.randn(H * hd, d, generator=g, dtype=torch.float64) for _ in range(3)]
        wo = torch.randn(d, H * hd, generator=g, dtype=torch.float64)
        x = torch.randn(7, d, generator=g, dtype=torch.float64)
        for heads in ([1], [0, 3], [2, 1, 0]):
            out = fn(*[m.clone() for m in mats], wo.clone(), heads, hd)
            what = f"remove_heads(..., heads={heads}, head_dim={hd})"
            if not (isinstance(out, (tuple, list)) and len(out) == 4):
                raise CheckFailed(f"{what}: return the four smaller matrices (wq, wk, wv, wo)")
            keep = H - len(set(heads))
            for name, t, shape in zip(("wq", "wk", "wv", "wo"), out, [(keep * hd, d)] * 3 + [(d, keep * hd)]):
                expect_tensor(f"{what}: {name}", t, shape=shape)
            mask = torch.ones(H, dtype=torch.float64)
            mask[heads] = 0
            want = attention_reference(x, *mats, wo, hd, mask)
            got = attention_reference(x, *[t.double() for t in out], hd)
            if not torch.allclose(got, want, atol=1e-10):
                raise CheckFailed(f"{what}: the smaller layer's output differs from the original with those heads "
                                  f"masked by up to {(got - want).abs().max().item():.3g}: remove the head's rows of "
                                  "wq, wk and wv (head h is rows h·head_dim .. (h+1)·head_dim − 1) and the same "
                                  "*columns* of wo")
        expect_value_error(f"remove_heads(..., heads=[0, 1, 2, 3]) (all {H} heads)",
                            lambda: fn(*mats, wo, [0, 1, 2, 3], hd))
        expect_value_error("remove_heads(..., heads=[5]) (no head 5)", lambda: fn(*mats, wo, [5], hd))
        return "the smaller layer equals the original with those heads masked, exactly; bad head lists refused."

    run_check(5, tests)
