"""utils.results (recording key numbers) and the course report of utils.course."""

import json

import numpy as np
import pytest
import torch

from utils import course, results


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


def test_write_report_has_runtime_status_and_results(build_dir):
    results.record("01_measuring_cost", {"decode tok/s": 123.4, "peak memory (GB)": 1.5}, notes="Measured on CPU.")
    runs = [
        {"notebook": "notebooks/01_measuring_cost.ipynb", "seconds": 42.7, "peak_rss_gb": 1.23, "ok": True,
         "error": None, "output": "build/executed/notebooks/01_measuring_cost.ipynb"},
        {"notebook": "solutions/lab_01_measuring.ipynb", "seconds": 3.1, "peak_rss_gb": 0.5, "ok": False,
         "error": "ValueError: <boom>", "output": "build/executed/solutions/lab_01_measuring.ipynb"},
    ]
    md_path, html_path = course.write_report(runs, smoke=False)
    assert md_path == build_dir / "report.md" and html_path == build_dir / "report.html"

    md = md_path.read_text()
    assert "| notebooks/01_measuring_cost.ipynb | ok | 42.7 | 1.23 |" in md
    assert "FAILED: ValueError: <boom>" in md
    assert "## 01_measuring_cost" in md
    assert "| decode tok/s | 123.4 |" in md
    assert "Measured on CPU." in md
    assert "SMOKE" not in md

    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "01_measuring_cost" in page and "42.7" in page
    assert "<td>decode tok/s</td><td>123.4</td>" in page
    assert "ValueError: &lt;boom&gt;" in page and "<boom>" not in page
    assert page.count("<table>") == page.count("</table>") == 2

    summary = _strict_json((build_dir / "report.json").read_text())
    assert summary["runs"] == runs
    assert summary["results"]["01_measuring_cost"]["decode tok/s"] == 123.4


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
