"""Dashboard test fixtures: a private data directory per test, the tiny model in the sidebar, no hub."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repository on the path
    sys.path.insert(0, _ROOT)

from tests.app.apphelpers import new_app  # noqa: E402


@pytest.fixture(autouse=True)
def lab_env(tmp_path, monkeypatch):
    """Every test gets its own SAE_LAB_DATA; the sidebar starts on the tiny model; no hub."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SAE_LAB_DATA", str(data))
    monkeypatch.setenv("SAE_LAB_UI_MODEL", "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NEURONPEDIA_API_KEY", raising=False)
    yield data
    from engine.services import jobs

    jobs.cancel_all(timeout=60)


@pytest.fixture
def app():
    return new_app()
