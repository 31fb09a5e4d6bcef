"""The one-command grader (utils.grade): right answers score, wrong and faked ones don't, bad input is reported.

Submissions are lab 10 (tokenization, the cheapest lab to run) built from the worked solution, with exercises
replaced by the typical wrong answers of tests/test_lab10_checks.py or by cheats. They are graded once, together,
at SMOKE sizes; each child process runs a whole notebook (about 10 s), so the module takes about a minute.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import nbformat
import pytest
from lab10_wrong_answers import FLOPS_WITHOUT_HEAD, TRAIN_TIES_TO_LARGEST  # tests/ is on sys.path

from utils import grade, labs, sandbox
from utils.results import REPO_ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the grader's limits (RLIMIT_AS, unshare) are Linux's")
SOLUTION = REPO_ROOT / "solutions" / "lab_10_tokenization.ipynb"
LIMITS = dict(timeout=180, cell_timeout=20, memory_gb=3.0, smoke=True)

WRONG_A = {  # exercises 3, 4, 6, 7 wrong; 1, 2, 5 right
    3: TRAIN_TIES_TO_LARGEST,
    4: '''def decode(ids, merges):
    vocab = bpe.vocab_from_merges(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)  # per token''',
    6: "def bytes_per_token(text, encode_fn):\n    return len(text) / len(encode_fn(text))  # characters",
    7: FLOPS_WITHOUT_HEAD,
}
WRONG_B = {  # exercises 1, 2, 5 wrong (3 uses 1 and 2, so it fails too); 4, 6, 7 right
    1: '''def count_pairs(words):
    out = {}
    for w in words:
        for p in zip(w, w[1:]):
            out[p] = out.get(p, 0) + 1  # unweighted
    return out''',
    2: '''def merge(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]  # first occurrence only
    return ids''',
    5: '''def encode(text, merges):
    ranks = {p: i for i, p in enumerate(merges)}
    out = []
    for piece in bpe.pretokenize(text):
        ids = list(piece.encode())
        while True:
            cands = [p for p in zip(ids, ids[1:]) if p in ranks]
            if not cands:
                break
            p = max(cands, key=ranks.get)  # latest-learned first
            ids = merge(ids, p, 256 + ranks[p])
        out.extend(ids)
    return out''',
}
CHEATS = {  # 1: check cell edited; 2: check cell deleted; 4: always-equal object; 5: reads the expected value
    4: '''class Anything(str):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

def decode(ids, merges):
    return Anything("")''',
    5: '''import sys

def encode(text, merges):
    frame = sys._getframe(1)
    while "want" not in frame.f_locals:
        frame = frame.f_back
    return list(frame.f_locals["want"])''',
    7: '''import utils.checking
utils.checking.run_check = lambda exercise, tests: print(f"✅ Exercise {exercise} passed.")

def flops_per_byte(vocab_size, bytes_per_tok, n_body, d_model):
    return 0.0''',
}
ABUSE = {  # 1: loops forever; 2: allocates until the cap; 3 and 6: network; 7: replaces the course's check; 4 right
    1: "import time\n\ndef count_pairs(words):\n    while True:  # forever (asleep, to spare the CPU)\n"
       "        time.sleep(0.05)",
    2: '''def merge(ids, pair, new_id):
    hog = []
    while True:
        hog.append(b"x" * 2**27)''',
    3: '''import socket

def train(text, vocab_size):
    socket.create_connection(("example.com", 80), timeout=5)
    return []''',
    6: '''import _socket

def bytes_per_token(text, encode_fn):
    s = _socket.socket()
    s.settimeout(5)
    s.connect(("1.1.1.1", 80))
    return len(text.encode("utf-8")) / len(encode_fn(text))''',
    7: '''from utils.checks import lab10
lab10.check_7 = lambda fn: print("✅ Exercise 7 passed.")

def flops_per_byte(vocab_size, bytes_per_tok, n_body, d_model):
    return 1.0''',
}


def _cells_by_exercise(nb) -> tuple[dict[int, object], dict[int, object]]:
    solution, check = {}, {}
    for section, cell in labs._sections(nb):
        if cell.cell_type == "code" and labs.BEGIN in cell.source:
            solution[section] = cell
        elif cell.cell_type == "code" and labs.check_numbers(cell.source):
            check[section] = cell
    return solution, check


def _submission(path, answers: dict[int, str] | None = None, edit_check: int | None = None,
                delete_check: int | None = None, first_cell: str | None = None):
    """Write a lab 10 submission: the worked solution with some answers, check cells or the first cell changed."""
    nb = nbformat.read(SOLUTION, as_version=4)
    solution, check = _cells_by_exercise(nb)
    for k, source in (answers or {}).items():
        solution[k].source = source
    if edit_check:
        check[edit_check].source = f'print("✅ Exercise {edit_check} passed.")'
    if delete_check:
        nb.cells.remove(check[delete_check])
    if first_cell:
        nb.cells.insert(0, nbformat.v4.new_code_cell(first_cell))
    nb.metadata["course_lab"] = {"generated_from": f"solutions/{SOLUTION.name}"}  # as in a lab from labs/
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade one folder of lab 10 submissions (plus bad inputs) once; rows by student, and the gradebook files."""
    folder = tmp_path_factory.mktemp("submissions")
    name = SOLUTION.name
    _submission(folder / "ada" / name)
    _submission(folder / "ben" / name, WRONG_A)
    _submission(folder / "cy" / name, WRONG_B)
    _submission(folder / "dee" / name, CHEATS, edit_check=1, delete_check=2)
    _submission(folder / "eli" / name, ABUSE)
    (folder / "fay").mkdir()
    (folder / "fay" / name).write_text('{"cells": [', encoding="utf-8")  # not valid JSON
    shutil.copy(REPO_ROOT / "labs" / "lab_11_data_curation.ipynb", folder / "gus.ipynb")  # the wrong lab ...
    (folder / "gus").mkdir()
    shutil.copy(REPO_ROOT / "labs" / "lab_11_data_curation.ipynb", folder / "gus" / "lab_11_data_curation.ipynb")
    rows = grade.grade_all(folder, lab=10, progress=False, **LIMITS)
    out = tmp_path_factory.mktemp("gradebook")
    csv_path, html_path = grade.write_gradebook(rows, out)
    by = {}
    for r in rows:
        by.setdefault(r.student, []).append(r)
    return by, csv_path, html_path


def _scores(row) -> list[float]:
    return [row.points[k] for k in sorted(row.points)]


def test_the_worked_solution_scores_full_marks(graded):
    (row,) = graded[0]["ada"]
    assert row.status == "graded", row.notes
    assert _scores(row) == [1] * 7 and row.total == row.maximum == 7
    assert row.messages == {}


def test_typical_wrong_answers_score_zero_on_their_exercise_only(graded):
    (a,) = graded[0]["ben"]
    assert _scores(a) == [1, 1, 0, 0, 1, 0, 0], a.messages
    assert "merge #" in a.messages[3] and "decode(" in a.messages[4]
    assert "bytes per token" in a.messages[6] and "FLOPs/byte" in a.messages[7]
    (b,) = graded[0]["cy"]
    assert _scores(b) == [0, 0, 0, 1, 0, 1, 1], b.messages
    assert "should count" in b.messages[1] and "[256, 3, 256]" in b.messages[2] and "encoding" in b.messages[5]


def test_edited_deleted_and_faked_checks_score_zero(graded):
    (row,) = graded[0]["dee"]
    assert _scores(row) == [0, 0, 1, 0, 0, 1, 0], row.messages
    assert "check cell was edited" in row.messages[1]
    assert "check cell was deleted" in row.messages[2]
    assert "class the notebook defines (Anything)" in row.messages[4]
    assert "called again with the same input outside the check" in row.messages[5]
    assert "utils.checking.run_check" in row.messages[7]


def test_loops_memory_network_and_patched_checks_score_zero(graded):
    (row,) = graded[0]["eli"]
    assert row.status == "graded", row.notes
    assert _scores(row) == [0, 0, 0, 1, 0, 0, 0], row.messages  # 5 (encode) calls 2's merge, the memory hog
    assert "time limit" in row.messages[1]
    assert "MemoryError" in row.messages[2] and "MemoryError" in row.messages[5]
    assert "network" in row.messages[3].lower() or "unreachable" in row.messages[3].lower()
    assert "OSError" in row.messages[6] or "network" in row.messages[6].lower()
    assert "check_7" in row.messages[7]


def test_bad_inputs_get_clear_messages_and_do_not_stop_the_run(graded):
    by = graded[0]
    (fay,) = by["fay"]
    assert fay.status == "error" and "invalid JSON" in fay.notes[0]
    gus = by["gus"]
    assert len(gus) == 2 and all(r.status == "error" for r in gus)
    assert all("this is lab 11, but lab 10 is being graded" in r.notes[0] for r in gus)
    assert all(any("duplicate student name 'gus'" in n for n in r.notes) for r in gus)
    assert all(r.runtime_s == 0 for r in gus)  # refused before running anything


def test_gradebook_csv_and_html(graded):
    _, csv_path, html_path = graded
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [r["student"] for r in rows] == ["ada", "ben", "cy", "dee", "eli", "fay", "gus", "gus"]
    ada = rows[0]
    assert [ada[f"ex{k}"] for k in range(1, 8)] == ["1"] * 7 and ada["total"] == "7" and ada["max"] == "7"
    assert float(ada["runtime_s"]) > 0 and ada["status"] == "graded"
    assert "Exercise 3:" in rows[1]["messages"]
    page = html_path.read_text(encoding="utf-8")
    assert "<table>" in page and "ada" in page and "invalid JSON" in page and 'class="bad"' in page


def test_a_notebook_that_hangs_is_stopped_by_the_timeout(tmp_path):
    hang = "import time\nwhile True:\n    try:\n        time.sleep(0.2)\n    except BaseException:\n        pass"
    path = _submission(tmp_path / "hal" / SOLUTION.name, first_cell=hang)
    (sub,) = grade.discover(tmp_path, lab=10)
    row = grade.grade_one(sub, timeout=12, cell_timeout=2, memory_gb=3.0, smoke=True)
    assert row.status == "timeout" and row.total == 0
    assert row.runtime_s < 30
    assert any("time limit of 12 s" in n for n in row.notes)
    assert path.is_file()


def test_an_empty_folder_is_reported_in_the_gradebook(tmp_path):
    rows = grade.grade_all(tmp_path, progress=False)
    assert len(rows) == 1 and rows[0].status == "error" and "no notebooks" in rows[0].notes[0]


def test_a_missing_folder_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        grade.discover(tmp_path / "nope")
    assert grade.main([str(tmp_path / "nope")]) == 2


def test_student_names_come_from_the_first_folder_or_the_file(tmp_path):
    _submission(tmp_path / "zoe" / "sub" / "anything.ipynb")
    _submission(tmp_path / "yan.ipynb")
    subs = grade.discover(tmp_path)
    assert sorted((s.student, s.lab) for s in subs) == [("yan", 10), ("zoe", 10)]
    assert all(not s.problems for s in subs)


def test_guard_detects_and_undoes_a_patch():
    import torch

    from utils import checking

    guard = sandbox.ModuleGuard(strict=["utils.checking"], loose=[torch])
    original_close, original_allclose = checking.expect_close, torch.allclose
    checking.expect_close = lambda *a, **k: None
    torch.allclose = lambda *a, **k: True
    try:
        assert guard.changes() == ["torch.allclose", "utils.checking.expect_close"]
    finally:
        guard.restore()
    assert checking.expect_close is original_close and torch.allclose is original_allclose
    assert guard.changes() == []



def test_sockets_are_refused_inside_the_child_process():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from utils import sandbox; sandbox.block_sockets()\n"
            "import _socket, socket\n"
            "for f in (lambda: _socket.socket(), lambda: socket.create_connection(('1.1.1.1', 80), timeout=2),\n"
            "          lambda: socket.socket().connect(('1.1.1.1', 80)), lambda: socket.getaddrinfo('x.org', 80)):\n"
            "    try:\n        f()\n        print('open')\n"
            "    except sandbox.NetworkBlocked:\n        print('blocked')\n")
    run = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["blocked"] * 4, run.stderr


def test_the_network_namespace_has_no_network():
    prefix = sandbox.network_namespace_prefix()
    if not prefix:
        pytest.skip("unshare cannot make a network namespace here (the in-process block still applies)")
    code = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=5)\nexcept OSError as e:\n" \
           "    print('no network:', e)"
    run = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("no network:"), run.stdout + run.stderr
