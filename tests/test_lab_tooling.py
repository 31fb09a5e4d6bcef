"""The lab generator (utils.labs) and the check helpers (utils.checking), on small made-up notebooks."""

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from utils import checking, labs
from utils.checking import CheckFailed, ExerciseNotDone
from utils.labs import BEGIN, END, LabSourceError

SOLVED = f"""import math

def area(r):
    \"\"\"Area of a circle.\"\"\"
    {BEGIN}
    squared = r * r
    return math.pi * squared
    {END}

print(area(1.0))"""


# --------------------------------------------------------------------------- stub_source
def test_stub_replaces_the_solution_region_keeping_indentation():
    lines = labs.stub_source(SOLVED, 3, "test cell").splitlines()
    assert lines == [
        "import math",
        "",
        "def area(r):",
        '    """Area of a circle."""',
        "    # YOUR CODE HERE",
        '    raise NotImplementedError("Exercise 3: replace this line with your code")',
        "",
        "print(area(1.0))",
    ]


def test_stub_handles_several_regions_and_top_level_code():
    source = f"{BEGIN}\nx = 1\n{END}\ny = 2\n        {BEGIN}\n        z = 3\n        {END}"
    lines = labs.stub_source(source, 12, "cell").splitlines()
    assert lines[0] == "# YOUR CODE HERE"
    assert lines[1].startswith('raise NotImplementedError("Exercise 12:')
    assert lines[2] == "y = 2"
    assert lines[3] == "        # YOUR CODE HERE"
    assert lines[4].startswith('        raise NotImplementedError("Exercise 12:')
    assert len(lines) == 5


def test_stub_leaves_cells_without_regions_alone():
    source = "a = 1\n# BEGIN SOLUTION is only a marker on a line of its own\nb = 2"
    assert labs.stub_source(source, None, "cell") == source


@pytest.mark.parametrize("source, exercise, message", [
    (f"x = 1\n{END}", 1, "without"),
    (f"{BEGIN}\nx = 1", 1, "without"),
    (f"{BEGIN}\n{BEGIN}\nx = 1\n{END}", 1, "nested"),
    (f"{BEGIN}\nx = 1\n{END}", None, "before any 'Exercise N' heading"),
])
def test_malformed_markers_are_refused(source, exercise, message):
    with pytest.raises(LabSourceError, match=message) as err:
        labs.stub_source(source, exercise, "lab_99.ipynb, cell 4")
    assert "lab_99.ipynb, cell 4" in str(err.value)
    assert isinstance(err.value, ValueError)


# --------------------------------------------------------------------------- make_lab
def _solution_notebook(path, extra_cells=()):
    """A small solved lab with two exercises, outputs, a solution-only cell and papermill metadata."""
    nb = new_notebook()
    executed = new_code_cell("import math\nprint(math.pi)", execution_count=1,
                             outputs=[new_output("stream", name="stdout", text="3.14159\n")])
    executed.metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00"}
    solution_1 = new_code_cell(f"def double(x):\n    {BEGIN}\n    return 2 * x\n    {END}", execution_count=2)
    solution_2 = new_code_cell(f"{BEGIN}\nanswer = 42\n{END}", execution_count=3,
                               outputs=[new_output("execute_result", data={"text/plain": "42"}, execution_count=3)])
    secret = new_code_cell("assert double(2) == 4  # only in the solutions", execution_count=4)
    secret.metadata["tags"] = ["solution-only"]
    nb.cells = [
        new_markdown_cell("# Lab 99: doubling\n\nA tiny lab."),
        executed,
        new_markdown_cell("## Exercise 1: double a number"),
        solution_1,
        new_code_cell("check_double(double)", execution_count=5),
        secret,
        new_markdown_cell("Some prose.\n\n## Exercise 2 — the answer\n\nWrite it down."),
        solution_2,
        *extra_cells,
    ]
    nb.metadata["papermill"] = {"parameters": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_make_lab_stubs_exercises_and_clears_outputs(tmp_path):
    sol = _solution_notebook(tmp_path / "solutions" / "lab_99_doubling.ipynb")
    lab = labs.make_lab(sol)
    nbformat.validate(lab)

    sources = [c.source for c in lab.cells]
    assert not any(BEGIN in s or END in s for s in sources)
    assert not any("only in the solutions" in s for s in sources)  # solution-only cell removed
    assert "return 2 * x" not in "\n".join(sources) and "answer = 42" not in "\n".join(sources)

    code = [c for c in lab.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert all("execution" not in c.metadata for c in code)
    stubs = [c.source for c in code if "NotImplementedError" in c.source]
    assert len(stubs) == 2
    assert stubs[0].startswith("def double(x):\n    # YOUR CODE HERE\n    raise NotImplementedError(\"Exercise 1:")
    assert stubs[1].startswith('# YOUR CODE HERE\nraise NotImplementedError("Exercise 2:')

    assert lab.cells[0].source.startswith("# Lab 99")
    assert lab.cells[1].id == "lab-banner" and "solutions/lab_99_doubling.ipynb" in lab.cells[1].source
    assert len(lab.cells) == 8  # 8 cells, minus the solution-only one, plus the banner
    assert "papermill" not in lab.metadata
    assert lab.metadata["course_lab"]["generated_from"] == "solutions/lab_99_doubling.ipynb"
    assert lab.metadata["course_lab"]["source_sha256"] == labs._source_hash(lab)


def test_make_lab_does_not_touch_the_solution(tmp_path):
    sol = _solution_notebook(tmp_path / "lab_99_doubling.ipynb")
    before = sol.read_text()
    labs.make_lab(sol)
    assert sol.read_text() == before


def test_make_lab_needs_at_least_one_region(tmp_path):
    nb = new_notebook(cells=[new_markdown_cell("## Exercise 1"), new_code_cell("x = 1")])
    path = tmp_path / "lab_98_empty.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(LabSourceError, match="no ### BEGIN SOLUTION"):
        labs.make_lab(path)


def test_make_lab_refuses_a_region_before_any_exercise_heading(tmp_path):
    nb = new_notebook(cells=[new_markdown_cell("# Lab 97"), new_code_cell(f"{BEGIN}\nx = 1\n{END}")])
    path = tmp_path / "lab_97_early.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(LabSourceError, match="lab_97_early.ipynb, cell 1"):
        labs.make_lab(path)


# --------------------------------------------------------------------------- write_labs
@pytest.fixture
def course_repo(tmp_path, monkeypatch, build_dir):
    """A course folder with one solved lab; labs/ empty; utils.labs pointed at it."""
    monkeypatch.setattr(labs, "REPO_ROOT", tmp_path)
    sol = _solution_notebook(tmp_path / "solutions" / "lab_99_doubling.ipynb")
    return sol, tmp_path / "labs" / "lab_99_doubling.ipynb"


def test_write_labs_writes_then_reports_up_to_date(course_repo, capsys):
    sol, lab = course_repo
    assert labs.out_of_date() == [lab.name]
    assert labs.write_labs() == 0
    assert lab.read_text() == labs._dumps(labs.make_lab(sol))
    assert labs.out_of_date() == []
    assert labs.write_labs() == 0
    assert "up to date" in capsys.readouterr().out


def test_write_labs_keeps_a_lab_the_learner_edited(course_repo, build_dir, capsys):
    sol, lab = course_repo
    labs.write_labs()
    edited = nbformat.read(lab, as_version=4)
    stub = next(c for c in edited.cells if "NotImplementedError" in c.source)
    stub.source = "def double(x):\n    return x + x  # my answer"
    nbformat.write(edited, lab)
    mine = lab.read_text()

    assert labs.write_labs() == 1
    assert lab.read_text() == mine
    assert "KEPT" in capsys.readouterr().out
    assert labs.out_of_date() == [lab.name]
    assert labs.main([]) == 1
    assert lab.read_text() == mine
    assert not (build_dir / "lab_backups").exists()


def test_write_labs_force_backs_up_then_overwrites(course_repo, build_dir):
    sol, lab = course_repo
    labs.write_labs()
    edited = nbformat.read(lab, as_version=4)
    edited.cells.append(new_code_cell("print('my own experiment')"))
    nbformat.write(edited, lab)
    mine = lab.read_text()

    assert labs.write_labs(force=True) == 0
    assert lab.read_text() == labs._dumps(labs.make_lab(sol))
    backups = list((build_dir / "lab_backups").glob("lab_99_doubling.*.ipynb"))
    assert len(backups) == 1
    assert backups[0].read_text() == mine


def test_write_labs_updates_an_unedited_outdated_lab(course_repo, build_dir):
    sol, lab = course_repo
    labs.write_labs()
    ran = nbformat.read(lab, as_version=4)  # the learner only ran it: outputs do not count as edits
    ran.cells[2].execution_count = 1
    nbformat.write(ran, lab)
    _solution_notebook(sol, extra_cells=[new_markdown_cell("## Going further\n\nNew text.")])  # solution changed

    assert labs.out_of_date() == [lab.name]
    assert labs.write_labs() == 0
    assert "Going further" in lab.read_text()
    assert lab.read_text() == labs._dumps(labs.make_lab(sol))
    assert not (build_dir / "lab_backups").exists()


def test_check_command_reports_outdated_labs(course_repo, capsys):
    assert labs.main(["--check"]) == 1
    assert "make labs" in capsys.readouterr().out
    labs.write_labs()
    assert labs.main(["--check"]) == 0


# --------------------------------------------------------------------------- checking
def test_run_check_prints_a_pass_line(capsys):
    checking.run_check(4, lambda: "3 cases")
    assert capsys.readouterr().out == "✅ Exercise 4 passed: 3 cases\n"
    checking.run_check(5, lambda: None)
    assert capsys.readouterr().out == "✅ Exercise 5 passed.\n"


def test_run_check_rewords_a_failed_check():
    def tests():
        raise CheckFailed("double(2): expected 4, got 5")

    with pytest.raises(CheckFailed) as err:
        checking.run_check(2, tests)
    assert str(err.value) == "Exercise 2: double(2): expected 4, got 5"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_run_check_of_a_stub_says_not_done():
    def tests():
        raise NotImplementedError("Exercise 3: replace this line with your code")

    with pytest.raises(ExerciseNotDone) as err:
        checking.run_check(3, tests)
    assert "Exercise 3 is not done yet" in str(err.value)
    assert isinstance(err.value, NotImplementedError)


def test_run_check_turns_a_crash_into_a_failed_check():
    def tests():
        return {}["missing key"]

    with pytest.raises(CheckFailed) as err:
        checking.run_check(6, tests)
    assert str(err.value).startswith("Exercise 6: your code raised KeyError")
    assert "missing key" in str(err.value)


def test_expect_close_says_expected_got_and_percent_off():
    with pytest.raises(CheckFailed) as err:
        checking.expect_close("mean latency (ms)", 11.0, 10.0, rtol=0.01)
    msg = str(err.value)
    assert msg.startswith("mean latency (ms): expected 10, got 11")
    assert "+10%" in msg
    assert "ratio got/expected = 1.1" in msg


def test_expect_close_accepts_close_values_and_tensors():
    checking.expect_close("x", 1.0 + 1e-9, 1.0)
    checking.expect_close("x", torch.tensor(2.0), 2.0)
    checking.expect_close("x", 0.05, 0.0, atol=0.1)


@pytest.mark.parametrize("got, message", [
    (float("nan"), "got nan"),
    (torch.ones(3), r"tensor of shape \(3,\)"),
    ("1.0", "expected a number, got str"),
    (None, "expected a number, got NoneType"),
])
def test_expect_close_rejects_non_numbers(got, message):
    with pytest.raises(CheckFailed, match=message):
        checking.expect_close("x", got, 1.0)


def test_expect_close_to_zero_has_no_percent():
    with pytest.raises(CheckFailed) as err:
        checking.expect_close("bias", 0.5, 0.0)
    assert str(err.value) == "bias: expected 0, got 0.5"


def test_expect_keys_and_tensor():
    checking.expect_keys("sizes", {"a": 1, "b": 2}, ["a", "b"])
    with pytest.raises(CheckFailed, match=r"missing \['b'\], unexpected \['c'\]"):
        checking.expect_keys("sizes", {"a": 1, "c": 2}, ["a", "b"])
    with pytest.raises(CheckFailed, match="expected a dict, got list"):
        checking.expect_keys("sizes", [], ["a"])
    checking.expect_tensor("w", torch.zeros(2, 3), shape=(2, 3), dtype=torch.float32)
    with pytest.raises(CheckFailed, match=r"expected shape \(3, 2\), got \(2, 3\)"):
        checking.expect_tensor("w", torch.zeros(2, 3), shape=(3, 2))
    with pytest.raises(CheckFailed, match="expected dtype torch.int8"):
        checking.expect_tensor("w", torch.zeros(2), dtype=torch.int8)
    with pytest.raises(CheckFailed, match="expected a torch.Tensor, got list"):
        checking.expect_tensor("w", [0.0])


@pytest.mark.parametrize("error", [CheckFailed("off by 3%"), ExerciseNotDone("Exercise 1 is not done yet")])
def test_verdicts_render_as_one_line_in_jupyter(error):
    rendered = error._render_traceback_()
    assert isinstance(rendered, list) and len(rendered) == 1
    assert "\n" not in rendered[0]
    assert str(error) in rendered[0]
    assert ("❌" if isinstance(error, CheckFailed) else "✏️") in rendered[0]
