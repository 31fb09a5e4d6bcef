"""utils.ddp: torchrun launches that clean up, DDP gradients equal to one process's, clear errors."""

from __future__ import annotations

import socket

import psutil
import pytest
import torch

from utils import ddp


def _live_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    before = _live_children()
    out = tmp_path_factory.mktemp("ddp") / "result.json"
    run = ddp.launch(["--steps", "2", "--batch", "8", "--context", "32", "--fsdp"], nproc=2, threads=1, out=out,
                     timeout=240)
    return run, before


def test_ddp_gradient_equals_single_process_gradient(launched):
    run, _ = launched
    assert run.returncode == 0, run.output[-2000:]
    r = run.result
    assert r["world_size"] == 2 and r["backend"] == "gloo" and r["threads"] == 1
    assert r["grad_max_abs_diff"] <= 1e-5 * r["grad_max_abs"]
    assert r["grad_rel_diff"] < 1e-5
    assert len(r["step_s_ddp"]) == len(r["step_s_no_sync"]) == 2 and len(r["per_rank"]) == 2


def test_fsdp2_shards_parameters_and_state(launched):
    fs = launched[0].result["fsdp"]
    assert fs["ok"], fs
    assert fs["param_bytes_local"] * 2 == pytest.approx(fs["param_bytes_full"], rel=0.02)
    assert fs["grad_max_abs_diff_vs_single"] <= 1e-5 * launched[0].result["grad_max_abs"]


def test_launch_leaves_no_process_behind(launched):
    _, before = launched
    assert _live_children() <= before


def test_timeout_kills_the_whole_group(tmp_path):
    before = _live_children()
    with pytest.raises(RuntimeError, match="did not finish"):
        ddp.launch(["--steps", "50"], nproc=2, timeout=1.0, out=tmp_path / "r.json")
    assert _live_children() <= before


def test_a_port_in_use_is_refused_and_a_free_one_is_picked():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ddp.port_in_use(port)
        with pytest.raises(ValueError, match="in use"):
            ddp.launch([], nproc=2, port=port)
    assert not ddp.port_in_use(ddp.free_port())


def test_more_processes_than_cores_warns_and_limits_threads(monkeypatch):
    import utils.timing

    monkeypatch.setattr(utils.timing, "usable_cores", lambda: 2)
    calls = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, **kw):
        calls["cmd"], calls["env"] = cmd, kw["env"]
        raise Stop

    monkeypatch.setattr(ddp.subprocess, "Popen", fake_popen)
    with pytest.warns(UserWarning, match="limiting each process to 1 thread"), pytest.raises(Stop):
        ddp.launch([], nproc=2, threads=4)
    assert calls["env"]["OMP_NUM_THREADS"] == "1" and calls["cmd"][-1] == "1"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="nproc"):
        ddp.launch([], nproc=0)
    with pytest.raises(ValueError, match="threads"):
        ddp.launch([], threads=0)
    with pytest.raises(ValueError, match="multiple of 2"):
        ddp.rank_slice(15, 0, 2)


def test_rank_slices_cover_the_global_batch_once():
    rows = [list(range(12))[ddp.rank_slice(12, r, 3)] for r in range(3)]
    assert sum(rows, []) == list(range(12))
    x1, _ = ddp.global_batch(0, 4, 8, torch.arange(100) % 256)
    x2, _ = ddp.global_batch(0, 4, 8, torch.arange(100) % 256)
    assert torch.equal(x1, x2)                       # every rank draws the same global batch


def test_torchrun_is_available():
    assert ddp.torchrun_available()
