"""Key results of each notebook, saved for the course report (build/results/<notebook>.json)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_dir() -> Path:
    """Where generated files go: $COURSE_BUILD_DIR, else <course>/build."""
    return Path(os.environ.get("COURSE_BUILD_DIR") or REPO_ROOT / "build")


def results_dir() -> Path:
    """Folder of the per-notebook result files."""
    return build_dir() / "results"


def _clean(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _clean(v.item())
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def record(notebook: str, results: dict, notes: str = "") -> Path:
    """Save `results` ({name: value}) of `notebook` with the machine fingerprint; returns the file written.

    Values are numbers or short strings; each key should say its unit, e.g. "decode tok/s".
    """
    if not notebook or "/" in notebook:
        raise ValueError(f"notebook must be a plain name like '01_measuring_cost', got {notebook!r}")
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict of {name: value}")
    from .measure import fingerprint

    out = results_dir() / f"{notebook}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "notebook": notebook,
        "recorded": _dt.datetime.now().isoformat(timespec="seconds"),
        "fingerprint": fingerprint().as_dict(),
        "results": _clean(results),
        "notes": notes,
    }
    out.write_text(json.dumps(payload, indent=1))
    return out


def load_all(folder: Path | None = None) -> dict[str, dict]:
    """{notebook: payload} of every result file in the folder."""
    folder = folder or results_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def summary_table(results: dict, title: str = "Results") -> str:
    """Markdown table of {name: value}, numbers to 4 significant digits."""
    rows = [f"| {title} | value |", "|---|---|"]
    for k, v in results.items():
        rows.append(f"| {k} | {fmt(v)} |")
    return "\n".join(rows)


def fmt(v) -> str:
    """Short human format of a result value."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if v == 0 or not math.isfinite(v):
        return str(v)
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.4g}"
    return f"{v:.4g}"
