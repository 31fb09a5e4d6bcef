"""Generate labs/ from solutions/: solution regions become stubs, outputs are cleared.

    python -m utils.labs            # write labs/ (never overwrites a lab you edited)
    python -m utils.labs --check    # exit 1 if labs/ is out of date
    python -m utils.labs --force    # also replace edited labs (your copy is moved to build/lab_backups/)
    python -m utils.labs --nbgrader-metadata   # mark solutions/ as nbgrader source notebooks, then write labs/

In a solution notebook, the code between `### BEGIN SOLUTION` and `### END SOLUTION` is the answer; the
exercise number is taken from the last markdown heading "Exercise N" above it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .results import REPO_ROOT, build_dir

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_EXERCISE = re.compile(r"Exercise\s+(\d+)", re.IGNORECASE)
CHECK_CALL = re.compile(r"\blab(\d+)\.check_(\d+)\s*\(")
_LAB_NAME = re.compile(r"lab_(\d+)_")
NBGRADER_SCHEMA = 3
LAB_BANNER = (
    "> **This is the lab.** Each exercise has a stub that raises `NotImplementedError`: replace it with your "
    "code, run the cell, then run the check cell below it. A check prints ✅ or says what is wrong. "
    "Worked answers are in `solutions/{name}`. This file was generated from that solution notebook; "
    "`make labs` never overwrites a lab you have edited."
)


class LabSourceError(ValueError):
    """A solution notebook's markers are malformed."""


def stub_source(source: str, exercise: int | None, where: str) -> str:
    """Replace every BEGIN/END SOLUTION region of one cell's source with a NotImplementedError stub."""
    out, inside, indent = [], False, ""
    for n, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise LabSourceError(f"{where}, line {n}: nested {BEGIN}")
            if exercise is None:
                raise LabSourceError(f"{where}: a solution region before any 'Exercise N' heading")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("Exercise {exercise}: replace this line with your code")')
        elif stripped == END:
            if not inside:
                raise LabSourceError(f"{where}, line {n}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise LabSourceError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def _source_hash(nb) -> str:
    cells = [[c.cell_type, c.source] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def make_lab(solution: Path):
    """The lab notebook generated from one solution notebook (returned, not written)."""
    nb = nbformat.read(solution, as_version=4)
    lab = copy.deepcopy(nb)
    exercise, n_stubs, cells = None, 0, []
    for i, cell in enumerate(lab.cells):
        if "solution-only" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.lstrip().startswith("#"):
                    m = _EXERCISE.search(line)
                    if m:
                        exercise = int(m.group(1))
        elif cell.cell_type == "code":
            if BEGIN in cell.source:
                n_stubs += cell.source.count(BEGIN)
            cell.source = stub_source(cell.source, exercise, f"{solution.name}, cell {i}")
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
        cell.metadata.pop("papermill", None)
        cells.append(cell)
    if n_stubs == 0:
        raise LabSourceError(f"{solution.name} has no {BEGIN} regions")
    banner = nbformat.v4.new_markdown_cell(LAB_BANNER.format(name=solution.name), id="lab-banner")
    cells.insert(1 if cells and cells[0].cell_type == "markdown" else 0, banner)
    lab.cells = cells
    lab.metadata.pop("papermill", None)
    lab.metadata["course_lab"] = {"generated_from": f"solutions/{solution.name}"}
    lab.metadata["course_lab"]["source_sha256"] = _source_hash(lab)
    return lab


def lab_path(solution: Path) -> Path:
    """labs/<same name> for solutions/<name>."""
    return REPO_ROOT / "labs" / solution.name


def solutions() -> list[Path]:
    """Every solved lab."""
    return sorted((REPO_ROOT / "solutions").glob("lab_*.ipynb"))


def _dumps(nb) -> str:
    """The notebook's JSON text, ending in a newline."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def out_of_date() -> list[str]:
    """Labs whose committed file differs from what the generator writes."""
    stale = []
    for sol in solutions():
        target = lab_path(sol)
        if not target.is_file() or target.read_text(encoding="utf-8") != _dumps(make_lab(sol)):
            stale.append(target.name)
    return stale


def write_labs(force: bool = False) -> int:
    """Write every lab; keep learner-edited labs unless `force` (then back them up). Returns the number skipped."""
    skipped = 0
    for sol in solutions():
        target, text = lab_path(sol), _dumps(make_lab(sol))
        if target.is_file():
            current = target.read_text(encoding="utf-8")
            if current == text:
                print(f"  up to date  {target.relative_to(REPO_ROOT)}")
                continue
            old = nbformat.reads(current, as_version=4)
            edited = old.metadata.get("course_lab", {}).get("source_sha256") != _source_hash(old)
            if edited:
                if not force:
                    print(f"  KEPT        {target.relative_to(REPO_ROOT)}: you have edited it; not overwritten "
                          "(rerun with --force to back it up to build/lab_backups/ and regenerate)")
                    skipped += 1
                    continue
                backup = build_dir() / "lab_backups" / f"{target.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
                backup.parent.mkdir(parents=True, exist_ok=True)
                backup.write_text(current, encoding="utf-8")
                print(f"  backed up   your {target.name} -> {backup}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"  wrote       {target.relative_to(REPO_ROOT)}")
    return skipped


# --------------------------------------------------------------------------- exercises and nbgrader metadata
@dataclass(frozen=True)
class Exercise:
    """One exercise of a solution notebook: its number, its check cell's source and its points."""

    number: int
    check_source: str
    points: float = 1.0
    cell_id: str = ""


def lab_number(name: str) -> int | None:
    """The lab number in a file name like 'lab_05_number_formats.ipynb' (None if there is none)."""
    m = _LAB_NAME.search(Path(name).name)
    return int(m.group(1)) if m else None


def _heading_exercise(source: str) -> int | None:
    found = None
    for line in source.splitlines():
        if line.lstrip().startswith("#"):
            m = _EXERCISE.search(line)
            if m:
                found = int(m.group(1))
    return found


def check_numbers(source: str) -> list[int]:
    """The exercise numbers whose check `labNN.check_K(...)` a cell's source calls."""
    return [int(m.group(2)) for m in CHECK_CALL.finditer(source)]


def _sections(nb) -> list[tuple[int, object]]:
    """(exercise number in force, cell) for every cell; 0 before the first 'Exercise N' heading."""
    out, exercise = [], 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            exercise = _heading_exercise(cell.source) or exercise
        out.append((exercise, cell))
    return out


def exercises(solution: Path) -> list[Exercise]:
    """The exercises of a solution notebook, in order, each with the check cell that grades it."""
    nb = nbformat.read(solution, as_version=4)
    found: dict[int, Exercise] = {}
    for i, (section, cell) in enumerate(_sections(nb)):
        if cell.cell_type != "code":
            continue
        for k in check_numbers(cell.source):
            if k != section:
                raise LabSourceError(f"{solution.name}, cell {i}: check_{k} sits under the heading of exercise "
                                     f"{section}")
            if k in found:
                raise LabSourceError(f"{solution.name}, cell {i}: a second check cell for exercise {k}")
            points = cell.metadata.get("nbgrader", {}).get("points", 1)
            found[k] = Exercise(k, cell.source.strip(), float(points), cell.get("id", ""))
    if not found:
        raise LabSourceError(f"{solution.name} has no check cells (labNN.check_K(...))")
    return [found[k] for k in sorted(found)]


def nbgrader_metadata(nb, lab: int) -> None:
    """Set nbgrader cell metadata in place: solution cells, autograded check cells (points), read-only text.

    grade_ids come from the lab and exercise numbers (e.g. lab05-ex3-check; an exercise's second solution cell is
    lab05-ex3-solution-2), never from random ids, so running
    this twice changes nothing and an instructor's points on a check cell are kept.
    """
    text_counter: dict[int, int] = {}
    solution_counter: dict[int, int] = {}
    for section, cell in _sections(nb):
        old = cell.metadata.get("nbgrader", {})
        prefix = f"lab{lab:02d}-ex{section}"
        if cell.cell_type == "code" and BEGIN in cell.source:
            k = solution_counter[section] = solution_counter.get(section, 0) + 1  # an exercise may have several
            meta = {"grade": False, "grade_id": f"{prefix}-solution" + (f"-{k}" if k > 1 else ""), "locked": False,
                    "solution": True}
        elif cell.cell_type == "code" and check_numbers(cell.source):
            meta = {"grade": True, "grade_id": f"{prefix}-check", "locked": True, "points": old.get("points", 1),
                    "solution": False}
        elif cell.cell_type == "markdown":
            k = text_counter[section] = text_counter.get(section, 0) + 1
            meta = {"grade": False, "grade_id": f"{prefix}-text-{k}", "locked": True, "solution": False}
        else:
            cell.metadata.pop("nbgrader", None)
            continue
        meta.update(schema_version=NBGRADER_SCHEMA, task=False)
        cell.metadata["nbgrader"] = dict(sorted(meta.items()))


def apply_nbgrader_metadata() -> list[str]:
    """Write nbgrader metadata into every solution notebook; returns the names of those that changed."""
    changed = []
    for sol in solutions():
        nb = nbformat.read(sol, as_version=4)
        lab = lab_number(sol.name)
        if lab is None:
            raise LabSourceError(f"{sol.name}: a solution's name must look like lab_NN_topic.ipynb")
        exercises(sol)  # refuses malformed check cells before anything is written
        nbgrader_metadata(nb, lab)
        text = _dumps(nb)
        if text != sol.read_text(encoding="utf-8"):
            sol.write_text(text, encoding="utf-8")
            changed.append(sol.name)
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m utils.labs", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if labs/ is out of date")
    p.add_argument("--force", action="store_true", help="regenerate edited labs too (backed up first)")
    p.add_argument("--nbgrader-metadata", action="store_true",
                   help="mark solutions/ as nbgrader source notebooks (idempotent), then write labs/")
    args = p.parse_args(argv)
    if args.nbgrader_metadata:
        for name in apply_nbgrader_metadata():
            print(f"  nbgrader    solutions/{name}")
    if args.check:
        stale = out_of_date()
        for s in stale:
            print(f"out of date: labs/{s} (run `make labs`)")
        return 1 if stale else 0
    return 1 if write_labs(force=args.force) else 0


if __name__ == "__main__":
    sys.exit(main())
