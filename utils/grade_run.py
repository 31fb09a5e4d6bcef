"""Grade one submitted lab inside a limited child process (started by utils.grade; not a command for people).

The course's checks are imported and snapshotted before any submitted code runs. The submission's cells then run
one by one (its check cells are never run), each under a time limit. Afterwards every patch to the course modules
is detected and undone, and each exercise is graded by calling the course's own check function, taken from the
snapshot, with the check call written in the course's solution notebook. A passing answer is then replayed from a
clean stack and its results compared with those the check saw, and results of classes the notebook defined are
refused: an answer that reads the check's expected value or returns an object equal to anything gets zero.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import io
import json
import math
import re
import sys
import threading
import time
import traceback
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

MAX_REPLAYS = 2  # calls of each answer replayed after its check passed
REPLAY_MAX_SECONDS = 5.0  # calls slower than this inside the check are not replayed
# exercises whose answers measure time: a replay legitimately returns different numbers
NOT_REPLAYED = {(1, 7)}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_line(e: BaseException) -> str:
    return _one_line(f"{type(e).__name__}: {e}") if str(e) else type(e).__name__


class _Recorder:
    """Wraps an answer function: notes results of notebook-defined classes, keeps the first and last call to replay."""

    def __init__(self, fn, record: bool = True):
        self.fn, self.record, self.calls, self.bad = fn, record, [], None
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        saved = _copy_small((args, kwargs)) if self.record else None
        t = time.perf_counter()
        out = self.fn(*args, **kwargs)
        dt = time.perf_counter() - t
        if self.bad is None:
            self.bad = next(iter(_user_types(out)), None)
        if saved is not None and dt <= REPLAY_MAX_SECONDS:
            kept = _copy_small(out)
            if kept is not None:
                self.calls[1:] = []  # keep the first and the latest call
                self.calls.append((saved, kept))
        return out


def _copy_small(obj, limit: int = 20_000_000):
    """A deep copy, or None for something too big (over `limit` tensor elements) or not copyable (e.g. a model)."""
    import torch

    def size(x, depth=0) -> int:
        if torch.is_tensor(x):
            return x.numel()
        if isinstance(x, torch.nn.Module):
            return limit + 1
        if depth < 4 and isinstance(x, (list, tuple, set, frozenset)):
            return sum(size(v, depth + 1) for v in x)
        if depth < 4 and isinstance(x, dict):
            return sum(size(v, depth + 1) for v in x.values())
        return getattr(x, "size", 0) if isinstance(getattr(x, "size", 0), int) else 0

    try:
        return copy.deepcopy(obj) if size(obj) <= limit else None
    except Exception:
        return None


def _user_types(obj, depth: int = 0) -> list[str]:
    """Names of classes defined by the notebook (module __main__) found in a result, containers included."""
    if depth > 4:
        return []
    found = [t.__qualname__ for t in type(obj).__mro__ if t.__module__ == "__main__"]
    if isinstance(obj, (list, tuple, set, frozenset)):
        for x in list(obj)[:200]:
            found += _user_types(x, depth + 1)
    elif isinstance(obj, dict):
        for k, v in list(obj.items())[:200]:
            found += _user_types(k, depth + 1) + _user_types(v, depth + 1)
    return found


def _same(a, b) -> bool:
    """Whether two results of the same call agree (tensors and arrays exactly or to 1e-6, numbers to 1e-9)."""
    import numpy as np
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            a, b = a.detach().double(), b.detach().double()
        elif a.is_complex():
            a, b = a.detach().cdouble(), b.detach().cdouble()
        else:
            return bool(torch.equal(a, b))
        return bool(torch.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        if np.issubdtype(a.dtype, np.floating):
            return bool(np.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True))
        return bool(np.array_equal(a, b))
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    if isinstance(a, float) or isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return False


def _replay(fn, args, kwargs, timeout: float):
    """Call fn(*args, **kwargs) on a fresh thread (its stack holds no expected value); (ok, result or error)."""
    box: dict = {}

    def target():
        try:
            box["out"] = fn(*args, **kwargs)
        except BaseException as e:  # the answer's own failure
            box["err"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return False, f"did not return within {timeout:g} s"
    if "err" in box:
        return False, _error_line(box["err"])
    return True, box["out"]


def _integrity(recorders: list[_Recorder], timeout: float) -> str | None:
    """Why a passed answer is not trusted (None: it is)."""
    for rec in recorders:
        name = getattr(rec.fn, "__name__", "your function")
        if rec.bad:
            return (f"{name} returned an object of a class the notebook defines ({rec.bad}); the checks need plain "
                    "values (numbers, tensors, lists, dicts)")
        for (args, kwargs), out in rec.calls[:MAX_REPLAYS]:
            ok, again = _replay(rec.fn, copy.deepcopy(args), copy.deepcopy(kwargs), timeout)
            if not ok:
                return f"{name}, called again with the same input outside the check, failed: {again}"
            if not _same(again, out):
                return (f"{name}, called again with the same input outside the check, returned something else "
                        "(an answer must depend on its input only)")
    return None


_CHECK_ATTR = re.compile(r"check_(\d+)$")
_LAB_NAME = re.compile(r"lab\d+$")


def _check_number(node: ast.stmt) -> int | None:
    """K if this statement is a call `labNN.check_K(...)`, else None."""
    call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
    func = call.func if call is not None else None
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and _LAB_NAME.match(func.value.id):
        m = _CHECK_ATTR.match(func.attr)
        return int(m.group(1)) if m else None
    return None


def _parse_check(source: str, lab: int, exercise: int):
    """The argument expressions of the course's check call `labNN.check_K(args...)` in a check cell."""
    calls = [n.value for n in ast.parse(source).body if _check_number(n) == exercise]
    if len(calls) != 1:
        raise ValueError(f"lab {lab}, exercise {exercise}: the course's check cell has no single check_{exercise} call")
    return calls[0].args, calls[0].keywords


def _eval(node, ns: dict):
    return eval(compile(ast.Expression(node), "<check argument>", "eval"), ns)


def grade(notebook: Path, solution: Path, lab: int, cell_timeout: float, check_timeout: float, result: Path,
          smoke: bool = False) -> None:
    """Run one submission and write its per-exercise verdicts to `result` (JSON); `smoke`: set SMOKE = True."""
    from . import sandbox

    sandbox.block_sockets()
    import nbformat
    import numpy
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    import utils

    from . import checking, labs

    torch.set_num_threads(1)
    course = __import__(f"utils.checks.lab{lab:02d}", fromlist=["check_1"])
    exercises = labs.exercises(solution)
    checks = {e.number: getattr(course, f"check_{e.number}") for e in exercises}
    not_done, failed = checking.ExerciseNotDone, checking.CheckFailed
    shell = InteractiveShell.instance()
    guard = sandbox.ModuleGuard(
        strict=[m for m in sys.modules if m == "utils" or m.startswith("utils.")],
        loose=[builtins, torch, torch.nn.functional, torch.Tensor, torch.linalg, numpy, numpy.linalg, math])
    t0 = time.perf_counter()
    out: dict = {"exercises": {}, "cell_errors": [], "notes": [], "course_utils": str(Path(utils.__file__).parent)}

    def save():
        out["runtime_s"] = round(time.perf_counter() - t0, 2)
        result.write_text(json.dumps(out), encoding="utf-8")

    nb = nbformat.read(notebook, as_version=4)
    canonical = {ex.number: ex for ex in exercises}
    ns = shell.user_ns
    patched: list[str] = []
    out["phase"] = "cells"
    save()

    def run_code(i: int, source: str) -> None:
        buf = io.StringIO()
        try:
            with redirect_stdout(buf), redirect_stderr(buf):
                sandbox.time_limit(cell_timeout)
                try:
                    res = shell.run_cell(source, store_history=False)
                finally:
                    sandbox.time_limit(0)
            err = res.error_in_exec or res.error_before_exec
        except BaseException as e:  # a timeout that fired outside IPython's own handler
            err = e
        if err is not None:
            kind = "timed out" if isinstance(err, sandbox.CellTimeout) else "raised"
            out["cell_errors"].append({"cell": i, "error": f"cell {i} {kind}: {_error_line(err)}"})

    by_cell_id = {ex.cell_id: ex.number for ex in exercises if ex.cell_id}
    by_grade_id = {f"lab{lab:02d}-ex{ex.number}-check": ex.number for ex in exercises}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        k = by_grade_id.get(cell.metadata.get("nbgrader", {}).get("grade_id")) or by_cell_id.get(cell.get("id"))
        if k and k not in labs.check_numbers(cell.source) and str(k) not in out["exercises"]:
            ex = canonical[k]
            out["exercises"][str(k)] = {"max": ex.points, "points": 0.0, "status": "tampered",
                                        "message": f"Exercise {k}: the check cell was edited (check cells are "
                                                   "read-only; the course's check was not run)"}
        for kind, part in _segments(cell.source):
            if kind == "code":
                run_code(i, part)
                if smoke and "parameters" in cell.metadata.get("tags", []):
                    run_code(i, "SMOKE = True  # injected by the grader")
                continue
            k, ex = part, canonical.get(part)
            if ex is None or str(k) in out["exercises"]:
                continue
            verdict = {"max": ex.points, "points": 0.0}
            now = guard.changes()
            if now:
                guard.restore()
                patched += [c for c in now if c not in patched]
                out["notes"].append(f"before exercise {k}'s check the notebook patched " + ", ".join(now[:6]))
            if cell.source.strip() != ex.check_source:
                verdict.update(status="tampered", message=f"Exercise {k}: the check cell was edited (check cells "
                                                          "are read-only; the course's check was not run)")
            elif patched:
                verdict.update(status="tampered", message=f"Exercise {k}: not graded, the notebook patched "
                                                          f"{', '.join(patched[:3])}")
            else:
                verdict.update(_run_check(lab, k, ex.check_source, checks[k], ns, guard, check_timeout,
                                          not_done, failed, sandbox))
                if verdict.pop("patched", False):
                    patched.append(f"code called by exercise {k}'s check")
                if verdict["status"] == "passed":
                    verdict["points"] = ex.points
            out["exercises"][str(k)] = verdict
            save()
    for ex in exercises:
        if str(ex.number) not in out["exercises"]:
            out["exercises"][str(ex.number)] = {"max": ex.points, "points": 0.0, "status": "tampered",
                                                "message": f"Exercise {ex.number}: the check cell was deleted"}
    guard.restore()
    out["phase"] = "done"
    save()


def _segments(source: str) -> list[tuple[str, object]]:
    """A cell split into ("code", text) runs and ("check", K) for each top-level `labNN.check_K(...)` statement."""
    from . import labs

    if not labs.check_numbers(source):
        return [("code", source)]
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [("code", source)]
    lines, parts, start = source.splitlines(), [], 0
    for node in tree.body:
        k = _check_number(node)
        if k is None:
            continue
        before = "\n".join(lines[start:node.lineno - 1])
        if before.strip():
            parts.append(("code", before))
        parts.append(("check", k))
        start = node.end_lineno
    rest = "\n".join(lines[start:])
    if rest.strip():
        parts.append(("code", rest))
    return parts


def _run_check(lab, k, source, check, ns, guard, timeout, not_done, failed, sandbox) -> dict:
    """Call the course's check for exercise k on the notebook's objects; a dict with status and message."""
    buf = io.StringIO()
    recorders: list[_Recorder] = []
    try:
        with redirect_stdout(buf), redirect_stderr(buf):
            sandbox.time_limit(timeout)
            try:
                arg_nodes, kw_nodes = _parse_check(source, lab, k)

                def wrap(v):
                    if isinstance(v, types.FunctionType):
                        recorders.append(_Recorder(v, record=(lab, k) not in NOT_REPLAYED))
                        return recorders[-1]
                    return v

                args = [wrap(_eval(a, ns)) for a in arg_nodes]
                kwargs = {kw.arg: wrap(_eval(kw.value, ns)) for kw in kw_nodes}
                check(*args, **kwargs)
                status, message = "passed", buf.getvalue().strip().splitlines()[-1:] or [f"Exercise {k} passed"]
                message = message[0]
            finally:
                sandbox.time_limit(0)
    except not_done as e:
        status, message = "not done", str(e)
    except failed as e:
        status, message = "failed", str(e)
    except sandbox.CellTimeout as e:
        status, message = "failed", f"Exercise {k}: the check {e} (time limit of one check)"
    except NameError as e:
        status, message = "failed", f"Exercise {k}: {e} (a cell it needs did not run or failed)"
    except BaseException as e:
        status, message = "failed", f"Exercise {k}: {_error_line(e)}"
        if not isinstance(e, Exception):
            traceback.clear_frames(e.__traceback__)
    patched = guard.changes()
    if patched:
        guard.restore()
        return {"status": "tampered", "patched": True,
                "message": f"Exercise {k}: the answer patched {', '.join(patched[:3])} while being checked"}
    if status == "passed":
        try:
            why = _integrity(recorders, timeout)
        except Exception as e:  # the grader could not compare two results: say so, keep the check's verdict
            why, message = None, f"{message} (replay not compared: {_error_line(e)})"
        if guard.changes():
            guard.restore()
            return {"status": "tampered", "patched": True,
                    "message": f"Exercise {k}: the answer patched course code when called again"}
        if why:
            return {"status": "tampered", "message": _one_line(f"Exercise {k}: {why}")}
    return {"status": status, "message": _one_line(message)}


def main(argv: list[str]) -> int:
    """Child entry point: notebook solution lab cell_timeout check_timeout result smoke."""
    notebook, solution, lab, cell_t, check_t, result, smoke = argv
    grade(Path(notebook), Path(solution), int(lab), float(cell_t), float(check_t), Path(result), smoke == "1")
    return 0
