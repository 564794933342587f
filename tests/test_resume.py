"""Runs that never lose work: recovery records, migration of the flat layout, SIGKILL + resume, the valid set."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.errors import LabError
from engine.store import labels
from engine.store.files import JsonlWriter, read_jsonl, whole_batches
from engine.store.records import get_record, list_records, migrate_flat_layout
from engine.store.valid_set import valid_counts, valid_flips

ROOT = Path(__file__).resolve().parents[1]
FLIPS = ["flips", "--prompts", "builtin:harmless", "--model", "tiny", "--sae", "tiny", "--features", "0,1,2", "--value", "8"]
RECOVER = ["--steps", "4", "--max-new-tokens", "4", "--answer-tokens", "8"]


def _all_valid(run: Path) -> None:
    """The tiny model's gibberish never refuses; mark every flip valid to exercise recovery."""
    rows = read_jsonl(run / "flips.jsonl")
    (run / "flips.jsonl").write_text("".join(json.dumps({**r, "valid": True}) + "\n" for r in rows))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main([*FLIPS, "--limit", "4", "--max-new-tokens", "8", "--out", str(out)]) == 0
    _all_valid(out)
    return out


def _records(path: Path) -> list[dict]:
    return read_jsonl(path / "recovery.jsonl")


def test_two_recoveries_on_one_run_coexist(run, capsys):
    capsys.readouterr()
    assert main(["recover", "--run", str(run), "--name", "enc", "--budget", "10", *RECOVER]) == 0
    first = json.loads(capsys.readouterr().out)
    before = {p: p.read_bytes() for p in (run / "recoveries" / "enc").rglob("*") if p.is_file()}
    assert main(["recover", "--run", str(run), "--name", "none", "--projection", "none", "--budget", "10", *RECOVER]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["name"] == "enc" and second["name"] == "none" and first["dir"] != second["dir"]
    # the first record is byte-for-byte untouched, and the two differ in what they found
    assert {p: p.read_bytes() for p in (run / "recoveries" / "enc").rglob("*") if p.is_file()} == before
    assert [r["drift"] for r in _records(run / "recoveries" / "enc")] != [r["drift"] for r in _records(run / "recoveries" / "none")]
    assert {r.name for r in list_records(run)} >= {"enc", "none"}
    # the same name again is refused, and nothing is overwritten
    assert main(["recover", "--run", str(run), "--name", "enc", *RECOVER]) == 2
    assert "already has a recovery named 'enc'" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (run / "recoveries" / "enc").rglob("*") if p.is_file()} == before
    # a generated name says projection and budget
    assert main(["recover", "--run", str(run), "--budget", "7", *RECOVER]) == 0
    assert json.loads(capsys.readouterr().out)["name"].startswith("encoder-b7-")


def test_resume_with_other_settings_names_the_setting(run, capsys):
    assert main(["recover", "--run", str(run), "--name", "enc", "--resume", "--budget", "3", *RECOVER]) == 2
    err = capsys.readouterr().err
    assert "cannot resume recovery 'enc'" in err and "budget: 10.0 there, 3.0 now" in err
    assert main(["recover", "--run", str(run), "--name", "enc", "--resume", "--budget", "10", *RECOVER]) == 0  # complete: no-op
    assert len(_records(run / "recoveries" / "enc")) == 4


def test_a_record_saved_before_a_setting_existed_resumes_as_that_settings_old_behaviour(run, capsys):
    """A record written before gn_damping_decay existed ran with a constant damping (decay 1): it resumes under the
    default, and a resume with another decay is still refused."""
    shutil.copytree(run / "recoveries" / "enc", run / "recoveries" / "old")
    cfg_path = run / "recoveries" / "old" / "recovery_config.json"
    saved = json.loads(cfg_path.read_text())
    assert saved.pop("gn_damping_decay") == 1.0
    # the complete record is relabelled a Jacobian one (the resume is then a no-op), where the damping decay matters
    jac = ["--projection", "jacobian", "--budget", "10", *RECOVER]
    cfg_path.write_text(json.dumps({**saved, "name": "old", "projection": "jacobian", "effective_drift_penalty": 200.0}))
    assert main(["recover", "--run", str(run), "--name", "old", "--resume", *jac]) == 0
    assert main(["recover", "--run", str(run), "--name", "old", "--resume", "--gn-damping-decay", "0.5", *jac]) == 2
    assert "gn_damping_decay: 1.0 there, 0.5 now" in capsys.readouterr().err


def test_a_resume_may_change_settings_the_projection_never_reads(run, capsys):
    """The `none` baseline reads no Jacobian setting, so a record started under other Jacobian defaults resumes; a
    setting it does read (the budget) is still checked, and a Jacobian record is held to every Jacobian setting."""
    records = run / "recoveries"
    assert main(["recover", "--run", str(run), "--name", "base", "--projection", "none", "--budget", "10",
                 "--correction-steps", "3", "--limit", "2", *RECOVER]) == 0
    full = ["recover", "--run", str(run), "--name", "base", "--resume", "--projection", "none", "--limit", "2", *RECOVER]
    assert main([*full, "--budget", "10", "--correction-steps", "6", "--gn-damping", "0.1"]) == 0
    assert main([*full, "--budget", "9", "--correction-steps", "6"]) == 2
    assert "budget: 10.0 there, 9.0 now" in capsys.readouterr().err
    assert json.loads((records / "base" / "recovery_config.json").read_text())["correction_steps"] == 3  # unchanged
    assert json.loads((records / "base" / "recovery_summary.json").read_text())["config"]["correction_steps"] == 3  # and here
    jac = ["recover", "--run", str(run), "--projection", "jacobian", "--budget", "10", "--limit", "1", *RECOVER]
    assert main([*jac, "--name", "jac", "--correction", "adam", "--gn-damping", "0.1"]) == 0
    assert main([*jac, "--name", "jac", "--resume", "--correction", "adam", "--gn-damping", "0.5"]) == 0  # adam: unread
    assert main([*jac, "--name", "jac", "--resume", "--correction", "adam", "--correction-lr", "0.5"]) == 2
    assert "correction_lr: 0.05 there, 0.5 now" in capsys.readouterr().err


def test_bad_record_names_are_refused(run, capsys):
    for bad in ("../x", "a/b", ".hidden"):
        assert main(["recover", "--run", str(run), "--name", bad, *RECOVER]) == 2
        assert "not a usable recovery name" in capsys.readouterr().err
    assert not (run / "x").exists()


def test_flat_layout_migrates_on_read(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "flips.jsonl").write_text(json.dumps({"id": 0, "valid": True}) + "\n")
    files = {
        "recovery.jsonl": json.dumps({"id": 0, "drift": 0.0}) + "\n",
        "recovery_summary.json": json.dumps({"n_valid": 1}),
        "recovery_config.json": json.dumps({"projection": "none", "budget": 40.0, "delta_layer": 1}),
        "deltas/0.safetensors": "tensor bytes",
        "attribution.jsonl": json.dumps({"id": 0}) + "\n",
        "attribution_summary.json": json.dumps({"n": 1}),
        "sweep.json": json.dumps({"budgets": [0.0, 5.0], "projection": "encoder", "points": [{"budget": 0.0}, {"budget": 5.0}]}),
        "sweep/budget_0/recovery.jsonl": "",
        "sweep/budget_5/recovery.jsonl": "",
    }
    for rel, text in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    records = {r.name: r for r in list_records(run)}
    assert set(records) == {"legacy-none-b40", "legacy-sweep-encoder"}
    rec, sweep = records["legacy-none-b40"], records["legacy-sweep-encoder"]
    for rel in ("recovery.jsonl", "recovery_summary.json", "deltas/0.safetensors", "attribution.jsonl", "attribution_summary.json"):
        assert (rec.path / rel).read_text() == files[rel] and not (run / rel).exists()
    assert rec.config["projection"] == "none" and rec.config["flip_ids"] == [0] and rec.config["valid"] == "judge"
    assert rec.kind == "recovery" and rec.has_attribution and rec.complete
    assert sweep.kind == "sweep" and (sweep.path / "budget_5" / "recovery.jsonl").is_file() and not (run / "sweep").exists()
    assert sweep.complete and sweep.summary["points"][1]["budget"] == 5.0
    assert migrate_flat_layout(run) == []  # idempotent


def test_migration_stopped_half_way_finishes_into_the_same_record(tmp_path):
    run = tmp_path / "half"
    (run / "recoveries" / "legacy-encoder-b40").mkdir(parents=True)
    (run / "recoveries" / "legacy-encoder-b40" / "recovery.jsonl").write_text(json.dumps({"id": 3}) + "\n")  # moved already
    (run / "recovery_summary.json").write_text(json.dumps({"n_valid": 1}))
    (run / "recovery_config.json").write_text(json.dumps({"projection": "encoder", "budget": 40}))  # the config moves last
    [record] = list_records(run)
    assert record.name == "legacy-encoder-b40" and record.config["flip_ids"] == [3]
    assert (record.path / "recovery_summary.json").is_file() and not (run / "recovery_config.json").exists()


def test_whole_batches_keep_only_finished_batches():
    done = [{"id": i} for i in (0, 1, 2, 3, 4)]
    assert whole_batches(done, [0, 1, 2, 3, 4, 5, 6], 2) == 4  # the half-written batch (4, 5) is redone
    assert whole_batches(done, [0, 1, 2, 3, 4], 2) == 5  # all done: the last, short batch is whole
    assert whole_batches(done, [0, 1, 9, 3], 1) == 2  # another flip list: only the matching prefix


def test_jsonl_writer_never_overwrites(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(LabError, match="already exists"):
        JsonlWriter(path)
    with JsonlWriter(path, append=True) as w:
        w.write({"a": 2})
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    with path.open("a") as fh:
        fh.write('{"a": 3, "tor')  # a write cut short by a kill
    assert read_jsonl(path, torn_tail=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(LabError, match="line 3 is not valid JSON"):
        read_jsonl(path)


def test_flips_refuses_an_existing_run_without_resume(run, capsys):
    before = (run / "flips.jsonl").read_bytes()
    assert main([*FLIPS, "--limit", "4", "--max-new-tokens", "8", "--out", str(run)]) == 2
    assert "already holds a flips run" in capsys.readouterr().err
    assert (run / "flips.jsonl").read_bytes() == before
    assert main([*FLIPS, "--limit", "3", "--max-new-tokens", "8", "--out", str(run), "--resume"]) == 2
    assert "limit: 4 there, 3 now" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the valid set


def test_valid_choice_follows_the_labels(tmp_path, run, capsys):
    labelled = tmp_path / "labelled"
    shutil.copytree(run, labelled, ignore=shutil.ignore_patterns("recoveries"))
    assert main(["recover", "--run", str(labelled), "--valid", "genuine", *RECOVER]) == 2
    assert "0 of its 4 flips are labelled, 0 of them 'genuine'" in capsys.readouterr().err
    labels.set_label(labelled, 1, "not", labeller="a")
    labels.set_label(labelled, 2, "genuine", labeller="a")
    labels.set_label(labelled, 3, "genuine", labeller="a")
    labels.set_label(labelled, 3, "not", labeller="b")  # a tie is 'unsure': neither kept by genuine nor dropped by labels
    assert [f["id"] for f in valid_flips(labelled, valid="labels")] == [0, 2, 3]
    assert [f["id"] for f in valid_flips(labelled, valid="genuine")] == [2]
    assert valid_counts(labelled) == {"judge": 4, "labels": 3, "genuine": 1}
    assert main(["recover", "--run", str(labelled), "--name", "g", "--valid", "genuine", *RECOVER]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] == "genuine" and out["n_valid"] == 1
    assert [r["id"] for r in _records(labelled / "recoveries" / "g")] == [2]
    assert get_record(labelled, "g").config["valid"] == "genuine"
    assert main(["recover", "--run", str(labelled), "--name", "l", "--valid", "labels", *RECOVER]) == 0
    assert [r["id"] for r in _records(labelled / "recoveries" / "l")] == [0, 2, 3]
    assert main(["sweep", "--run", str(labelled), "--valid", "genuine", "--budgets", "0", *RECOVER]) == 0
    capsys.readouterr()
    sweep = get_record(labelled, None, "sweep")
    assert sweep.summary["points"][0]["n_valid"] == 1 and sweep.config["valid"] == "genuine"
    assert main(["recover", "--run", str(labelled), "--valid", "maybe", *RECOVER]) == 2


# ------------------------------------------------------------------------------------------------ SIGKILL, then resume


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, path: Path, n_lines: int, timeout: float = 300) -> int:
    """SIGKILL ``proc`` once ``path`` holds ``n_lines`` records; returns how many it held at the kill."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if path.is_file() and path.read_text().count("\n") >= n_lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before the kill: {proc.stderr.read()[-2000:]}"
    return path.read_text().count("\n")


def _finish(*args: str) -> None:
    proc = _cli(*args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def test_sigkill_then_resume_equals_an_uninterrupted_flips_run(tmp_path):
    args = [*FLIPS, "--limit", "10", "--max-new-tokens", "48", "--batch-size", "2"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    at_kill = _kill_after(_cli(*args, "--out", str(killed)), killed / "flips.jsonl", 3)
    assert 3 <= at_kill < 10
    _finish(*args, "--out", str(killed), "--resume")
    _finish(*args, "--out", str(whole))
    assert read_jsonl(killed / "flips.jsonl") == read_jsonl(whole / "flips.jsonl")  # nothing lost, nothing twice
    assert json.loads((killed / "summary.json").read_text()) == json.loads((whole / "summary.json").read_text())


def test_sigkill_then_resume_equals_an_uninterrupted_recovery(tmp_path, run):
    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("recoveries"))
    rec = ["recover", "--run", str(work), "--steps", "150", "--max-new-tokens", "4", "--answer-tokens", "8", "--batch-size", "1"]
    at_kill = _kill_after(_cli(*rec, "--name", "killed"), work / "recoveries" / "killed" / "recovery.jsonl", 1)
    assert 1 <= at_kill < 4
    _finish(*rec, "--name", "killed", "--resume")
    _finish(*rec, "--name", "whole")
    killed, whole = get_record(work, "killed"), get_record(work, "whole")
    assert _records(killed.path) == _records(whole.path)
    assert killed.summary == whole.summary and killed.complete
    assert sorted(p.name for p in (killed.path / "deltas").iterdir()) == sorted(p.name for p in (whole.path / "deltas").iterdir())


def test_a_flips_run_resumes_from_its_own_files(tmp_path, tiny_lm):
    """Cancelled after the first batch, then resumed with nothing but the run folder: the same run as in one go."""
    import threading

    from engine.lm.sae_sources import load_sae
    from engine.method.clamp import ClampSpec
    from engine.method.flips import resume_flips_run, write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.prompts import load_prompts

    specs = [ClampSpec(load_sae("tiny", tiny_lm), [0, 1, 2], "set", [8.0])]
    prompts = load_prompts("builtin:harmless", 5)
    gen = GenerationConfig(max_new_tokens=6, batch_size=2)
    settings = {"model": "tiny", "prompts": "builtin:harmless", "limit": 5}
    stop = threading.Event()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    part = write_flips_run(tiny_lm, specs, prompts, gen, JudgeConfig(), tmp_path / "a", settings, stop, lambda row: stop.set())
    assert part["cancelled"] and part["n_prompts"] == 2
    resumed = resume_flips_run(tmp_path / "a", tiny_lm)
    whole = write_flips_run(tiny_lm, specs, prompts, gen, JudgeConfig(), tmp_path / "b", settings)
    assert resumed == whole and not resumed["cancelled"]
    assert read_jsonl(tmp_path / "a" / "flips.jsonl") == read_jsonl(tmp_path / "b" / "flips.jsonl")
    (tmp_path / "a" / "prompts.json").unlink()
    with pytest.raises(LabError, match="does not hold its prompts"):
        resume_flips_run(tmp_path / "a", tiny_lm)


def test_a_cancelled_sweep_resumes_to_the_uninterrupted_result(tmp_path, run, tiny_lm):
    import threading

    from engine.recovery.config import RecoveryConfig
    from engine.recovery.sweep import run_sweep

    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("recoveries"))
    cfg = RecoveryConfig(steps=3, max_new_tokens=4, answer_tokens=8, batch_size=1)
    stop, seen = threading.Event(), []

    def on_event(ev) -> None:  # budget 0 has no steps; stop in budget 2, on its second prompt (4 events a prompt)
        seen.append(ev)
        if len(seen) == 6:
            stop.set()

    part = run_sweep(work, [0, 2, 5], cfg, lm=tiny_lm, on_event=on_event, cancel=stop, name="s")
    assert [p["budget"] for p in part["points"]] == [0.0]
    resumed = run_sweep(work, [0, 2, 5], cfg, lm=tiny_lm, name="s", resume=True)
    whole = run_sweep(work, [0, 2, 5], cfg, lm=tiny_lm, name="w")
    assert resumed["points"] == whole["points"] and get_record(work, "s", "sweep").complete
    for b in ("budget_0", "budget_2", "budget_5"):
        assert _records(work / "recoveries" / "s" / b) == _records(work / "recoveries" / "w" / b)
    with pytest.raises(LabError, match="budgets"):
        run_sweep(work, [0, 2], cfg, lm=tiny_lm, name="s", resume=True)


def test_a_sweep_saved_before_a_setting_existed_resumes(tmp_path, run, tiny_lm):
    """The sweep's record and each budget point's config, written before gn_damping_decay existed, resume under the
    value that reproduces them; another value is refused."""
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.sweep import run_sweep

    work = tmp_path / "run"
    shutil.copytree(run, work, ignore=shutil.ignore_patterns("recoveries"))
    cfg = RecoveryConfig(projection="jacobian", steps=2, max_new_tokens=4, answer_tokens=8, batch_size=2)
    first = run_sweep(work, [2], cfg, lm=tiny_lm, name="s", limit=2)
    for path in (work / "recoveries" / "s" / "recovery_config.json", work / "recoveries" / "s" / "budget_2" / "recovery_config.json"):
        saved = json.loads(path.read_text())
        assert saved.pop("gn_damping_decay") == 1.0
        path.write_text(json.dumps(saved))
    assert run_sweep(work, [2], cfg, lm=tiny_lm, name="s", limit=2, resume=True)["points"] == first["points"]
    with pytest.raises(LabError, match="gn_damping_decay: 1.0 there, 0.5 now"):
        run_sweep(work, [2], dataclasses.replace(cfg, gn_damping_decay=0.5), lm=tiny_lm, name="s", limit=2, resume=True)


def test_a_cancelled_attribution_resumes_and_is_never_run_twice(tmp_path, tiny_lm, capsys):
    import threading

    from engine.attribution.driver import run_attribution

    work = tmp_path / "six"
    assert main([*FLIPS, "--limit", "6", "--max-new-tokens", "8", "--out", str(work)]) == 0
    _all_valid(work)
    assert main(["recover", "--run", str(work), "--name", "r", *RECOVER]) == 0
    stop = threading.Event()
    part = run_attribution(work, 3, lm=tiny_lm, cancel=stop, on_record=lambda rec: stop.set(), recovery="r")
    assert part["cancelled"] and part["n"] == 4  # the first batch of 4 finished, then the cancel was seen
    with pytest.raises(LabError, match="already has an attribution"):
        run_attribution(work, 3, lm=tiny_lm, recovery="r")
    with pytest.raises(LabError, match="top_k: 3 there, 4 now"):
        run_attribution(work, 4, lm=tiny_lm, recovery="r", resume=True)
    done = run_attribution(work, 3, lm=tiny_lm, recovery="r", resume=True)
    assert not done["cancelled"] and done["n"] == 6
    ids = [r["id"] for r in read_jsonl(work / "recoveries" / "r" / "attribution.jsonl")]
    assert ids == [0, 1, 2, 3, 4, 5]  # nothing twice, nothing lost


def test_an_interrupted_recovery_counts_its_finished_prompts_in_the_picker(tmp_path):
    """A recovery killed after its first batch has rows but no summary yet: the picker says 2/5, not 0/5."""
    from engine.store.records import create_record
    from ui.records import describe

    run = tmp_path / "r"
    run.mkdir()
    (run / "flips.jsonl").write_text("")
    path = create_record(run, "half", "recovery", {"projection": "jacobian", "budget": 40.0, "valid": "judge",
                                                    "limit": None, "flip_ids": list(range(5))})
    (path / "recovery.jsonl").write_text('{"id": 0}\n{"id": 1}\n')
    record = get_record(run, "half", "recovery")
    assert record.summary is None and record.n_finished == 2
    assert " 2/5 · interrupted" in describe(record)
