"""utils.corpora: Shakespeare's two editions, deterministic splits, Python docs and stdlib source."""

import re

import pytest

from utils import assets, corpora


@pytest.fixture(scope="module")
def modern():
    return corpora.shakespeare("modern")


@pytest.fixture(scope="module")
def folio():
    return corpora.shakespeare("folio")


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def _jaccard(a, b):
    return len(a & b) / len(a | b)


# --------------------------------------------------------------------------- Shakespeare
def test_both_editions_have_the_35_paired_plays(modern, folio):
    assert len(modern) == len(folio) == 35
    assert set(modern) == set(folio) == set(corpora.EDITION_PAIRS)
    assert all(len(t) > 50_000 for t in modern.values())
    assert all(len(t) > 50_000 for t in folio.values())
    assert "\r\n" not in modern["hamlet"]


def test_modern_edition_with_poems(modern):
    works = corpora.shakespeare("modern", plays_only=False)
    assert len(works) == 35 + len(corpora.MODERN_ONLY)
    assert "sonnets" in works and "hamlet" in works
    assert works["hamlet"] == modern["hamlet"]


def test_edition_pairs_are_the_same_play_in_two_spellings(modern, folio):
    pairs = corpora.edition_pairs()
    assert [p for p, _, _ in pairs] == sorted(corpora.EDITION_PAIRS)
    for play, m, f in pairs:
        assert m == modern[play] and f == folio[play]
        assert m != f


def test_each_pair_is_more_alike_than_any_two_different_plays(modern, folio):
    m_words = {p: _words(t) for p, t in modern.items()}
    f_words = {p: _words(t) for p, t in folio.items()}
    for play in modern:
        same = _jaccard(m_words[play], f_words[play])
        closest_other = max(_jaccard(m_words[other], f_words[play]) for other in modern if other != play)
        assert same > 0.3, play
        assert same > closest_other + 0.1, f"{play}: {same:.2f} vs another play {closest_other:.2f}"


def test_bad_edition_names_the_allowed_values():
    with pytest.raises(ValueError) as err:
        corpora.shakespeare("quarto")
    assert "modern" in str(err.value) and "folio" in str(err.value) and "quarto" in str(err.value)
    with pytest.raises(ValueError, match="folio"):
        corpora.shakespeare_split("quarto")


# --------------------------------------------------------------------------- splits
TEXT = "".join(f"line {i} of a small document\n" for i in range(200))


def test_split_text_is_deterministic_and_lossless():
    train, val = corpora.split_text(TEXT, 0.1)
    assert (train, val) == corpora.split_text(TEXT, 0.1)
    assert train + val == TEXT
    assert train and val
    assert train.endswith("\n") and val.startswith("line ")  # cut at a line break
    assert 0.08 < len(val) / len(TEXT) < 0.12


def test_split_text_parts_do_not_overlap():
    lines = TEXT.splitlines(keepends=True)
    train, val = corpora.split_text(TEXT, 0.25)
    train_lines, val_lines = train.splitlines(keepends=True), val.splitlines(keepends=True)
    assert not set(train_lines) & set(val_lines)
    assert train_lines + val_lines == lines


def test_split_text_without_line_breaks_still_splits():
    train, val = corpora.split_text("x" * 1000, 0.1)
    assert train + val == "x" * 1000
    assert len(val) == 100


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_split_text_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="val_fraction"):
        corpora.split_text(TEXT, bad)


def test_shakespeare_split_holds_out_about_ten_percent(modern):
    train, val = corpora.shakespeare_split("modern")
    assert len(train) + len(val) == sum(len(t) for t in modern.values())
    assert 0.09 < len(val) / (len(train) + len(val)) < 0.11
    assert (train, val) == corpora.shakespeare_split("modern")


def test_shakespeare_split_of_the_folio(folio):
    train, val = corpora.shakespeare_split("folio", val_fraction=0.2)
    assert 0.19 < len(val) / (len(train) + len(val)) < 0.21


# --------------------------------------------------------------------------- Python docs and source
def test_python_docs_are_real_prose():
    docs = corpora.python_docs()
    assert len(docs) > 50
    assert list(docs) == sorted(docs)
    assert sum(len(t) for t in docs.values()) > 100_000


def test_python_docs_split_is_deterministic():
    train, val = corpora.python_docs_split()
    assert (train, val) == corpora.python_docs_split()
    total = sum(len(t) for t in corpora.python_docs().values())
    assert 0.07 < len(val) / total < 0.13  # the tail of every topic, about 10% of the text
    first = next(iter(corpora.python_docs().values()))
    head, tail = corpora.split_text(first)
    assert train.startswith(head) and val.startswith(tail)
    with pytest.raises(ValueError, match="val_fraction"):
        corpora.python_docs_split(1.0)


def test_stdlib_source_max_files():
    src = corpora.stdlib_source(max_files=5)
    assert len(src) == 5
    assert list(src) == sorted(src)
    assert all(name.endswith(".py") for name in src)
    assert all(text.strip() for text in src.values())


def test_stdlib_source_skips_tests_site_packages_and_undecodable(tmp_path, monkeypatch):
    files = {
        "os.py": "import sys\n",
        "json/__init__.py": "x = 1\n",
        "test/test_os.py": "# a test\n",
        "unittest/tests/test_case.py": "# a test\n",
        "idlelib/idle_test/test_x.py": "# a test\n",
        "site-packages/numpy/__init__.py": "# third party\n",
        "notes.txt": "not python\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "latin1.py").write_bytes(b"# caf\xe9\n")
    monkeypatch.setattr(corpora.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    assert corpora.stdlib_source() == {"json/__init__.py": "x = 1\n", "os.py": "import sys\n"}
    assert list(corpora.stdlib_source(max_bytes=1)) == ["json/__init__.py"]


def test_stdlib_source_fails_clearly_when_the_folder_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="code_corpus"):
        corpora.stdlib_source()


def test_stdlib_source_fails_clearly_when_there_is_no_source(tmp_path, monkeypatch):
    (tmp_path / "os.pyc").write_bytes(b"\0")
    monkeypatch.setattr(corpora.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no .py source"):
        corpora.stdlib_source()


def test_python_docs_fails_clearly_without_pydoc_data(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pydoc_data.topics", None)
    with pytest.raises(FileNotFoundError, match="docs_prose"):
        corpora.python_docs()


# --------------------------------------------------------------------------- pinned code: pip and upstream sdists
@pytest.fixture(scope="module")
def code():
    return corpora.code_corpus()


def test_code_corpus_is_every_py_file_of_the_pinned_sdists(code):
    assert list(code) == sorted(code)
    assert all(p.endswith(".py") for p in code)
    roots = {p.split("/")[0] for p in code}
    assert roots == {f"{assets.ASSETS[k].project}-{assets.ASSETS[k].version}" for k in corpora.CODE_SOURCES}
    assert len(code) == 682
    assert sum(map(len, code.values())) == 7_732_570
    assert "pip-25.0.1/src/pip/_vendor/rich/console.py" in code and "rich-13.9.4/rich/console.py" in code
    assert code == corpora.code_corpus()  # deterministic


def test_code_corpus_sources_and_limits(code):
    only = corpora.code_corpus(["tomli", "certifi"])
    assert {p.split("/")[0] for p in only} == {"tomli-2.2.1", "certifi-2024.8.30"}
    assert only == {p: t for p, t in code.items() if p.startswith(("tomli-", "certifi-"))}
    assert list(corpora.code_corpus(max_files=3)) == list(code)[:3]
    few = corpora.code_corpus(max_bytes=10_000)
    assert list(few) == list(code)[:len(few)] and sum(map(len, few.values())) >= 10_000
    for bad in (["numpy"], [], "pip"):
        with pytest.raises(ValueError, match="sources"):
            corpora.code_corpus(bad)


def test_module_path_is_the_same_for_a_vendored_copy_and_its_upstream():
    assert corpora.module_path("pip-25.0.1/src/pip/_vendor/rich/console.py") == "rich/console.py"
    assert corpora.module_path("rich-13.9.4/rich/console.py") == "rich/console.py"
    assert corpora.module_path("requests-2.32.3/src/requests/api.py") == "requests/api.py"
    assert corpora.module_path("pip-25.0.1/src/pip/_internal/main.py") == "pip/_internal/main.py"


def test_code_split_is_deterministic_disjoint_and_keeps_pairs_together(code):
    train, val = corpora.code_split()
    assert (train, val) == corpora.code_split()
    assert not set(train) & set(val) and {**train, **val} == code
    assert 0.05 < len(val) / len(code) < 0.15
    for pair in corpora.vendored_pairs():
        assert (pair.vendored in val) == (pair.upstream in val), pair
    assert len(corpora.code_split(0.3)[1]) > len(val)
    with pytest.raises(ValueError, match="val_fraction"):
        corpora.code_split(0.0)


def test_pip_vendors_exactly_the_pinned_upstream_versions():
    vendored = corpora.vendored_versions()
    for asset in assets.UPSTREAM_SDISTS:
        assert vendored[asset.key] == asset.version, asset.key
    assert len(vendored) >= 15  # pip vendors more packages than we pin upstream sdists for


def test_unvendor_undoes_pips_import_rewriting():
    vendored = ("from pip._vendor import idna\n    from pip._vendor import urllib3 as u\n"
                "from pip._vendor.rich.console import Console\nimport pip._vendor.urllib3.contrib.pyopenssl\n"
                "x = 'pip._vendor_not_a_module'\n")
    assert corpora.unvendor(vendored) == (
        "import idna\n    import urllib3 as u\nfrom rich.console import Console\nimport urllib3.contrib.pyopenssl\n"
        "x = 'pip._vendor_not_a_module'\n")


def test_vendored_pairs_are_real_near_duplicates(code):
    pairs = corpora.vendored_pairs()
    assert pairs == sorted(pairs) == corpora.vendored_pairs()
    assert len(pairs) == 173
    assert {m: sum(p.match == m for p in pairs) for m in corpora.MATCHES} == {
        "identical": 111, "imports": 54, "patched": 8}
    for p in pairs:
        v, u = code[p.vendored], code[p.upstream]
        assert corpora.module_path(p.vendored) == corpora.module_path(p.upstream)
        assert (v == u) == (p.match == "identical")
        assert (corpora.unvendor(v) == u) == (p.match in ("identical", "imports"))
        if p.match == "imports":
            assert "pip._vendor" in v
    patched = {corpora.module_path(p.vendored) for p in pairs if p.match == "patched"}
    assert patched == {"requests/__init__.py", "requests/compat.py", "requests/help.py", "requests/packages.py",
                       "urllib3/contrib/pyopenssl.py", "urllib3/contrib/securetransport.py", "urllib3/response.py",
                       "urllib3/util/request.py"}


def test_every_vendored_file_of_the_pinned_packages_has_its_pair(code):
    paired = {p.vendored for p in corpora.vendored_pairs()}
    for asset in assets.UPSTREAM_SDISTS:
        prefix = f"{corpora.VENDOR_PREFIX}{asset.key}/"
        vendored = {p for p in code if p.startswith(prefix)}
        assert vendored and vendored <= paired, asset.key


# --------------------------------------------------------------------------- pinned prose: pip's documentation
def test_docs_prose_is_enough_real_english():
    docs = corpora.docs_prose()
    assert docs == corpora.docs_prose() and list(docs) == sorted(docs)
    assert len(docs) == 104
    assert all(p.startswith("docs/") and p.endswith((".rst", ".md")) for p in docs)
    total = sum(map(len, docs.values()))
    assert total == 448_315
    words = re.findall(r"[a-z]+", " ".join(docs.values()).lower())
    common = sum(w in {"the", "of", "to", "and", "a", "is", "in", "that", "you", "it"} for w in words)
    assert len(words) > 50_000 and common / len(words) > 0.15  # English prose, not a listing
    assert "pip install" in docs["docs/html/user_guide.rst"]


def test_docs_split_is_deterministic():
    train, val = corpora.docs_split()
    assert (train, val) == corpora.docs_split()
    total = sum(map(len, corpora.docs_prose().values()))
    assert 0.07 < len(val) / total < 0.13
    first = next(iter(corpora.docs_prose().values()))
    head, tail = corpora.split_text(first)
    assert train.startswith(head) and val.startswith(tail)
    with pytest.raises(ValueError, match="val_fraction"):
        corpora.docs_split(1.0)
