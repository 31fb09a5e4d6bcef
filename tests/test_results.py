"""utils.results (recording key numbers) and the course report of utils.course."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from utils import course, report, results


def _strict_json(text):
    """Parse JSON that other tools can read too: NaN / Infinity tokens are refused."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_record_writes_clean_json_with_fingerprint(build_dir):
    values = {
        "decode tok/s": 12.5,
        "params": 134_515_008,
        "loss (tensor)": torch.tensor(2.5),
        "steps (int tensor)": torch.tensor(7),
        "ratio (numpy)": np.float32(0.5),
        "perplexity": float("nan"),
        "speedup": float("inf"),
        "per layer ms": [1.0, torch.tensor(2.0), float("-inf")],
        "by dtype": {"fp32": 4, 16: "half"},
        "fits in RAM": True,
        "engine": "torch",
        "missing": None,
        "dtype": torch.float16,
    }
    path = results.record("99_unit_test", values, notes="a note")
    assert path == build_dir / "results" / "99_unit_test.json"
    payload = _strict_json(path.read_text())
    assert payload["notebook"] == "99_unit_test" and payload["notes"] == "a note"
    assert payload["fingerprint"]["torch"] == torch.__version__
    assert payload["fingerprint"]["logical_cores"] >= 1
    got = payload["results"]
    assert got["decode tok/s"] == 12.5
    assert got["params"] == 134_515_008
    assert got["loss (tensor)"] == 2.5
    assert got["steps (int tensor)"] == 7 and isinstance(got["steps (int tensor)"], int)
    assert got["ratio (numpy)"] == 0.5
    assert got["perplexity"] == "nan" and got["speedup"] == "inf"
    assert got["per layer ms"] == [1.0, 2.0, "-inf"]
    assert got["by dtype"] == {"fp32": 4, "16": "half"}
    assert got["fits in RAM"] is True and got["engine"] == "torch" and got["missing"] is None
    assert got["dtype"] == "torch.float16"
    assert results.load_all()["99_unit_test"]["results"] == got


@pytest.mark.parametrize("name", ["", "notebooks/01_measuring_cost", None])
def test_record_rejects_bad_notebook_names(name, build_dir):
    with pytest.raises(ValueError, match="plain name"):
        results.record(name, {"x": 1})
    assert not build_dir.exists()


@pytest.mark.parametrize("values", [{}, [("x", 1)], None])
def test_record_rejects_empty_or_non_dict_results(values, build_dir):
    with pytest.raises(ValueError, match="non-empty dict"):
        results.record("01_measuring_cost", values)


def test_results_dir_follows_course_build_dir(build_dir):
    assert results.build_dir() == build_dir
    assert results.results_dir() == build_dir / "results"


def test_fmt_and_summary_table():
    assert results.fmt(1234567) == "1,234,567"
    assert results.fmt(3.14159) == "3.142"
    assert results.fmt(True) == "True" and results.fmt("fast") == "fast"
    table = results.summary_table({"tok/s": 12.345, "params": 1000}, title="Speed")
    assert table.splitlines() == ["| Speed | value |", "|---|---|", "| tok/s | 12.35 |", "| params | 1,000 |"]


class _Cells(HTMLParser):
    """Rows of every <table> in a page: [[cell text, ...], ...] per table."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _tables(page: str) -> list[list[list[str]]]:
    parser = _Cells()
    parser.feed(page)
    return parser.tables


def _run(notebook, seconds=10.0, peak=1.0, ok=True, error=None, other=0.1, plot=None):
    return {"notebook": notebook, "seconds": seconds, "peak_rss_gb": peak, "ok": ok, "error": error,
            "output": f"build/executed/{notebook}", "other_cpu_cores": other, "load_avg": 1.5, "plot": plot}


def test_write_report_has_runtime_status_and_results(build_dir):
    results.record("01_measuring_cost", {"decode tok/s": 123.4, "peak memory (GB)": 1.5}, notes="Measured on CPU.")
    runs = [_run("notebooks/01_measuring_cost.ipynb", 42.7, 1.23),
            _run("solutions/lab_01_measuring.ipynb", 3.1, 0.5, ok=False, error="ValueError: <boom>")]
    md_path, html_path = course.write_report(runs, smoke=False)
    assert md_path == build_dir / "report.md" and html_path == build_dir / "report.html"

    md = md_path.read_text()
    assert "| notebooks/01\\_measuring\\_cost.ipynb | ok | 42.7 | 120 | 1.23 |" in md
    assert "| solutions/lab\\_01\\_measuring.ipynb | FAILED: ValueError: &lt;boom&gt; | 3.1 | 60 | 0.50 |" in md
    assert "## 01\\_measuring\\_cost" in md and "Measured on CPU." in md
    assert "SMOKE" not in md and "Warning" not in md

    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "ValueError: &lt;boom&gt;" in page and "<boom>" not in page
    runs_table, results_table = _tables(page)
    assert runs_table[0][:4] == ["notebook", "status", "runtime (s)", "budget (s)"]
    assert [row[:5] for row in runs_table[1:]] == [
        ["notebooks/01_measuring_cost.ipynb", "ok", "42.7", "120", "1.23"],
        ["solutions/lab_01_measuring.ipynb", "FAILED: ValueError: <boom>", "3.1", "60", "0.50"]]
    assert results_table[1:] == [["decode tok/s", "123.4"], ["peak memory (GB)", "1.5"]]

    summary = _strict_json((build_dir / "report.json").read_text())
    assert summary["runs"] == runs
    assert summary["results"]["01_measuring_cost"]["decode tok/s"] == 123.4
    assert summary["budgets"] == {"lecture_s": 120, "lab_s": 60, "memory_gb": 4.0, "busy_cores": 0.5}


@pytest.mark.parametrize("label", ["max |Δlogit|", "a | b | c", "<script>alert(1)</script>", "x_1 * y_2 * z",
                                   "back\\slash \\| pipe", "[link](http://x)", "# not a heading", "&amp; ok",
                                   "two\nlines"])
def test_report_escapes_labels_and_values(label, build_dir):
    results.record("02_attention", {label: label, "plain": 1.0}, notes=label)
    course.write_report([_run("notebooks/02_attention.ipynb")], smoke=False)
    page = (build_dir / "report.html").read_text()
    _, table = _tables(page)
    assert all(len(row) == 2 for row in table), table          # no extra columns from a `|`
    assert table[1] == [" ".join(label.split())] * 2 and table[2] == ["plain", "1"]
    assert "<script>" not in page and "<a " not in page and "<h1># not" not in page and "<em>" not in page


def test_report_flags_over_budget_rows_and_a_busy_machine(build_dir):
    runs = [_run("notebooks/01_slow.ipynb", seconds=139.0), _run("notebooks/02_fine.ipynb", seconds=119.0),
            _run("solutions/lab_01_slow.ipynb", seconds=61.0), _run("solutions/lab_02_big.ipynb", peak=4.5),
            _run("notebooks/03_shared.ipynb", other=1.3)]
    course.write_report(runs, smoke=False)
    page = (build_dir / "report.html").read_text()
    rows = {row[0]: row[-1] for row in _tables(page)[0][1:]}
    assert rows["notebooks/01_slow.ipynb"] == "⚠ over time budget (139 s > 120 s)"
    assert rows["notebooks/02_fine.ipynb"] == ""
    assert rows["solutions/lab_01_slow.ipynb"] == "⚠ over time budget (61 s > 60 s)"
    assert rows["solutions/lab_02_big.ipynb"] == "⚠ over memory budget (4.50 GB > 4 GB)"
    assert rows["notebooks/03_shared.ipynb"] == "⚠ machine busy (1.3 cores used by other processes)"
    assert "the machine was busy</strong> during 1 of 5 runs" in page and "class='warn'" in page
    quiet = [dict(r, other_cpu_cores=0.2) for r in runs]
    course.write_report(quiet, smoke=False)
    assert "busy" not in (build_dir / "report.html").read_text()


def _notebook_with_figures(path, colours):
    import base64
    import io

    import matplotlib
    import nbformat

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = []
    for colour in colours:
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.set_facecolor(colour)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        png = base64.b64encode(buf.getvalue()).decode()
        cells.append(nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": png, "text/plain": "<Figure>"})]))
    cells.append(nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")]))
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))
    return base64.b64decode(png) if colours else None


def test_ci_plan_counts_lectures_and_labs():
    runs = [_run("notebooks/01_a.ipynb", 70.0), _run("notebooks/02_b.ipynb", 60.0),
            _run("solutions/lab_01.ipynb", 30.0)]
    assert report.ci_plan(runs).startswith("3 notebooks ran in 160 s: within the CI plan of 175 s (2 lectures x 75 s")
    assert "176 s: OVER the CI plan of 175 s" in report.ci_plan([dict(runs[0], seconds=86.0), *runs[1:]])


def test_key_plot_is_the_last_figure_and_is_embedded(build_dir, tmp_path):
    last_png = _notebook_with_figures(tmp_path / "nb.ipynb", ["red", "blue"])
    plot = report.save_key_plot(tmp_path / "nb.ipynb", "notebooks-05_formats")
    assert plot == "plots/notebooks-05_formats.png" and (build_dir / plot).read_bytes() == last_png
    nbformat_empty = tmp_path / "empty.ipynb"
    _notebook_with_figures(nbformat_empty, [])
    assert report.save_key_plot(nbformat_empty, "x") is None
    course.write_report([_run("notebooks/05_formats.ipynb", plot=plot)], smoke=False)
    assert "![last figure of 05\\_formats](plots/notebooks-05_formats.png)" in (build_dir / "report.md").read_text()
    page = (build_dir / "report.html").read_text()
    assert '<img alt="last figure of 05_formats" src="data:image/png;base64,' in page


def test_run_monitor_sees_the_child_memory_and_the_load():
    code = "import time; x = bytearray(300 * 2**20); time.sleep(0.6)"
    with course.RunMonitor() as mon:
        subprocess.run([sys.executable, "-c", code], check=True)
    got = mon.summary()
    assert got["peak_rss_gb"] >= 0.3
    assert got["other_cpu_cores"] >= 0 and (got["load_avg"] is None or got["load_avg"] >= 0)


def test_write_report_marks_a_smoke_run(build_dir):
    md_path, _ = course.write_report([], smoke=True)
    assert "SMOKE run" in md_path.read_text().splitlines()[0]


def test_course_notebooks_lectures_then_labs(tmp_path, monkeypatch):
    for rel in ["notebooks/02_attention.ipynb", "notebooks/01_measuring_cost.ipynb",
                "solutions/lab_01_measuring.ipynb", "solutions/notes.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    monkeypatch.setattr(course, "REPO_ROOT", tmp_path)
    names = [f"{p.parent.name}/{p.name}" for p in course.course_notebooks()]
    assert names == ["notebooks/01_measuring_cost.ipynb", "notebooks/02_attention.ipynb",
                     "solutions/lab_01_measuring.ipynb"]
    assert [p.name for p in course.course_notebooks(only="01")] == ["01_measuring_cost.ipynb",
                                                                     "lab_01_measuring.ipynb"]
