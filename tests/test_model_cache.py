"""The default model's converted cache: written whole or not at all, also when two commands convert at once.

Measured before the fix: two ``flips`` started together on a fresh machine shared one ``.tmp`` folder, and the
second died with a safetensors I/O error because the first had renamed it away.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine.lm.smollm import _valid_cache_meta, publish_cache

STAMP = {"gguf_size": 123, "version": 1}


def _writer(payload: str, barrier: threading.Barrier | None = None, fail: bool = False):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_text(payload)
        if barrier is not None:
            barrier.wait(timeout=10)  # both writers hold a finished private folder before either publishes
        if fail:
            raise RuntimeError("killed mid-write")
        (folder / "meta.json").write_text(json.dumps({"stamp": STAMP, "hf_config": {"who": payload}}))

    return write


def _leftovers(parent: Path, cached: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != cached)


def test_two_concurrent_conversions_both_succeed_and_leave_one_whole_cache(tmp_path):
    cached = tmp_path / "model-v1"
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            publish_cache(cached, STAMP, _writer(name, barrier))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    meta = _valid_cache_meta(cached, STAMP)
    assert meta is not None
    assert (cached / "model.safetensors").read_text() == meta["hf_config"]["who"]  # one writer's files, not a mix
    assert _leftovers(tmp_path, cached) == []


def test_a_stale_cache_is_replaced_and_a_valid_one_is_kept(tmp_path):
    cached = tmp_path / "model-v1"
    cached.mkdir()
    (cached / "model.safetensors").write_text("old")
    (cached / "meta.json").write_text(json.dumps({"stamp": {"gguf_size": 1, "version": 0}}))
    assert _valid_cache_meta(cached, STAMP) is None
    publish_cache(cached, STAMP, _writer("new"))
    assert (cached / "model.safetensors").read_text() == "new"
    # Now valid: a later publisher keeps it rather than renaming it under a reader's feet.
    publish_cache(cached, STAMP, _writer("later"))
    assert (cached / "model.safetensors").read_text() == "new"
    assert _leftovers(tmp_path, cached) == []


def test_a_failed_write_keeps_the_previous_cache_and_leaves_no_temporary_folder(tmp_path):
    cached = tmp_path / "model-v1"
    publish_cache(cached, STAMP, _writer("good"))
    (cached / "meta.json").write_text(json.dumps({"stamp": {"gguf_size": 1, "version": 0}}))  # now stale
    with pytest.raises(RuntimeError, match="killed mid-write"):
        publish_cache(cached, STAMP, _writer("torn", fail=True))
    assert (cached / "model.safetensors").read_text() == "good"
    assert _leftovers(tmp_path, cached) == []


def test_an_incomplete_cache_is_not_valid(tmp_path):
    cached = tmp_path / "model-v1"
    cached.mkdir()
    (cached / "meta.json").write_text(json.dumps({"stamp": STAMP}))
    assert _valid_cache_meta(cached, STAMP) is None  # no weights file
    (cached / "model.safetensors").write_text("w")
    assert _valid_cache_meta(cached, STAMP) == {"stamp": STAMP}
    (cached / "meta.json").write_text("{torn")
    assert _valid_cache_meta(cached, STAMP) is None
