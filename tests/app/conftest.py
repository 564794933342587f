"""Dashboard test fixtures: a private data directory per test, the tiny model in the sidebar, no hub."""

from __future__ import annotations

import pytest

from tests.app.apphelpers import new_app


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
    from engine import jobs

    jobs.cancel_all(timeout=60)


@pytest.fixture
def app():
    return new_app()
