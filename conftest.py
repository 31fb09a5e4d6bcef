"""Root pytest configuration: applies to the tests and to nbval's notebook items alike.

With --nbval it also times each notebook's execution (kernel start to shutdown), its kernel's peak memory and the
machine's load while it ran, and writes build/report.{md,html,json} at the end, so `make test` shows every notebook
against its budget (utils.report) like `make course` does. Figures in that report are the stored ones.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

_runs: dict[str, dict] = {}
_active: dict = {}


def _tolerate_float_rounding() -> None:
    """Let nbval accept a text output whose decimal numbers moved only in their last printed digits (utils.nbcompare:
    the same fp32 code sums in another order on another CPU); words, verdicts and integers stay exact."""
    try:
        from nbval import plugin
    except ImportError:
        return
    if getattr(plugin.IPyNbCell.compare_outputs, "_course_tolerant", False):
        return
    from utils.nbcompare import close_text

    exact = plugin.IPyNbCell.compare_outputs

    def _text(out: dict):
        if out.get("output_type") == "stream":
            return out, "text"
        if "data" in out and "text/plain" in out["data"]:
            return out["data"], "text/plain"
        return None, None

    def compare_outputs(self, test, ref, skip_compare=None):
        if len(test) == len(ref):
            test = copy.deepcopy(test)                       # NotebookNodes: nbval reads them by attribute
            for t, r in zip(test, ref):
                (tc, key), (rc, rkey) = _text(t), _text(r)
                if tc is None or rc is None or key != rkey or t.get("name") != r.get("name"):
                    continue
                a, b = self.sanitize(rc[key]), self.sanitize(tc[key])
                if a != b and close_text(a, b):
                    tc[key] = rc[key]
        return exact(self, test, ref, skip_compare)

    compare_outputs._course_tolerant = True
    plugin.IPyNbCell.compare_outputs = compare_outputs


_tolerate_float_rounding()

from utils.nbcompare import use_reproducible_numerics  # noqa: E402

use_reproducible_numerics()   # before torch is imported here or in a kernel: see utils.nbcompare


def pytest_collection_modifyitems(items):
    """nbval waits only 5 s for a cell's outputs to arrive after it finishes; on a loaded 2-core machine that is
    not always enough, and a late output is not a wrong output. Wait up to 60 s."""
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 60


def _notebook_of(item) -> Path | None:
    """The notebook file of an nbval cell item, else None."""
    return Path(str(item.parent.path)) if hasattr(item, "output_timeout") and item.parent is not None else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    path = _notebook_of(item)
    if path is not None and _active.get("path") != path:
        from utils.course import RunMonitor

        monitor = RunMonitor()
        monitor.__enter__()
        _active.update(path=path, monitor=monitor, t0=time.perf_counter(), error=None)
    yield


def pytest_runtest_logreport(report):
    if _active and report.failed and _active["error"] is None and "::" in report.nodeid:
        if Path(report.nodeid.split("::")[0]).name == _active["path"].name:
            _active["error"] = f"nbval: {report.nodeid.split('::', 1)[1]} ({report.when}) failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    path = _notebook_of(item)
    if path is None or not _active or _active["path"] != path:
        return
    if nextitem is not None and _notebook_of(nextitem) == path:
        return
    from utils.report import save_key_plot

    monitor = _active["monitor"]
    monitor.__exit__(None, None, None)
    rel = f"{path.parent.name}/{path.name}"
    try:
        plot = save_key_plot(path, f"{path.parent.name}-{path.stem}")
    except Exception:  # a notebook nbval could read always has a readable file; never fail the run over a figure
        plot = None
    _runs[rel] = {"notebook": rel, "seconds": round(time.perf_counter() - _active["t0"], 1), **monitor.summary(),
                  "ok": _active["error"] is None, "error": _active["error"], "output": str(path), "plot": plot}
    _active.clear()


def pytest_sessionfinish(session):
    if not _runs:
        return
    from utils.report import budget_flags, ci_plan, write_report

    _, page = write_report(list(_runs.values()), title="Doing More With Less — course report (nbval run)")
    flagged = {r["notebook"]: budget_flags(r) for r in _runs.values() if budget_flags(r)}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nnbval: {ci_plan(list(_runs.values()))}; per notebook: {page}")
        for nb, flags in flagged.items():
            reporter.write_line(f"  {nb}: {'; '.join(flags)}")
