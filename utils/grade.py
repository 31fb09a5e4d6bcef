"""Grade a folder of submitted labs with the course's checks, safely and offline; write a gradebook.

    python -m utils.grade SUBMISSIONS/ [--lab 5] [--timeout 300] [--memory-gb 6]
    make grade SUBMISSIONS=dir/ [LAB=5]

A submission is a lab notebook: either SUBMISSIONS/<student>.ipynb or SUBMISSIONS/<student>/.../<lab>.ipynb (the
student is the first folder, as in nbgrader's submitted/ layout). Each one runs in its own child process with a
time limit, one thread, a memory cap (RLIMIT_AS) and no network; the verdicts come from the course's checks
(utils/checks), never from the submission's own check cells. Writes build/gradebook.csv and build/gradebook.html.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import labs, sandbox
from .results import REPO_ROOT, build_dir

DEFAULT_TIMEOUT = 300.0  # seconds for one notebook (a solved lab takes under 60 s on 2 cores)
DEFAULT_CELL_TIMEOUT = 120.0  # seconds for one cell or one check
DEFAULT_MEMORY_GB = 6.0  # address-space cap of the child (the course's labs peak under 4 GB)


@dataclass
class Submission:
    """One notebook found in the submissions folder."""

    student: str
    path: Path
    lab: int | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One gradebook line: a student's lab, its exercise points and what went wrong."""

    student: str
    notebook: str
    lab: int | None
    points: dict[int, float] = field(default_factory=dict)
    max_points: dict[int, float] = field(default_factory=dict)
    messages: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    status: str = "graded"
    runtime_s: float = 0.0

    @property
    def total(self) -> float:
        """Points earned."""
        return sum(self.points.values())

    @property
    def maximum(self) -> float:
        """Points available."""
        return sum(self.max_points.values())


def _lab_of(nb: dict, path: Path) -> int | None:
    generated = nb.get("metadata", {}).get("course_lab", {}).get("generated_from", "")
    return labs.lab_number(generated) if generated else labs.lab_number(path.name)


def solution_for(lab: int) -> Path | None:
    """The course's solution notebook of lab `lab` (None if the course has no such lab)."""
    found = [p for p in labs.solutions() if labs.lab_number(p.name) == lab]
    return found[0] if found else None


def discover(folder: Path, lab: int | None = None) -> list[Submission]:
    """Every notebook under `folder`, with its student, its lab and any problem found before running it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder {folder} does not exist or is not a folder")
    subs = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):  # .ipynb_checkpoints and hidden folders
            continue
        student = rel.parts[0] if len(rel.parts) > 1 else path.stem
        sub = Submission(student, path)
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
                raise ValueError("it has no list of cells")
        except (UnicodeDecodeError, ValueError) as e:
            sub.problems.append(f"not a valid notebook (invalid JSON: {str(e)[:120]})")
            subs.append(sub)
            continue
        sub.lab = _lab_of(nb, path)
        if sub.lab is None:
            sub.problems.append("cannot tell which lab this is (no course_lab metadata and no lab_NN_ in the name)")
        elif lab is not None and sub.lab != lab:
            sub.problems.append(f"this is lab {sub.lab:02d}, but lab {lab:02d} is being graded")
        elif solution_for(sub.lab) is None:
            known = ", ".join(f"{labs.lab_number(p.name):02d}" for p in labs.solutions())
            sub.problems.append(f"the course has no lab {sub.lab:02d} (labs: {known})")
        subs.append(sub)
    counts = Counter((s.student, s.lab) for s in subs)
    for s in subs:
        if counts[(s.student, s.lab)] > 1:
            others = [str(o.path.relative_to(folder)) for o in subs if (o.student, o.lab) == (s.student, s.lab)]
            s.problems.append(f"duplicate student name {s.student!r}: {len(others)} notebooks ({', '.join(others)}); "
                              "each is graded, keep one")
    return subs


def _blocking(problems: list[str]) -> bool:
    return any(not p.startswith("duplicate") for p in problems)


def grade_one(sub: Submission, timeout: float = DEFAULT_TIMEOUT, cell_timeout: float = DEFAULT_CELL_TIMEOUT,
              memory_gb: float = DEFAULT_MEMORY_GB, netns: list[str] | None = None, smoke: bool = False) -> Row:
    """Grade one submission in a limited child process; never raises for a bad submission."""
    row = Row(sub.student, sub.path.name, sub.lab, notes=list(sub.problems))
    if _blocking(sub.problems):
        row.status = "error"
        return row
    solution = solution_for(sub.lab)
    for ex in labs.exercises(solution):
        row.points[ex.number], row.max_points[ex.number] = 0.0, ex.points
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER_TOKEN"))}
    env.update(sandbox.CHILD_ENV, PYTHONPATH=str(REPO_ROOT))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grade-") as work:
        result = Path(work) / "result.json"
        code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); "
                "from utils.grade_run import main; main(sys.argv[1:])")
        cmd = [*(netns or []), sys.executable, "-I", "-c", code, str(sub.path.resolve()), str(solution), str(sub.lab),
               str(cell_timeout), str(cell_timeout), str(result), "1" if smoke else "0"]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=sandbox.child_preexec(int(memory_gb * 2**30)))
        try:
            log, _ = proc.communicate(timeout=timeout)
            ended = f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            ended = None
        row.runtime_s = round(time.perf_counter() - t0, 1)
        data = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    graded = data.get("exercises", {})
    for k in row.points:
        v = graded.get(str(k))
        if v is None:
            row.messages[k] = "not graded (the run stopped before this check)"
            continue
        row.points[k] = float(v["points"]) if v["status"] == "passed" else 0.0
        if v["status"] != "passed":
            row.messages[k] = v["message"]
    row.notes += data.get("notes", [])
    row.notes += [e["error"] for e in data.get("cell_errors", [])][:5]
    if ended is None:
        row.status = "timeout"
        row.notes.append(f"stopped at the notebook's time limit of {timeout:g} s (phase: {data.get('phase', 'start')})")
    elif data.get("phase") != "done":
        row.status = "crashed"
        tail = " ".join((log or b"").decode(errors="replace").split())[-300:]
        row.notes.append(f"the grading process ended early ({ended}, phase: {data.get('phase', 'start')}): {tail}")
    return row


def grade_all(folder: Path, lab: int | None = None, progress: bool = True, **limits) -> list[Row]:
    """Grade every submission under `folder`; one bad submission never stops the others."""
    from tqdm.auto import tqdm

    subs = discover(folder, lab)
    if not subs:
        return [Row("", "", lab, status="error", notes=[f"no notebooks (*.ipynb) found in {folder}"])]
    netns = sandbox.network_namespace_prefix()
    rows = []
    for sub in tqdm(subs, desc="grading", unit="notebook", disable=not progress):
        try:
            row = grade_one(sub, netns=netns, **limits)
        except Exception as e:  # the grader's own failure on this submission: record it, go on
            row = Row(sub.student, sub.path.name, sub.lab, status="error", notes=[f"grader error: {e}"])
        if not netns:
            row.notes.append("no network namespace here (unshare unavailable): sockets blocked in-process only")
        rows.append(row)
    return rows


def write_gradebook(rows: list[Row], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write gradebook.csv and gradebook.html; returns their paths."""
    out_dir = Path(out_dir) if out_dir else build_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = sorted({k for r in rows for k in r.max_points})
    csv_path, html_path = out_dir / "gradebook.csv", out_dir / "gradebook.html"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "lab", "notebook", *[f"ex{k}" for k in numbers], "total", "max", "runtime_s",
                    "status", "messages"])
        for r in rows:
            msgs = [*r.notes, *[r.messages[k] for k in sorted(r.messages)]]
            w.writerow([r.student, "" if r.lab is None else f"{r.lab:02d}", r.notebook,
                        *[_fmt(r.points.get(k)) for k in numbers], _fmt(r.total), _fmt(r.maximum), r.runtime_s,
                        r.status, " | ".join(msgs)])
    html_path.write_text(_html(rows, numbers), encoding="utf-8")
    return csv_path, html_path


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _html(rows: list[Row], numbers: list[int]) -> str:
    e = html.escape
    head = "".join(f"<th>ex{k}</th>" for k in numbers)
    body = []
    for r in rows:
        cells = []
        for k in numbers:
            if k not in r.max_points:
                cells.append("<td></td>")
                continue
            ok = r.points.get(k, 0) >= r.max_points[k] > 0
            cells.append(f'<td class="{"ok" if ok else "bad"}" title="{e(r.messages.get(k, "passed"))}">'
                         f'{_fmt(r.points.get(k))}</td>')
        body.append(f"<tr><td>{e(r.student)}</td><td>{e(r.notebook)}</td>{''.join(cells)}"
                    f"<td><b>{_fmt(r.total)}</b> / {_fmt(r.maximum)}</td><td>{r.runtime_s:g} s</td>"
                    f"<td>{e(r.status)}</td></tr>")
    failures = []
    for r in rows:
        items = [*(e(n) for n in r.notes), *(f"ex{k}: {e(m)}" for k, m in sorted(r.messages.items()))]
        if items:
            failures.append(f"<h3>{e(r.student or '(no student)')} — {e(r.notebook)}</h3><ul>"
                            + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    n = sum(r.status == "graded" for r in rows)
    mean = sum(r.total for r in rows if r.status == "graded") / n if n else 0.0
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Gradebook</title><style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:center}} .ok{{background:#d4f4d4}} .bad{{background:#f8d4d4}}</style></head><body>
<h1>Gradebook</h1><p>{len(rows)} notebooks, {n} graded; mean total {mean:.2f}. Hover over a cell for the check's
verdict.</p><table><tr><th>student</th><th>notebook</th>{head}<th>total</th><th>runtime</th><th>status</th></tr>
{''.join(body)}</table><h2>Failures and notes</h2>{''.join(failures) or '<p>None.</p>'}</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit code 1 if any notebook could not be graded."""
    p = argparse.ArgumentParser(prog="python -m utils.grade", description=__doc__.splitlines()[0])
    p.add_argument("submissions", type=Path, help="folder of submitted lab notebooks")
    p.add_argument("--lab", type=int, default=None, help="the lab number being graded (others are refused)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds for one notebook")
    p.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, help="seconds for one cell or check")
    p.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB, help="memory cap of one notebook")
    p.add_argument("--out", type=Path, default=None, help="folder for gradebook.csv/html (default build/)")
    p.add_argument("--smoke", action="store_true", help="run the labs with SMOKE = True (tiny sizes; for tests)")
    args = p.parse_args(argv)
    try:
        rows = grade_all(args.submissions, args.lab, timeout=args.timeout, cell_timeout=args.cell_timeout,
                         memory_gb=args.memory_gb, smoke=args.smoke)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    csv_path, html_path = write_gradebook(rows, args.out)
    for r in rows:
        print(f"  {r.student or '-':20s} {r.notebook:40s} {_fmt(r.total):>4s}/{_fmt(r.maximum):<4s} "
              f"{r.runtime_s:6.1f} s  {r.status}")
    print(f"wrote {csv_path} and {html_path}")
    return 0 if all(r.status == "graded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
