"""Notebook anatomy (every notebook), and the papermill parameter injection on a fixed, cheap SMOKE subset.

The one full execution of every notebook is nbval's (`make test` passes notebooks/ and solutions/ to pytest with
--nbval: default parameters, stored outputs compared). Running every notebook a second time at SMOKE here doubled
CI time without checking anything nbval does not; `make smoke` still runs them all with SMOKE=True.
"""

from __future__ import annotations

import json

import nbformat
import pytest

from utils.course import course_notebooks, run_notebook

NOTEBOOKS = course_notebooks()
# A fixed, cheap subset: one lecture and one lab whose SMOKE runs were among the cheapest measured (11: 21 s, with a
# tiny LM trained on DEVICE; lab 10: 8 s; with a load average ~2.5, README "For maintainers"), so the injected
# parameters reach real code paths without re-running the course.
SMOKE_SUBSET = ("11_data_curation", "lab_10_tokenization")


def test_course_has_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_welcome_and_setup.ipynb", "01_measuring_cost.ipynb", "lab_01_measuring_cost.ipynb"} <= names
    # --only: a substring selects the lecture and its lab; an exact stem (contained in the lab's name) only itself
    assert [p.name for p in course_notebooks("01_measuring_cost")] == ["01_measuring_cost.ipynb"]
    assert {p.name for p in course_notebooks("01_")} == {"01_measuring_cost.ipynb", "lab_01_measuring_cost.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_anatomy(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in params[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    with_output = sum(bool(c.outputs) for c in code)
    assert with_output >= len(code) // 3, f"only {with_output}/{len(code)} code cells have stored outputs"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_visible_to_papermill(path):
    """`papermill --help-notebook` lists each parameter; a line its parser cannot read is silently missing there."""
    from papermill.translators import PythonTranslator

    source = next(c.source for c in nbformat.read(path, as_version=4).cells
                  if "parameters" in c.metadata.get("tags", []))
    assigned = [line.split("=", 1)[0].strip() for line in source.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    parsed = [p.name for p in PythonTranslator.inspect({"source": source})]
    assert parsed == assigned, f"papermill cannot parse {sorted(set(assigned) - set(parsed))} (an '=' or a call " \
        "in the line or its comment?)"


def test_smoke_subset_exists():
    assert {p.stem for p in NOTEBOOKS} >= set(SMOKE_SUBSET)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in SMOKE_SUBSET], ids=lambda p: p.stem)
def test_smoke_run_injects_parameters(path, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    run = run_notebook(path, smoke=True, out_dir=tmp_path, parameters={"DEVICE": "cpu"})
    assert run["ok"], run["error"]
    nb = nbformat.read(run["output"], as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    injected = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    params = [i for i, t in enumerate(tags) if "parameters" in t]
    assert len(injected) == 1 and injected[0] == params[0] + 1, "papermill must inject right after `parameters`"
    source = nb.cells[injected[0]].source
    assert "SMOKE = True" in source and 'DEVICE = "cpu"' in source, source
    print(json.dumps({k: run[k] for k in ("notebook", "seconds", "peak_rss_gb")}))
