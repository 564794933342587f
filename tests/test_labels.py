"""Hand labels in the run directory (``RUN/labels.jsonl``): the log, consensus, migration from SQLite, and the
``labels import|export|agreement`` commands with every bad input."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.errors import LabError
from engine.store import label_csv, labels


@pytest.fixture(autouse=True)
def data(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("SAE_LAB_DATA", str(d))
    return d


def make_run(path: Path, n: int = 4, valid=(True, True, False, False)) -> Path:
    """A tiny flips run written by hand: config.json + flips.jsonl."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"command": "flips", "model": "tiny", "clamps": []}))
    rows = [{"id": i, "prompt": f"prompt {i}", "base_text": "An answer.", "clamped_text": "I'm sorry, I can't.",
             "base_refusal": False, "clamped_refusal": bool(valid[i]), "valid": bool(valid[i]), "clamped_degenerate": False,
             "base_reasons": [], "clamped_reasons": []} for i in range(n)]
    (path / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "somewhere" / "my-run")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def current(run) -> dict:
    return {(fid, who): lab.label for fid, by in labels.get_labels(run).items() for who, lab in by.items()}


# ------------------------------------------------------------------------------------------------ the log


def test_last_event_per_flip_and_labeller_wins(run):
    labels.set_label(run, 0, "genuine", "clear refusal", labeller="ann")
    labels.set_label(run, 0, "not", "answers after the apology", labeller="bob")
    labels.set_label(run, 0, "unsure", "changed my mind", labeller="ann")
    labels.set_label(run, 2, "genuine", labeller="ann")
    labels.clear_label(run, 2, labeller="ann")
    got = labels.get_labels(run)
    assert {fid: {w: lab.label for w, lab in by.items()} for fid, by in got.items()} == {0: {"ann": "unsure", "bob": "not"}}
    assert got[0]["ann"].note == "changed my mind" and got[0]["ann"].labeller == "ann"
    # Append-only: every event is a line, nothing was rewritten.
    lines = (run / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert json.loads(lines[-1]) == {**json.loads(lines[-1]), "flip_id": 2, "label": "", "labeller": "ann"}
    assert set(json.loads(lines[0])) == {"flip_id", "label", "labeller", "note", "time"}
    assert labels.labels_of(run, "bob")[0].label == "not"
    assert labels.labellers(run) == ["ann", "bob"]


def test_appends_are_fsynced(run, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    labels.set_label(run, 1, "genuine", labeller="ann")
    assert synced, "set_label returned before an fsync"


def test_bad_inputs_are_refused_and_nothing_is_written(run, tmp_path):
    for args, match in [((run, 1, "maybe"), "unknown label"), ((run, 1, ""), "unknown label"),
                        ((run, "x", "genuine"), "not an integer"), ((run, -1, "genuine"), "negative"),
                        ((tmp_path / "nope", 1, "genuine"), "does not exist")]:
        with pytest.raises(LabError, match=match):
            labels.set_label(*args)
    with pytest.raises(LabError, match="control characters"):
        labels.set_label(run, 1, "genuine", labeller="a\nb")
    with pytest.raises(LabError, match="longer than"):
        labels.set_label(run, 1, "genuine", labeller="x" * 200)
    assert not (run / "labels.jsonl").exists()


def test_a_truncated_last_line_is_ignored_and_the_next_append_starts_a_fresh_line(run):
    labels.set_label(run, 0, "genuine", labeller="ann")
    with open(run / "labels.jsonl", "a") as fh:
        fh.write('{"flip_id": 1, "label": "no')  # a crash in the middle of a write
    assert current(run) == {(0, "ann"): "genuine"}
    labels.set_label(run, 1, "not", labeller="ann")
    assert current(run) == {(0, "ann"): "genuine", (1, "ann"): "not"}
    lines = (run / "labels.jsonl").read_text().split("\n")
    assert lines[1] == '{"flip_id": 1, "label": "no' and json.loads(lines[2])["label"] == "not"
    # A whole last event without its newline is kept.
    with open(run / "labels.jsonl", "a") as fh:
        fh.write(json.dumps({"flip_id": 3, "label": "unsure", "labeller": "bob", "note": "", "time": 1.0}))
    assert current(run)[(3, "bob")] == "unsure"


def _append_many(args):
    path, who = args
    for i in range(25):
        labels.set_label(Path(path), i % 4, "genuine" if i % 2 else "not", note=f"{who} {i} " + "x" * 500, labeller=who)


def test_concurrent_appends_from_several_processes_stay_whole(run):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_append_many, [(str(run), f"p{k}") for k in range(4)])
    lines = (run / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["note"].endswith("x" * 500) for line in lines)
    assert len(labels.events(run)) == 100
    assert current(run) == {(fid, f"p{k}"): ("genuine" if (20 + fid) % 2 else "not") for k in range(4) for fid in range(4)}


def test_labels_travel_with_the_run_directory(run, tmp_path):
    labels.set_label(run, 1, "genuine", "kept", labeller="ann")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    assert labels.get_labels(moved)[1]["ann"].note == "kept"


def test_a_store_run_name_is_accepted(data):
    make_run(data / "runs" / "run-a")
    labels.set_label("run-a", 1, "genuine", labeller="ann")
    assert labels.label_counts("run-a") == {"genuine": 1, "not": 0, "unsure": 0}
    with pytest.raises(LabError, match="not a run name"):
        labels.get_labels("../run-a")
    with pytest.raises(LabError, match="does not exist"):
        labels.get_labels("run-b")


# ------------------------------------------------------------------------------------------------ consensus


def test_consensus_is_the_majority_and_a_tie_is_unsure(run):
    votes = {0: {"a": "genuine", "b": "genuine", "c": "not"},     # 2–1 → genuine
             1: {"a": "genuine", "b": "not"},                     # 1–1 → unsure
             2: {"a": "not"},                                     # one labeller → theirs
             3: {"a": "genuine", "b": "not", "c": "unsure"}}      # 1–1–1 → unsure
    for fid, by in votes.items():
        for who, lab in by.items():
            labels.set_label(run, fid, lab, labeller=who)
    labels.set_label(run, 1, "genuine", labeller="c")  # 2–1 now
    labels.clear_label(run, 2, labeller="a")  # nobody → no consensus
    assert labels.consensus(run) == {0: "genuine", 1: "genuine", 3: "unsure"}
    assert labels.consensus_of(["unsure", "unsure", "genuine"]) == "unsure"
    assert labels.consensus_of([]) is None
    assert labels.label_counts(run) == {"genuine": 2, "not": 0, "unsure": 1}
    assert labels.label_counts(run, "b") == {"genuine": 1, "not": 2, "unsure": 0}


# ------------------------------------------------------------------------------------------------ migration


def _old_db(data: Path, rows: list[tuple]) -> Path:
    db = data / "labels.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE labels (run TEXT NOT NULL, flip_id INTEGER NOT NULL, label TEXT NOT NULL, "
                 "note TEXT NOT NULL DEFAULT '', prompt TEXT NOT NULL DEFAULT '', updated REAL NOT NULL, PRIMARY KEY (run, flip_id))")
    conn.executemany("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return db


def _db_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT run, flip_id, label FROM labels").fetchall())


def test_old_sqlite_labels_are_migrated_once_with_their_time(data):
    run = make_run(data / "runs" / "run-a")
    db = _old_db(data, [("run-a", 0, "genuine", "clear", "p0", 1000.0), ("run-a", 2, "not", "answers", "p2", 1001.0),
                        ("run-b", 1, "unsure", "", "", 1002.0)])
    got = labels.get_labels(run)
    assert {fid: by[""].label for fid, by in got.items()} == {0: "genuine", 2: "not"}
    assert got[0][""].time == 1000.0 and got[0][""].note == "clear"
    assert _db_rows(db) == [("run-b", 1, "unsure")]  # only this run's rows are marked migrated (deleted)
    labels.set_label(run, 0, "not", labeller="")  # a new event after the migrated ones wins
    labels._MIGRATED.clear()  # a fresh process reads again: nothing is imported twice
    assert [e["flip_id"] for e in labels.events(run)] == [0, 2, 0]
    assert current(run) == {(0, ""): "not", (2, ""): "not"}


def test_migration_before_the_first_write_keeps_new_labels_last(data):
    run = make_run(data / "runs" / "run-a")
    _old_db(data, [("run-a", 1, "genuine", "", "", 1000.0)])
    labels.set_label(run, 1, "not")
    assert current(run) == {(1, ""): "not"}


def test_migration_interrupted_before_the_delete_does_not_duplicate(data):
    run = make_run(data / "runs" / "run-a")
    (run / "labels.jsonl").write_text(json.dumps({"flip_id": 0, "label": "genuine", "labeller": "", "note": "n", "time": 1000.0}) + "\n")
    db = _old_db(data, [("run-a", 0, "genuine", "n", "", 1000.0), ("run-a", 1, "not", "", "", 1001.0)])
    assert [(e["flip_id"], e["label"]) for e in labels.events(run)] == [(0, "genuine"), (1, "not")]
    assert _db_rows(db) == []


def test_runs_outside_the_store_are_not_migrated(data, tmp_path):
    run = make_run(tmp_path / "cli-runs" / "run-a")  # same name as a store run, other place
    db = _old_db(data, [("run-a", 0, "genuine", "", "", 1000.0)])
    assert labels.get_labels(run) == {}
    assert _db_rows(db) == [("run-a", 0, "genuine")]


def test_no_old_database_is_created_by_reading(data):
    run = make_run(data / "runs" / "run-a")
    labels.get_labels(run)
    assert not (data / "labels.sqlite").exists()


# ------------------------------------------------------------------------------------------------ audit export


def test_audit_export_keeps_the_judge_columns_and_adds_the_labeller(run):
    labels.set_label(run, 1, "genuine", "ok", labeller="ann")
    labels.set_label(run, 1, "not", "answers", labeller="bob")
    flips = [json.loads(line) for line in (run / "flips.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader(io.StringIO(label_csv.export_csv(run, flips))))
    assert list(rows[0]) == label_csv.EXPORT_COLUMNS and label_csv.EXPORT_COLUMNS[-1] == "labeller"
    assert [(r["id"], r["manual_audit_label"], r["labeller"]) for r in rows] == [
        ("0", "", ""), ("1", "genuine", "ann"), ("1", "not", "bob"), ("2", "", ""), ("3", "", "")]
    assert rows[2]["manual_audit_note"] == "answers"


# ------------------------------------------------------------------------------------------------ CLI


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = "flip_id,label,labeller,note\n0,genuine,ann,refuses\n2,not,ann,\"answers, with a comma\"\n1,unsure,bob,\n"


def test_import_then_export_then_import_into_a_copy_round_trips(run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "labels", "import", "--run", run, write_csv(tmp_path / "in.csv", GOOD))
    assert code == 0, err
    assert json.loads(out)["imported"] == 3
    assert current(run) == {(0, "ann"): "genuine", (2, "ann"): "not", (1, "bob"): "unsure"}
    labels.set_label(run, 0, "not", "note with\na newline", labeller="bob")

    code, out, err = run_cli(capsys, "labels", "export", "--run", run, tmp_path / "out.csv")
    assert code == 0, err
    assert json.loads(out)["exported"] == 4
    rows = list(csv.DictReader(open(tmp_path / "out.csv", newline="")))
    assert list(rows[0]) == ["flip_id", "label", "labeller", "note"]

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "labels.jsonl").unlink()
    code, out, err = run_cli(capsys, "labels", "import", "--run", copy, tmp_path / "out.csv")
    assert code == 0, err
    strip = lambda r: {(fid, who): (lab.label, lab.note) for fid, by in labels.get_labels(r).items() for who, lab in by.items()}  # noqa: E731
    assert strip(copy) == strip(run)
    assert strip(copy)[(0, "bob")] == ("not", "note with\na newline")


def test_export_never_overwrites(run, tmp_path, capsys):
    target = write_csv(tmp_path / "exists.csv", "keep me")
    code, _, err = run_cli(capsys, "labels", "export", "--run", run, target)
    one_line_error(code, err, "already exists")
    assert target.read_text() == "keep me"
    code, _, err = run_cli(capsys, "labels", "export", "--run", run, tmp_path / "no-such-dir" / "x.csv")
    one_line_error(code, err, "does not exist")


BAD_CSVS = [
    ("bad label", "flip_id,label,labeller,note\n0,genuine,ann,\n1,maybe,ann,\n", ["row 2", "unknown label 'maybe'"]),
    ("empty label", "flip_id,label,labeller,note\n0,,ann,\n", ["row 1", "label is empty"]),
    ("unknown flip", "flip_id,label,labeller,note\n0,genuine,ann,\n1,not,ann,\n9,not,ann,\n", ["row 3", "flip id 9 is not in the run"]),
    ("non-integer id", "flip_id,label,labeller,note\nabc,genuine,ann,\n", ["row 1", "'abc' is not an integer"]),
    ("fractional id", "flip_id,label,labeller,note\n0,genuine,ann,\n1.5,not,ann,\n", ["row 2", "not an integer"]),
    ("negative id", "flip_id,label,labeller,note\n-1,genuine,ann,\n", ["row 1", "negative"]),
    ("missing column", "flip_id,label,note\n0,genuine,x\n", ["no column labeller"]),
    ("extra column", "flip_id,label,labeller,note,prompt\n0,genuine,ann,,p\n", ["unexpected columns 'prompt'"]),
    ("too few fields", "flip_id,label,labeller,note\n0,genuine,ann,\n1,not\n", ["row 2", "fewer fields"]),
    ("too many fields", "flip_id,label,labeller,note\n0,genuine,ann,,extra\n", ["row 1", "more fields"]),
    ("repeated pair", "flip_id,label,labeller,note\n0,genuine,ann,\n0,not,ann,\n", ["row 2", "already labelled in row 1"]),
    ("empty file", "", ["is empty"]),
    ("control char in labeller", "flip_id,label,labeller,note\n0,genuine,\"a\tb\",\n", ["row 1", "control characters"]),
]


@pytest.mark.parametrize("what,text,fragments", BAD_CSVS, ids=[b[0] for b in BAD_CSVS])
def test_import_refuses_bad_input_and_imports_nothing(run, tmp_path, capsys, what, text, fragments):
    labels.set_label(run, 3, "unsure", labeller="old")
    before = (run / "labels.jsonl").read_bytes()
    code, _, err = run_cli(capsys, "labels", "import", "--run", run, write_csv(tmp_path / "bad.csv", text))
    one_line_error(code, err, *fragments)
    assert (run / "labels.jsonl").read_bytes() == before


def test_import_refuses_missing_files_and_runs(run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "labels", "import", "--run", run, tmp_path / "nope.csv")
    one_line_error(code, err, "does not exist")
    good = write_csv(tmp_path / "in.csv", GOOD)
    code, _, err = run_cli(capsys, "labels", "import", "--run", tmp_path / "no-run", good)
    one_line_error(code, err, "does not exist")
    (tmp_path / "empty-run").mkdir()
    code, _, err = run_cli(capsys, "labels", "import", "--run", tmp_path / "empty-run", good)
    one_line_error(code, err, "no flips.jsonl")
    (tmp_path / "latin1.csv").write_bytes("flip_id,label,labeller,note\n0,genuine,Jos\xe9,\n".encode("latin-1"))
    code, _, err = run_cli(capsys, "labels", "import", "--run", run, tmp_path / "latin1.csv")
    one_line_error(code, err, "not UTF-8")
    assert not (run / "labels.jsonl").exists()


def test_agreement_command_prints_the_table(run, tmp_path, capsys):
    # judge: 0, 1 valid; 2, 3 not.  humans (consensus): 0 genuine, 1 not, 2 not, 3 unsure.
    text = ("flip_id,label,labeller,note\n0,genuine,ann,\n1,not,ann,\n2,not,ann,\n3,unsure,ann,\n"
            "0,genuine,bob,\n1,genuine,bob,\n")
    assert run_cli(capsys, "labels", "import", "--run", run, write_csv(tmp_path / "in.csv", text))[0] == 0
    code, out, err = run_cli(capsys, "labels", "agreement", "--run", run)
    assert code == 0, err
    got = json.loads(out)
    jh = got["judge_vs_human"]
    # flip 1: ann not, bob genuine → tie → unsure; so compared: 0 (valid, genuine), 2 (invalid, not).
    assert jh["n"] == 2 and jh["n_unsure_excluded"] == 2
    assert jh["confusion"] == {"judge_valid": {"human_genuine": 1, "human_not": 0}, "judge_invalid": {"human_genuine": 0, "human_not": 1}}
    assert jh["kappa"]["value"] == pytest.approx(1.0)
    assert got["labellers"] == ["ann", "bob"]
    assert got["inter_labeller"][0]["n"] == 2
