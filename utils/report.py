"""The course report: build/report.md, .html and .json from notebook runs and their recorded key results.

A run is a dict {notebook, seconds, peak_rss_gb, ok, error, output, other_cpu_cores, load_avg, plot}; utils.course
makes them by executing notebooks (the nbval plugin in conftest.py makes them from `make test`). The HTML is rendered
from the markdown by the `markdown` package (tables extension); every value is escaped first.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

from .results import build_dir, fmt, load_all

LECTURE_BUDGET_S = 120    # course rule: a lecture at default parameters on 2 cores
LAB_BUDGET_S = 60         # a solved lab
MEMORY_BUDGET_GB = 4.0    # peak resident memory of the kernel
BUSY_CORES = 0.5          # other processes using more than this many cores on average: the machine was busy

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|#!])")
_STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
          "margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#eee}"
          "img{max-width:100%;border:1px solid #ddd}"
          ".warn{background:#fff3cd;padding:.5em 1em;border:1px solid #e0c060}")


def time_budget_s(notebook: str) -> int:
    """The runtime budget of a notebook given as 'notebooks/NAME.ipynb' (lecture) or 'solutions/NAME.ipynb' (lab)."""
    return LAB_BUDGET_S if notebook.startswith(("solutions/", "labs/")) else LECTURE_BUDGET_S


def md_escape(value) -> str:
    """A value as literal markdown text in a table cell: `|`, `*`, `_`, `<` ... cannot change the layout."""
    text = " ".join(str(value).split())           # a table row is one line
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")   # markdown passes raw HTML on
    return _MD_SPECIAL.sub(r"\\\1", text)


def budget_flags(run: dict) -> list[str]:
    """What was over budget or unusual in one run: time, memory, a busy machine, a failure."""
    flags = []
    if not run.get("ok", False):
        flags.append("FAILED")
    seconds, budget = run.get("seconds"), time_budget_s(run["notebook"])
    if seconds is not None and seconds > budget:
        flags.append(f"over time budget ({seconds:.0f} s > {budget} s)")
    peak = run.get("peak_rss_gb")
    if peak is not None and peak > MEMORY_BUDGET_GB:
        flags.append(f"over memory budget ({peak:.2f} GB > {MEMORY_BUDGET_GB:g} GB)")
    if machine_was_busy(run):
        flags.append(f"machine busy ({run['other_cpu_cores']:.1f} cores used by other processes)")
    return flags


def machine_was_busy(run: dict) -> bool:
    """True when other processes used more than BUSY_CORES cores on average during the run."""
    other = run.get("other_cpu_cores")
    return other is not None and other > BUSY_CORES


def _num(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _plot_markdown(run: dict, folder: Path, embed: bool) -> list[str]:
    plot = run.get("plot")
    if not plot or not (folder / plot).is_file():
        return []
    alt = f"last figure of {Path(run['notebook']).stem}"
    if embed:
        data = base64.b64encode((folder / plot).read_bytes()).decode()
        return [f"![{md_escape(alt)}](data:image/png;base64,{data})", ""]
    return [f"![{md_escape(alt)}]({plot})", ""]


def report_markdown(runs: list[dict], title: str, machine: str, results: dict, folder: Path,
                    embed_plots: bool = False) -> str:
    """The report as markdown (values escaped): runs against their budgets, load warnings, results, key plots."""
    md = [f"# {md_escape(title)}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} on: {md_escape(machine)}", "",
          f"Budgets at default parameters: a lecture ≤ {LECTURE_BUDGET_S} s, a solved lab ≤ {LAB_BUDGET_S} s, "
          f"peak memory ≤ {MEMORY_BUDGET_GB:g} GB.", ""]
    busy = [r for r in runs if machine_was_busy(r)]
    if busy:
        worst = max(r["other_cpu_cores"] for r in busy)
        md += [f"**Warning: the machine was busy** during {len(busy)} of {len(runs)} runs (other processes used up to "
               f"{worst:.1f} cores on average during a run). Their timings show a shared machine, not what this "
               "machine can do: rerun them on a quiet machine before comparing.", ""]
    md += ["| notebook | status | runtime (s) | budget (s) | peak memory (GB) | other processes (cores) | "
           "load average | flags |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        status = "ok" if r.get("ok") else f"FAILED: {r.get('error')}"
        flags = budget_flags(r)
        flags = [f for f in flags if f != "FAILED"]
        md.append("| " + " | ".join(md_escape(c) for c in (
            r["notebook"], status, _num(r.get("seconds"), ".1f"), time_budget_s(r["notebook"]),
            _num(r.get("peak_rss_gb"), ".2f"), _num(r.get("other_cpu_cores"), ".2f"), _num(r.get("load_avg"), ".2f"),
            "⚠ " + "; ".join(flags) if flags else "")) + " |")
    md.append("")
    if any(r.get("seconds") is not None for r in runs):
        md += [md_escape(ci_plan(runs)) + ".", ""]
    for r in runs:
        stem = Path(r["notebook"]).stem
        plot = _plot_markdown(r, folder, embed_plots)
        if stem not in results and not plot:
            continue
        md += [f"## {md_escape(stem)}", ""]
        if stem in results:
            md += ["| result | value |", "|---|---|"]
            md += [f"| {md_escape(k)} | {md_escape(fmt(v))} |" for k, v in results[stem]["results"].items()]
            md.append("")
            if results[stem].get("notes"):
                md += [md_escape(results[stem]["notes"]), ""]
        md += plot
    return "\n".join(md) + "\n"


def render_html(markdown_text: str, title: str) -> str:
    """A standalone HTML page from the report's markdown (Python-Markdown with the tables extension)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    body = body.replace("<p><strong>Warning:", "<p class='warn'><strong>Warning:")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_report(runs: list[dict], smoke: bool = False, title: str | None = None) -> tuple[Path, Path]:
    """build/report.md, report.html (plots embedded, so the page can be handed out alone) and report.json."""
    from .measure import fingerprint

    fp = fingerprint()
    results = load_all()
    title = title or ("Doing More With Less — course report" + (" (SMOKE run: tiny sizes)" if smoke else ""))
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    md_path, html_path = folder / "report.md", folder / "report.html"
    md_path.write_text(report_markdown(runs, title, str(fp), results, folder))
    html_path.write_text(render_html(report_markdown(runs, title, str(fp), results, folder, embed_plots=True), title))
    (folder / "report.json").write_text(json.dumps({
        "fingerprint": fp.as_dict(), "budgets": {"lecture_s": LECTURE_BUDGET_S, "lab_s": LAB_BUDGET_S,
                                                 "memory_gb": MEMORY_BUDGET_GB, "busy_cores": BUSY_CORES},
        "runs": runs, "results": {k: v["results"] for k, v in results.items()}}, indent=1))
    return md_path, html_path


def save_key_plot(notebook: Path, name: str, folder: Path | None = None) -> str | None:
    """Save the last PNG figure of an executed notebook as build/plots/<name>.png; its path relative to build/."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    last = None
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if "image/png" in out.get("data", {}):
                last = out["data"]["image/png"]
    if last is None:
        return None
    folder = folder or build_dir()
    path = folder / "plots" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(last if isinstance(last, str) else "".join(last)))
    return str(path.relative_to(folder))


def runs_from_stored(notebooks: list[Path]) -> list[dict]:
    """Report rows from the committed notebooks' stored outputs (nothing is run): status and last figure only."""
    import nbformat

    runs = []
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        errors = [o.get("ename", "error") for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        runs.append({"notebook": f"{path.parent.name}/{path.name}", "seconds": None, "peak_rss_gb": None,
                     "ok": not errors, "error": f"stored error output: {errors[0]}" if errors else None,
                     "output": str(path), "other_cpu_cores": None, "load_avg": None,
                     "plot": save_key_plot(path, f"{path.parent.name}-{path.stem}")})
    return runs


# CI plan (README "For maintainers"): on a quiet 2-core machine the nbval execution of the lectures averages at most
# CI_LECTURE_MEAN_S and of the solved labs CI_LAB_MEAN_S, so 15 lectures + 14 labs stay near 25 min of nbval.
CI_LECTURE_MEAN_S = 75
CI_LAB_MEAN_S = 25


def ci_plan(runs: list[dict]) -> str:
    """One line: the runs' total time against the CI plan's allowance for that many lectures and labs."""
    labs = sum(time_budget_s(r["notebook"]) == LAB_BUDGET_S for r in runs)
    lectures = len(runs) - labs
    allowance = lectures * CI_LECTURE_MEAN_S + labs * CI_LAB_MEAN_S
    total = sum(r.get("seconds") or 0 for r in runs)
    verdict = "within" if total <= allowance else "OVER"
    return (f"{len(runs)} notebooks ran in {total:.0f} s: {verdict} the CI plan of {allowance} s "
            f"({lectures} lecture{'s' * (lectures != 1)} x {CI_LECTURE_MEAN_S} s + {labs} lab{'s' * (labs != 1)} x "
            f"{CI_LAB_MEAN_S} s on a quiet machine)")
