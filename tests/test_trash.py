"""The trash: deleting moves a folder (one rename), restoring gives back identical bytes, nothing is lost on a refusal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from engine.errors import LabError
from engine.store import catalogue, trash


@pytest.fixture(autouse=True)
def data(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SAE_LAB_DATA", str(root))
    return root


def _make_run(data: Path, name: str) -> Path:
    run = data / "runs" / name
    (run / "deltas").mkdir(parents=True)
    (run / "config.json").write_text('{"model": "tiny", "created": 1}')
    (run / "flips.jsonl").write_text('{"id": 0, "valid": true}\n')
    (run / "deltas" / "0.safetensors").write_bytes(os.urandom(4096))
    (run / "labels.jsonl").write_text('{"id": 0, "label": "genuine"}\n')
    rec = run / "recoveries" / "rec-1"
    rec.mkdir(parents=True)
    (rec / "recovery.jsonl").write_bytes(b'{"id": 0}\n' + bytes(range(256)))
    return run


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_delete_then_restore_gives_back_identical_bytes(data):
    run = _make_run(data, "run-a")
    before = _hashes(run)
    entry = catalogue.delete_run("run-a")
    assert not run.exists() and [r.name for r in catalogue.list_runs()] == []
    assert entry.what == "run" and entry.original == "runs/run-a" and entry.content.is_dir()
    assert _hashes(entry.content) == before  # the manifest is beside the folder, not inside it
    assert (entry.path / trash.MANIFEST).is_file()
    assert [e.id for e in trash.list_trash()] == [entry.id]
    assert trash.restore(entry.id) == data.resolve() / "runs" / "run-a"
    assert _hashes(run) == before
    assert [r.name for r in catalogue.list_runs()] == ["run-a"]
    assert trash.list_trash() == [] and not entry.path.exists()


def test_a_recovery_record_goes_to_the_trash_and_back(data):
    run = _make_run(data, "run-b")
    rec = run / "recoveries" / "rec-1"
    before = _hashes(rec)
    entry = trash.move_to_trash(rec, "recovery record")
    assert entry.original == "runs/run-b/recoveries/rec-1" and not rec.exists()
    assert trash.restore(entry.id) == data.resolve() / "runs" / "run-b" / "recoveries" / "rec-1"
    assert _hashes(rec) == before


def test_a_record_whose_run_is_gone_is_not_restored(data):
    run = _make_run(data, "run-c")
    rec_entry = trash.move_to_trash(run / "recoveries" / "rec-1", "recovery record")
    run_entry = catalogue.delete_run("run-c")
    with pytest.raises(LabError, match="restore that first"):
        trash.restore(rec_entry.id)
    assert rec_entry.content.is_dir()
    trash.restore(run_entry.id)
    trash.restore(rec_entry.id)
    assert (run / "recoveries" / "rec-1" / "recovery.jsonl").is_file()


def test_restore_onto_an_occupied_path_is_refused_and_loses_nothing(data):
    run = _make_run(data, "run-d")
    before = _hashes(run)
    entry = catalogue.delete_run("run-d")
    newcomer = _make_run(data, "run-d")  # a new run took the name meanwhile
    (newcomer / "config.json").write_text('{"model": "tiny", "created": 2}')
    newcomer_hashes = _hashes(newcomer)
    with pytest.raises(LabError, match="taken by another folder now. It stays in the trash"):
        trash.restore(entry.id)
    assert _hashes(newcomer) == newcomer_hashes
    assert _hashes(entry.content) == before
    assert [e.id for e in trash.list_trash()] == [entry.id]
    # an empty folder in the way is refused too (a plain rename would silently replace it)
    catalogue.delete_run("run-d")
    (data / "runs" / "run-d").mkdir()
    with pytest.raises(LabError, match="taken"):
        trash.restore(entry.id)
    assert _hashes(entry.content) == before


def test_two_deletes_of_one_name_are_two_entries_newest_first(data):
    _make_run(data, "run-e")
    first = catalogue.delete_run("run-e")
    _make_run(data, "run-e")
    second = catalogue.delete_run("run-e")
    assert first.id != second.id
    assert [e.id for e in trash.list_trash()] == [second.id, first.id]


@pytest.mark.parametrize("bad", ["", "..", "../runs", "20250101-000000-x/../../runs", "/etc", "20250101-000000-..",
                                 "a/b", "no-stamp", "20250101-000000-.hidden", None, 3])
def test_bad_entry_ids_are_refused(data, bad):
    _make_run(data, "run-f")
    catalogue.delete_run("run-f")
    for call in (trash.restore, trash.purge, trash.get_entry):
        with pytest.raises(LabError, match="not a trash entry"):
            call(bad)
    assert len(trash.list_trash()) == 1


def test_unknown_entry_and_purge(data):
    with pytest.raises(LabError, match="no trash entry"):
        trash.restore("20250101-000000-nothing")
    _make_run(data, "run-g")
    entry = catalogue.delete_run("run-g")
    trash.purge(entry.id)
    assert not entry.path.exists() and trash.list_trash() == []
    with pytest.raises(LabError, match="no trash entry"):
        trash.purge(entry.id)


def test_only_folders_inside_the_data_folder_can_be_trashed(data, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for path, msg in ((outside, "not inside the lab's data folder"), (data, "not inside"), (data / "runs" / ".." / "..", "not a folder"),
                      (data / "runs" / "missing", "no folder")):
        with pytest.raises(LabError, match=msg):
            trash.move_to_trash(path, "run")
    _make_run(data, "run-h")
    entry = catalogue.delete_run("run-h")
    with pytest.raises(LabError, match="already in the trash"):
        trash.move_to_trash(entry.content, "run")
    assert outside.is_dir()


def test_an_entry_without_its_folder_is_not_listed(data):
    """A crash between the manifest and the rename leaves an entry with no folder: it is skipped, not offered."""
    _make_run(data, "run-i")
    entry = catalogue.delete_run("run-i")
    os.rename(entry.content, data / "runs" / "run-i")
    assert trash.list_trash() == []
