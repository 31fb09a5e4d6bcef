"""Check helpers for the labs: a short verdict for the learner, not a traceback from inside the checker."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class CheckFailed(AssertionError):
    """The learner's answer is wrong; the message says what and by how much."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31m❌ {self}\x1b[0m"]


class ExerciseNotDone(NotImplementedError):
    """The exercise still holds its stub."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[33m✏️  {self}\x1b[0m"]


def run_check(exercise: int, tests: Callable[[], str]) -> None:
    """Run the hidden tests of one exercise; print a pass line or raise a one-line verdict."""
    try:
        msg = tests()
    except CheckFailed as e:
        raise CheckFailed(f"Exercise {exercise}: {e}") from None
    except NotImplementedError as e:
        raise ExerciseNotDone(f"Exercise {exercise} is not done yet ({e}). Write your code where the stub is, "
                              "run that cell, then run this check again.") from None
    except Exception as e:  # the learner's code crashed inside the tests
        raise CheckFailed(f"Exercise {exercise}: your code raised {type(e).__name__}: {e}") from None
    print(f"✅ Exercise {exercise} passed" + (f": {msg}" if msg else "."))


def expect_value_error(what: str, call) -> None:
    """`call()` must refuse bad input with a ValueError (a clear message); anything else is a CheckFailed."""
    try:
        call()
    except ValueError:
        return
    except CheckFailed:
        raise
    except Exception as e:
        raise CheckFailed(f"{what}: expected a ValueError with a clear message, got {type(e).__name__}: {e}") from None
    raise CheckFailed(f"{what}: expected a ValueError (bad input must be refused), but it returned normally")


def _num(x) -> float:
    if torch.is_tensor(x):
        if x.numel() != 1:
            raise CheckFailed(f"expected a single number, got a tensor of shape {tuple(x.shape)}")
        return float(x.item())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if hasattr(x, "item"):
            return float(x.item())
        raise CheckFailed(f"expected a number, got {type(x).__name__}: {x!r}")
    return float(x)


def expect_close(what: str, got, want: float, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Fail with 'what: expected W, got G (off by P%)' unless |got - want| <= atol + rtol*|want|."""
    g, w = _num(got), float(want)
    if not math.isfinite(g) or abs(g - w) > atol + rtol * abs(w):
        off = f" (off by {100 * (g - w) / w:+.3g}%)" if w and math.isfinite(g) else ""
        ratio = f"; ratio got/expected = {g / w:.4g}" if w and math.isfinite(g) else ""
        raise CheckFailed(f"{what}: expected {w:.6g}, got {g:.6g}{off}{ratio}")


def expect_keys(what: str, got: dict, keys) -> None:
    """Fail unless `got` is a dict with exactly these keys."""
    if not isinstance(got, dict):
        raise CheckFailed(f"{what}: expected a dict, got {type(got).__name__}")
    missing, extra = set(keys) - set(got), set(got) - set(keys)
    if missing or extra:
        raise CheckFailed(
            f"{what}: keys should be {sorted(keys)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
        )


def expect_tensor(what: str, got, shape=None, dtype=None) -> None:
    """Fail unless `got` is a tensor of this shape and dtype."""
    if not torch.is_tensor(got):
        raise CheckFailed(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
    if shape is not None and tuple(got.shape) != tuple(shape):
        raise CheckFailed(f"{what}: expected shape {tuple(shape)}, got {tuple(got.shape)}")
    if dtype is not None and got.dtype != dtype:
        raise CheckFailed(f"{what}: expected dtype {dtype}, got {got.dtype}")


def expect_allclose(what: str, got, want: torch.Tensor, atol: float = 1e-5) -> None:
    """Fail unless `got` is a tensor of `want`'s shape within `atol` everywhere (NaN fails too)."""
    expect_tensor(what, got, shape=want.shape)
    err = (got.float() - want.float()).abs().max().item()
    if not err <= atol:  # also catches NaN
        raise CheckFailed(f"{what}: max |difference| from the reference is {err:.3g} (allowed {atol:g})")


def seeded_randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal tensor for hidden tests."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
