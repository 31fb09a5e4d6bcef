"""Shared fixtures of the unit tests (kept small on purpose)."""

import pytest


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    """A throwaway build folder: everything utils writes under build/ goes here instead."""
    folder = tmp_path / "build"
    monkeypatch.setenv("COURSE_BUILD_DIR", str(folder))
    return folder
