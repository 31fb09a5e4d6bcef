"""utils.corpora: Shakespeare's two editions, deterministic splits, Python docs and stdlib source."""

import re

import pytest

from utils import corpora


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
