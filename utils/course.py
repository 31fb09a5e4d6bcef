"""Run the whole course: execute every notebook with papermill into build/, then write the course report.

    python -m utils.course            # default parameters (what the report is for)
    python -m utils.course --smoke    # tiny sizes, a quick check that everything runs
    python -m utils.course --only 01  # notebooks whose name contains "01"
    python -m utils.course --store --only 01   # maintainers: store fresh outputs in the committed notebooks

Source notebooks are never modified (except with --store): executed copies go to build/executed/.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

from .results import REPO_ROOT, build_dir, fmt, load_all

NOTEBOOK_DIRS = ("notebooks", "solutions")


def course_notebooks(only: str | None = None) -> list[Path]:
    """Lecture notebooks then solved labs, in syllabus order."""
    out = []
    for d in NOTEBOOK_DIRS:
        out += sorted((REPO_ROOT / d).glob("*.ipynb"))
    return [p for p in out if not only or only in p.name]


class _ChildPeak:
    """Peak resident memory of this process's children (the Jupyter kernel) while a notebook runs."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_notebook(src: Path, smoke: bool = False, out_dir: Path | None = None, timeout: int = 1800) -> dict:
    """Execute one notebook with papermill; returns {notebook, seconds, peak_rss_gb, ok, error, output}."""
    import papermill as pm

    out_dir = out_dir or build_dir() / ("executed-smoke" if smoke else "executed") / src.parent.name
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / src.name
    params = {"SMOKE": True} if smoke else {}
    t0 = time.perf_counter()
    error = None
    with _ChildPeak() as peak:
        try:
            pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3", cwd=str(src.parent),
                                progress_bar=False, execution_timeout=timeout)
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return {"notebook": f"{src.parent.name}/{src.name}", "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": round(peak.peak / 1e9, 2), "ok": error is None, "error": error, "output": str(out)}


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


def write_report(runs: list[dict], smoke: bool) -> tuple[Path, Path]:
    """build/report.md and build/report.html: runtime, peak memory and key results of every notebook."""
    from .measure import fingerprint

    fp = fingerprint()
    results = load_all()
    title = "Doing More With Less — course report" + (" (SMOKE run: tiny sizes)" if smoke else "")
    md = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} on: {fp}", "",
          "| notebook | status | runtime (s) | peak memory (GB) |", "|---|---|---|---|"]
    for r in runs:
        status = "ok" if r["ok"] else f"FAILED: {r['error']}"
        md.append(f"| {r['notebook']} | {status} | {r['seconds']} | {r['peak_rss_gb']} |")
    md.append("")
    for r in runs:
        stem = Path(r["notebook"]).stem
        if stem in results:
            md += [f"## {stem}", "", "| result | value |", "|---|---|"]
            md += [f"| {k} | {fmt(v)} |" for k, v in results[stem]["results"].items()]
            if results[stem].get("notes"):
                md += ["", results[stem]["notes"]]
            md.append("")
    build = build_dir()
    build.mkdir(parents=True, exist_ok=True)
    md_path = build / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    (build / "report.json").write_text(json.dumps({"fingerprint": fp.as_dict(), "runs": runs,
                                                   "results": {k: v["results"] for k, v in results.items()}},
                                                  indent=1))
    html_path = build / "report.html"
    html_path.write_text(_md_tables_to_html(md, title))
    return md_path, html_path


def _md_tables_to_html(lines: list[str], title: str) -> str:
    body, in_table = [], False
    for line in lines:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eee}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


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
    nbs = course_notebooks(args.only)
    if not nbs:
        print("No notebooks matched.", file=sys.stderr)
        return 2
    runs = []
    for nb in nbs:
        print(f"running {nb.parent.name}/{nb.name} ...", flush=True)
        r = run_notebook(nb, smoke=args.smoke)
        print(f"  {'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s, peak {r['peak_rss_gb']} GB"
              + (f"  {r['error']}" if r["error"] else ""), flush=True)
        runs.append(r)
        if args.store and r["ok"]:
            store_outputs(r, nb)
            print(f"  stored outputs in {nb.relative_to(REPO_ROOT)}")
    md, page = write_report(runs, args.smoke)
    print(f"Report: {md} and {page}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
