"""labs/ is generated from solutions/ and each lab, run top to bottom, stops first at an exercise stub."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from utils import labs
from utils.results import REPO_ROOT

LABS = sorted((REPO_ROOT / "labs").glob("lab_*.ipynb"))


def test_every_solution_has_a_lab_and_labs_are_in_sync():
    sols = {p.name for p in labs.solutions()}
    assert sols, "no solutions found"
    assert sols == {p.name for p in LABS}
    assert labs.out_of_date() == [], "labs/ is out of date: run `make labs` and commit the result"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_has_no_outputs_and_no_solution_code(lab):
    nb = nbformat.read(lab, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            assert labs.BEGIN not in cell.source and labs.END not in cell.source
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.slow
@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_stops_first_at_an_exercise_stub(lab, tmp_path):
    nb = nbformat.read(lab, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(lab.parent)}})
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename in ("ExerciseNotDone", "NotImplementedError"), str(err.value)[-2000:]
    # the failing cell is the first one with an error output; it must come after the Exercise 1 heading
    failed = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    headings = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and re.search(r"#.*Exercise\s+1\b",
                                                                                             c.source)]
    second = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and re.search(r"#.*Exercise\s+2\b",
                                                                                           c.source)]
    assert headings and headings[0] < failed < (second[0] if second else len(nb.cells)), (
        f"the lab stopped at cell {failed}, not in exercise 1 (cells {headings[0]}..{second[:1]})")
    error = next(o for o in nb.cells[failed].outputs if o.get("output_type") == "error")
    assert "Exercise 1" in error["evalue"]
