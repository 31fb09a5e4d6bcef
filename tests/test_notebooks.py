"""Every lecture notebook and solved lab runs top to bottom with SMOKE=True (tiny sizes).

The full-size run with stored-output comparison is nbval's job (`make test` passes notebooks/ and solutions/
to pytest with --nbval).
"""

from __future__ import annotations

import json

import nbformat
import pytest

from utils.course import course_notebooks, run_notebook

NOTEBOOKS = course_notebooks()


def test_course_has_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_welcome_and_setup.ipynb", "01_measuring_cost.ipynb", "lab_01_measuring_cost.ipynb"} <= names


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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_run(path, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_BUILD_DIR", str(tmp_path / "build"))
    run = run_notebook(path, smoke=True, out_dir=tmp_path)
    assert run["ok"], run["error"]
    print(json.dumps({k: run[k] for k in ("notebook", "seconds", "peak_rss_gb")}))
