"""Run the whole course: execute every notebook with papermill into build/, then write the course report.

    python -m utils.course            # default parameters (what the report is for)
    python -m utils.course --smoke    # tiny sizes, a quick check that everything runs
    python -m utils.course --only 01  # notebooks whose name contains "01" (an exact name or stem selects just that one)
    python -m utils.course --store --only 01   # maintainers: store fresh outputs in the committed notebooks

Source notebooks are never modified (except with --store): executed copies go to build/executed/, each one's last
figure to build/plots/, the report (utils.report) to build/report.{md,html,json}.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from .report import budget_flags, save_key_plot, write_report
from .results import REPO_ROOT, build_dir

NOTEBOOK_DIRS = ("notebooks", "solutions")


def course_notebooks(only: str | None = None) -> list[Path]:
    """Lecture notebooks then solved labs, in syllabus order; `only`: an exact file name or stem, else a substring."""
    out = []
    for d in NOTEBOOK_DIRS:
        out += sorted((REPO_ROOT / d).glob("*.ipynb"))
    exact = [p for p in out if only in (p.name, p.stem)]
    return exact or [p for p in out if not only or only in p.name]


class RunMonitor:
    """While a notebook runs: peak resident memory of this process's children (the Jupyter kernel), the 1-minute
    load average, and how many cores *other* processes used (system CPU time minus this process tree's)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._loads: list[float] = []

    @staticmethod
    def _busy_seconds() -> float:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)   # already counted in user time
        return sum(t) - idle - guest

    def _tree_cpu(self) -> None:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    c = p.cpu_times()
                    self._cpu[p.pid] = c.user + c.system
                    if p.pid != me.pid:
                        total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        last_load = 0.0
        while not self._stop.is_set():
            self._tree_cpu()
            now = time.monotonic()
            if now - last_load >= 1.0:
                self._loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
                last_load = now
            self._stop.wait(self.interval)

    def __enter__(self):
        self._cpu: dict[int, float] = {}
        self._tree_cpu()
        self._cpu0 = dict(self._cpu)
        self._busy0, self._t0 = self._busy_seconds(), time.monotonic()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._tree_cpu()
        wall = max(time.monotonic() - self._t0, 1e-9)
        own = sum(v - self._cpu0.get(pid, 0.0) for pid, v in self._cpu.items())
        self.other_cpu_cores = max(0.0, (self._busy_seconds() - self._busy0 - own) / wall)
        loads = [x for x in self._loads if x == x]
        self.load_avg = sum(loads) / len(loads) if loads else None

    def summary(self) -> dict:
        """{peak_rss_gb, other_cpu_cores, load_avg} of the finished run, rounded."""
        return {"peak_rss_gb": round(self.peak / 1e9, 2), "other_cpu_cores": round(self.other_cpu_cores, 2),
                "load_avg": None if self.load_avg is None else round(self.load_avg, 2)}


def run_notebook(src: Path, smoke: bool = False, out_dir: Path | None = None, timeout: int = 1800,
                 parameters: dict | None = None) -> dict:
    """Execute one notebook with papermill; returns {notebook, seconds, peak_rss_gb, ok, error, output,
    other_cpu_cores, load_avg, plot} (plot: its last figure saved under build/plots/, or None)."""
    import papermill as pm

    out_dir = out_dir or build_dir() / ("executed-smoke" if smoke else "executed") / src.parent.name
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / src.name
    params = {**({"SMOKE": True} if smoke else {}), **(parameters or {})}
    t0 = time.perf_counter()
    error = None
    with RunMonitor() as mon:
        try:
            pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", cwd=str(src.parent),
                                progress_bar=False, execution_timeout=timeout)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    seconds = round(time.perf_counter() - t0, 1)
    plot = None
    if out.is_file():
        try:
            plot = save_key_plot(out, f"{src.parent.name}-{src.stem}")
        except Exception:  # a notebook papermill could not even write has no figure to show
            plot = None
    return {"notebook": f"{src.parent.name}/{src.name}", "seconds": seconds, **mon.summary(),
            "ok": error is None, "error": error, "output": str(out), "plot": plot}


def clean_metadata(nb) -> None:
    """Drop run-specific metadata (papermill timings, execution timestamps) so stored notebooks diff cleanly."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "tags" in cell.metadata and not cell.metadata["tags"]:
            del cell.metadata["tags"]


def store_outputs(run: dict, src: Path) -> None:
    """Copy an executed notebook's outputs back over its source (maintainers only; the run must have passed)."""
    import nbformat

    if not run["ok"]:
        raise RuntimeError(f"not storing outputs of {src.name}: it failed ({run['error']})")
    nb = nbformat.read(run["output"], as_version=4)
    clean_metadata(nb)
    nbformat.write(nb, str(src))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m utils.course", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="run with SMOKE=True (tiny sizes)")
    p.add_argument("--only", help="run only notebooks whose file name contains this")
    p.add_argument("--store", action="store_true",
                   help="maintainers: write the fresh outputs back into notebooks/ and solutions/")
    args = p.parse_args(argv)
    if args.store and args.smoke:
        p.error("--store stores default-parameter outputs; it cannot be combined with --smoke")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    if args.store:                  # stored outputs are produced in the mode nbval checks them in (utils.nbcompare)
        from .nbcompare import use_reproducible_numerics

        use_reproducible_numerics()
    nbs = course_notebooks(args.only)
    if not nbs:
        print("No notebooks matched.", file=sys.stderr)
        return 2
    runs = []
    for nb in nbs:
        print(f"running {nb.parent.name}/{nb.name} ...", flush=True)
        r = run_notebook(nb, smoke=args.smoke)
        flags = [f for f in budget_flags(r) if f != "FAILED"]
        print(f"  {'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s, peak {r['peak_rss_gb']} GB"
              + (f"  {r['error']}" if r["error"] else "") + (f"  [{'; '.join(flags)}]" if flags else ""), flush=True)
        runs.append(r)
        if args.store and r["ok"]:
            store_outputs(r, nb)
            print(f"  stored outputs in {nb.relative_to(REPO_ROOT)}")
    md, page = write_report(runs, args.smoke)
    print(f"Report: {md} and {page}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
