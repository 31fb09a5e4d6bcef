"""The course as an nbgrader course: a ClearSolutions that writes the course's stubs, and the source/ layout.

    python -m utils.nbgrader_course prepare     # build/nbgrader/source/<lab>/<lab>.ipynb from solutions/
    nbgrader generate_assignment lab_05_number_formats      # then: collect, autograde, generate_feedback

nbgrader reads `nbgrader_config.py` at the course root, which points its course directory at build/nbgrader and
swaps nbgrader's ClearSolutions for `CourseClearSolutions` below, so `nbgrader generate_assignment` writes the
same stubs as `make labs` (utils.labs.stub_source, with the exercise number in each stub).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from nbgrader.preprocessors import ClearSolutions

from . import labs
from .results import build_dir


class CourseClearSolutions(ClearSolutions):
    """nbgrader's ClearSolutions, writing the course's own stub (exercise number included) like `make labs`."""

    def preprocess(self, nb, resources):
        """Drop `solution-only` cells (worked answers) as `make labs` does, then clear solutions cell by cell."""
        nb.cells = [c for c in nb.cells if "solution-only" not in c.metadata.get("tags", [])]
        self._exercise_of = {id(cell): section for section, cell in labs._sections(nb)}
        self._name = resources.get("metadata", {}).get("name", "notebook")
        return super().preprocess(nb, resources)

    def _replace_solution_region(self, cell, language: str) -> bool:
        if cell.cell_type != "code" or labs.BEGIN not in cell.source:
            return super()._replace_solution_region(cell, language)
        exercise = self._exercise_of.get(id(cell)) or None
        cell.source = labs.stub_source(cell.source, exercise, f"{self._name}, cell {cell.get('id', '?')}")
        return True


def nbgrader_root() -> Path:
    """The nbgrader course directory (gradebook database, source/, release/, submitted/, autograded/, feedback/)."""
    return build_dir() / "nbgrader"


def prepare(root: Path | None = None) -> list[Path]:
    """Copy each solution notebook to <root>/source/<lab>/<lab>.ipynb (one nbgrader assignment per lab)."""
    root = root or nbgrader_root()
    written = []
    for sol in labs.solutions():
        target = root / "source" / sol.stem / sol.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sol, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m utils.nbgrader_course", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["prepare"], help="prepare: lay out source/ for nbgrader")
    p.add_argument("--root", type=Path, default=None, help="nbgrader course directory (default build/nbgrader)")
    args = p.parse_args(argv)
    for path in prepare(args.root):
        print(f"  source      {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
