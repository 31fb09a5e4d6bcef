"""The course is an nbgrader course: generate_assignment writes labs/ exactly, autograde and feedback work offline.

Runs nbgrader's own API in-process on a temporary course directory, configured by the course's nbgrader_config.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from lab10_wrong_answers import FLOPS_WITHOUT_HEAD, TRAIN_TIES_TO_LARGEST  # tests/ is on sys.path

from utils import labs
from utils.results import REPO_ROOT

nbgrader = pytest.importorskip("nbgrader")

from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.apps import NbGraderAPI  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

SOLUTION = REPO_ROOT / "solutions" / "lab_10_tokenization.ipynb"
ASSIGNMENT = SOLUTION.stem
WRONG = {  # typical mistakes (tests/test_lab10_checks.py): ties to the largest pair; no output head in the FLOPs
    3: TRAIN_TIES_TO_LARGEST,
    7: FLOPS_WITHOUT_HEAD,
}


def _solution_cells(nb) -> dict[int, object]:
    return {k: c for k, c in labs._sections(nb) if c.cell_type == "code" and labs.BEGIN in c.source}


def _with_metadata(solution: Path):
    nb = nbformat.read(solution, as_version=4)
    labs.nbgrader_metadata(nb, labs.lab_number(solution.name))
    return nb


def _submit(root: Path, student: str, answers: dict[int, str]) -> None:
    nb = _with_metadata(SOLUTION)
    solution = _solution_cells(nb)
    for k, source in answers.items():
        solution[k].source = source
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace("SMOKE = False", "SMOKE = True")
    path = root / "submitted" / student / ASSIGNMENT / SOLUTION.name
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A temporary nbgrader course: every lab released, lab 10 autograded for two students, feedback written."""
    root = tmp_path_factory.mktemp("nbgrader")
    for sol in labs.solutions():
        target = root / "source" / sol.stem / sol.name
        target.parent.mkdir(parents=True)
        nbformat.write(_with_metadata(sol), target)
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(REPO_ROOT)).load_config()
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    cfg.Execute.timeout = 300
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"  # nbgrader runs `alembic` from there
    try:
        api = NbGraderAPI(config=cfg)
        released = {sol.stem: api.generate_assignment(sol.stem) for sol in labs.solutions()}
        _submit(root, "ada", {})
        _submit(root, "ben", WRONG)
        graded = {s: api.autograde(ASSIGNMENT, s, force=True, create=True) for s in ("ada", "ben")}
        feedback = {s: api.generate_feedback(ASSIGNMENT, s, force=True) for s in ("ada", "ben")}
    finally:
        os.environ["PATH"] = path
    return root, cfg, released, graded, feedback


@pytest.mark.parametrize("solution", labs.solutions(), ids=lambda p: p.stem)
def test_generate_assignment_writes_the_same_stubs_and_checks_as_make_labs(course, solution):
    root, _, released, _, _ = course
    assert released[solution.stem]["success"], released[solution.stem].get("error")
    nb = nbformat.read(root / "release" / solution.stem / solution.name, as_version=4)
    lab = labs.make_lab(solution)
    ours = [(c.cell_type, c.source) for c in lab.cells if c.get("id") != "lab-banner"]
    assert [(c.cell_type, c.source) for c in nb.cells] == ours
    committed = nbformat.read(REPO_ROOT / "labs" / solution.name, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells if c.get("id") != "lab-banner"] == ours


def test_autograde_gives_full_marks_to_the_solution_and_zero_to_wrong_answers(course):
    root, cfg, _, graded, _ = course
    assert graded["ada"]["success"] and graded["ben"]["success"], graded
    with Gradebook(cfg.CourseDirectory.db_url, "efficient-ai-course") as gb:
        ada = gb.find_submission_notebook(SOLUTION.stem, ASSIGNMENT, "ada")
        ben = gb.find_submission_notebook(SOLUTION.stem, ASSIGNMENT, "ben")
        assert ada.score == ada.max_score == 7
        scores = {g.name: g.score for g in ben.grades}
    assert scores == {f"lab10-ex{k}-check": (0 if k in WRONG else 1) for k in range(1, 8)}, scores


def test_generate_feedback_writes_html_per_student(course):
    root, _, _, _, feedback = course
    for student in ("ada", "ben"):
        assert feedback[student]["success"], feedback[student]
        page = (root / "feedback" / student / ASSIGNMENT / f"{SOLUTION.stem}.html").read_text(encoding="utf-8")
        assert "lab10-ex3-check" in page or "Exercise 3" in page
    assert "Score: 7.0 / 7.0" in (root / "feedback" / "ada" / ASSIGNMENT / f"{SOLUTION.stem}.html").read_text()


def test_nbgrader_metadata_is_deterministic_and_complete(tmp_path):
    for sol in labs.solutions():
        nb = _with_metadata(sol)
        again = nbformat.from_dict(nbformat.from_dict(nb))
        labs.nbgrader_metadata(again, labs.lab_number(sol.name))
        assert labs._dumps(again) == labs._dumps(nb)
        meta = [c.metadata.get("nbgrader") for c in nb.cells]
        ids = [m["grade_id"] for m in meta if m]
        assert len(ids) == len(set(ids))
        checks = [m for m in meta if m and m["grade"]]
        assert [m["grade_id"] for m in checks] == [f"lab{labs.lab_number(sol.name):02d}-ex{e.number}-check"
                                                   for e in labs.exercises(sol)]
        assert all(m["locked"] and m["points"] == 1 for m in checks)
        solutions = [c for c, m in zip(nb.cells, meta) if m and m["solution"]]
        assert solutions and all(labs.BEGIN in c.source for c in solutions)


def test_solutions_carry_the_nbgrader_metadata(tmp_path):
    stale = [sol.name for sol in labs.solutions() if labs._dumps(_with_metadata(sol)) != sol.read_text()]
    assert stale == [], "run `python -m utils.labs --nbgrader-metadata` and commit solutions/ and labs/"


def test_prepare_lays_out_one_assignment_per_lab(tmp_path):
    from utils import nbgrader_course

    written = nbgrader_course.prepare(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(
        f"source/{s.stem}/{s.name}" for s in labs.solutions())
    assert all(p.read_bytes() == (REPO_ROOT / "solutions" / p.name).read_bytes() for p in written)


def test_a_check_under_the_wrong_heading_is_refused(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(cells=[new_markdown_cell("## Exercise 1"), new_code_cell(f"{labs.BEGIN}\nx = 1\n{labs.END}"),
                             new_code_cell("lab99.check_2(x)")])
    path = tmp_path / "lab_99_demo.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(labs.LabSourceError, match="check_2 sits under the heading of exercise 1"):
        labs.exercises(path)
    assert labs.lab_number("lab_07_x.ipynb") == 7 and labs.lab_number("notes.ipynb") is None
