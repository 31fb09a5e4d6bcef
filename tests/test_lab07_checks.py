"""Lab 07's checks accept the worked solution and reject typical mistakes."""

from __future__ import annotations

import pytest
import torch

from utils.checking import CheckFailed, ExerciseNotDone
from utils.checks import lab07
from utils.nbimport import load_definitions
from utils.results import REPO_ROOT

SOL = load_definitions(REPO_ROOT / "solutions" / "lab_07_pruning_and_sparsity.ipynb", {"torch": torch})


def _rejects(check, fn, match: str | None = None) -> str:
    with pytest.raises(CheckFailed, match=match) as e:
        check(fn)
    return str(e.value)


def _row_keep(score, s):
    k = int(score.shape[1] * s)
    return torch.ones_like(score, dtype=torch.bool).scatter_(1, torch.argsort(score, dim=1, stable=True)[:, :k], False)


def test_solution_passes_every_check(capsys):
    lab07.check_1(SOL["magnitude_mask_per_row"])
    lab07.check_2(SOL["wanda_mask"])
    lab07.check_3(SOL["nm_mask"])
    lab07.check_4(SOL["sparsegpt_block"])
    lab07.check_5(SOL["remove_heads"])
    assert capsys.readouterr().out.count("✅") == 5


def test_library_functions_pass_checks():
    from utils import pruning

    lab07.check_1(lambda w, s: pruning.keep_mask(w.abs(), s, per="row"))
    lab07.check_2(lambda w, x, s: pruning.wanda_mask(w, x.norm(dim=0), s))
    lab07.check_3(lambda sc, n, m: pruning.keep_mask(sc, n=n, m=m))


def test_stub_reports_not_done():
    def stub(*args):
        raise NotImplementedError("write your code")

    with pytest.raises(ExerciseNotDone):
        lab07.check_1(stub)


# ---------------------------------------------------------------- exercise 1
def test_check_1_rejects_per_matrix_threshold():
    def per_matrix(w, s):
        if not 0 <= s < 1:
            raise ValueError("bad")
        flat = w.abs().flatten()
        k = int(flat.numel() * s)
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat)[:k]] = False
        return keep.reshape(w.shape)

    assert "within each output row" in _rejects(lab07.check_1, per_matrix)


def test_check_1_rejects_keeping_the_smallest_and_missing_validation():
    _rejects(lab07.check_1, lambda w, s: ~_row_keep(w.abs(), 1 - s) if s else _row_keep(w.abs(), s))
    assert "ValueError" in _rejects(lab07.check_1, lambda w, s: _row_keep(w.abs(), min(max(s, 0), 0.99)))


def test_check_1_rejects_signed_weights():
    _rejects(lab07.check_1, lambda w, s: _row_keep(w, s) if 0 <= s < 1 else (_ for _ in ()).throw(ValueError()))


# ---------------------------------------------------------------- exercise 2
def test_check_2_rejects_magnitude_mean_abs_and_per_matrix():
    assert "plain magnitude" in _rejects(lab07.check_2, lambda w, x, s: _row_keep(w.abs(), s))
    assert "mean |x_j|" in _rejects(lab07.check_2, lambda w, x, s: _row_keep(w.abs() * x.abs().mean(0), s))

    def per_matrix(w, x, s):
        sc = (w.abs() * x.norm(dim=0)).flatten()
        keep = torch.ones_like(sc, dtype=torch.bool)
        keep[torch.argsort(sc)[:int(sc.numel() * s)]] = False
        return keep.reshape(w.shape)

    assert "within each output row" in _rejects(lab07.check_2, per_matrix)


def test_check_2_rejects_squared_norm_and_norm_over_tokens():
    _rejects(lab07.check_2, lambda w, x, s: _row_keep(w.abs() * x.pow(2).sum(0), s))
    _rejects(lab07.check_2, lambda w, x, s: _row_keep(w.abs() * x.norm(dim=0).flip(0), s))


# ---------------------------------------------------------------- exercise 3
def test_check_3_rejects_groups_along_the_output_dimension():
    def column_groups(score, n, m):
        if not 1 <= n < m or score.shape[1] % m:
            raise ValueError("bad")
        o, i = score.shape
        if o % m:
            return SOL["nm_mask"](score, n, m)
        g = score.T.reshape(i, o // m, m)
        idx = g.topk(n, -1).indices
        return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(i, o).T

    assert "output dimension" in _rejects(lab07.check_3, column_groups)


def test_check_3_rejects_smallest_kept_and_missing_validation():
    def smallest(score, n, m):
        return SOL["nm_mask"](-score, n, m)

    _rejects(lab07.check_3, smallest)

    def no_check(score, n, m):
        o, i = score.shape
        g = score[:, :i - i % m].reshape(o, -1, m)
        idx = g.topk(min(n, m), -1).indices
        out = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(o, -1)
        return torch.cat([out, torch.ones(o, i % m, dtype=torch.bool)], 1)

    assert "ValueError" in _rejects(lab07.check_3, no_check)


# ---------------------------------------------------------------- exercise 4
def test_check_4_rejects_forgetting_the_hessian_update():
    assert "Hessian update is missing" in _rejects(lab07.check_4, lambda w, u, p: w * ~p)


def test_check_4_rejects_zeroing_before_the_update_and_wrong_scale():
    def zero_first(w, u, p):
        w = w.clone()
        for j in range(w.shape[1]):
            w[p[:, j], j] = 0
            err = torch.where(p[:, j], w[:, j], torch.zeros_like(w[:, j])) / u[j, j]
            w[:, j:] -= err[:, None] * u[j, j:][None, :]
        return w

    _rejects(lab07.check_4, zero_first)

    def no_division(w, u, p):
        w = w.clone()
        for j in range(w.shape[1]):
            err = torch.where(p[:, j], w[:, j], torch.zeros_like(w[:, j]))
            w[:, j + 1:] -= err[:, None] * u[j, j + 1:][None, :]
            w[p[:, j], j] = 0
        return w

    assert "differs from the reference" in _rejects(lab07.check_4, no_division)


def test_check_4_reference_is_obs_for_a_single_pruned_first_column():
    """One pruned weight in column 0: the update must equal the closed-form optimum (least squares on the rest)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    h = x.T @ x
    w = torch.randn(1, 6, generator=g, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    p = torch.zeros(1, 6, dtype=torch.bool)
    p[0, 0] = True
    got = lab07.sparsegpt_block_reference(w, u, p)
    rest = torch.linalg.solve(h[1:, 1:], h[1:, :] @ w[0])
    assert got[0, 0] == 0
    assert torch.allclose(got[0, 1:], rest, atol=1e-10)


# ---------------------------------------------------------------- exercise 5
def test_check_5_rejects_rows_of_wo_and_forgotten_kv():
    def rows_of_wo(wq, wk, wv, wo, heads, hd):
        H = wq.shape[0] // hd
        if len(set(heads)) >= H or any(h >= H or h < 0 for h in heads):
            raise ValueError("bad")
        r = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in range(H) if h not in heads])
        return wq[r], wk[r], wv[r], wo[r].T

    _rejects(lab07.check_5, rows_of_wo)

    def keep_kv(wq, wk, wv, wo, heads, hd):
        q, _, _, o = SOL["remove_heads"](wq, wk, wv, wo, heads, hd)
        return q, wk, wv, o

    _rejects(lab07.check_5, keep_kv)


def test_check_5_rejects_missing_validation():
    def no_check(wq, wk, wv, wo, heads, hd):
        H = wq.shape[0] // hd
        keep = [h for h in range(H) if h not in heads] or [0]
        r = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in keep])
        return wq[r], wk[r], wv[r], wo[:, r]

    assert "ValueError" in _rejects(lab07.check_5, no_check)
