"""The dashboard's engine-side helpers, without streamlit: jobs, hand labels, the run store."""

from __future__ import annotations

import csv
import io
import threading
import time
import zipfile

import pytest
import torch

from engine.errors import LabError
from engine.services import jobs
from engine.store import catalogue, label_csv, labels
from tests.app.apphelpers import add_attribution_records, make_flips_run

# ------------------------------------------------------------------------------------------------ jobs


def test_job_runs_in_background_with_grad_and_events():
    seen = {}

    def work(job):
        seen["grad"] = torch.is_grad_enabled()
        seen["thread"] = threading.current_thread().name
        for i in range(3):
            job.log({"step": i})
            job.set_progress(i + 1, 3)
        return "ok"

    with torch.no_grad():  # the caller's grad mode must not leak into the worker
        job = jobs.start_job("unit", work, meta={"run": "r1"})
    assert job.wait(10)
    assert job.status == "done" and job.result == "ok"
    assert seen["grad"] is True and seen["thread"] != threading.current_thread().name
    assert [e["step"] for e in job.events()] == [0, 1, 2]
    assert job.events(since=2) == [{"step": 2}]
    assert job.progress == (3, 3)


def test_job_registry_reattach_by_id_and_meta():
    gate = threading.Event()
    job = jobs.start_job("unit-reattach", lambda j: gate.wait(10), meta={"run": "abc"})
    try:
        assert jobs.get_job(job.id) is job
        assert jobs.latest_job("unit-reattach", run="abc") is job
        assert jobs.find_jobs("unit-reattach", running_only=True, run="abc") == [job]
        assert jobs.find_jobs("unit-reattach", run="other") == []
    finally:
        gate.set()
        job.wait(10)


def test_job_cancel_is_honoured():
    def work(job):
        while not job.cancel.is_set():
            time.sleep(0.01)
        return "stopped"

    job = jobs.start_job("unit-cancel", work)
    job.request_cancel()
    assert job.wait(5)
    assert job.status == "cancelled"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (LabError("run directory x has no flips.jsonl"), "run directory x has no flips.jsonl"),
        (MemoryError(), "out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory"),
        (ValueError("boom"), "internal error (ValueError: boom)"),
    ],
)
def test_failed_job_has_one_clear_line(exc, expected):
    def work(job):
        raise exc

    job = jobs.start_job("unit-fail", work)
    assert job.wait(5)
    assert job.status == "failed"
    assert expected in job.error
    assert "\n" not in job.error


def test_event_log_is_bounded(monkeypatch):
    monkeypatch.setattr(jobs, "MAX_EVENTS", 10)
    job = jobs.Job(kind="x")
    for i in range(25):
        job.log({"i": i})
    assert job.n_events == 25
    assert [e["i"] for e in job.events()] == list(range(15, 25))
    assert [e["i"] for e in job.events(since=20)] == [20, 21, 22, 23, 24]


# ------------------------------------------------------------------------------------------------ labels


def test_bad_label_is_refused(lab_env):
    with pytest.raises(LabError, match="unknown label"):
        labels.set_label("run-a", 1, "maybe")


def test_label_export_has_judge_columns_and_filled_manual_audit_label(lab_env):
    make_flips_run(lab_env, "run-x", n=3)
    labels.set_label("run-x", 1, "genuine", "ok")
    rows = list(csv.DictReader(io.StringIO(label_csv.export_csv("run-x", catalogue.read_records("run-x", "flips.jsonl")))))
    assert list(rows[0]) == label_csv.EXPORT_COLUMNS
    assert [r["manual_audit_label"] for r in rows] == ["", "genuine", ""]
    assert rows[1]["manual_audit_note"] == "ok"
    assert "refusal_statement" in rows[1]["clamped_reasons"]


# ------------------------------------------------------------------------------------------------ run store


def test_list_open_compare_delete(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=3, valid=False)
    names = [r.name for r in catalogue.list_runs()]
    assert set(names) == {"run-a", "run-b"}
    info = catalogue.get_run("run-a")
    assert info.has_flips and not info.has_recovery
    from ui.run_views import run_row

    assert run_row(info)["valid flips"] == 2
    diff = {r["field"]: r for r in catalogue.compare_runs("run-a", "run-b")}
    assert diff["flips.n_valid"]["a"] == 2 and diff["flips.n_valid"]["b"] == 0 and not diff["flips.n_valid"]["same"]
    assert diff["config.model"]["same"]
    labels.set_label("run-a", 0, "genuine")
    entry = catalogue.delete_run("run-a")
    assert [r.name for r in catalogue.list_runs()] == ["run-b"]
    assert (entry.content / "labels.jsonl").is_file()  # the labels went to the trash with the run


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 200])
def test_run_names_cannot_escape_the_store(lab_env, name):
    with pytest.raises(LabError):
        catalogue.get_run(name)


def test_export_zip_has_json_csv_parquet_deltas_and_labels(lab_env):
    run = make_flips_run(lab_env, "run-z", n=2)
    add_attribution_records(run, n=2)
    record = run / "recoveries" / "hand"
    (record / "deltas").mkdir()
    (record / "deltas" / "0.safetensors").write_bytes(b"not really tensors")
    labels.set_label("run-z", 0, "not", "n")
    data = catalogue.export_zip("run-z")
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = set(zf.namelist())
    for expected in ("run-z/config.json", "run-z/flips.jsonl", "run-z/flips.csv", "run-z/flips.parquet",
                     "run-z/recoveries/hand/attribution.jsonl", "run-z/recoveries/hand/attribution.parquet",
                     "run-z/recoveries/hand/deltas/0.safetensors", "run-z/labels.csv"):
        assert expected in names
    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(zf.read("run-z/flips.parquet")))
    assert len(frame) == 2 and "clamped_text" in frame
    assert "not" in zf.read("run-z/labels.csv").decode()


def test_new_run_dirs_are_unique(lab_env):
    a, b = catalogue.new_run_dir("flips"), catalogue.new_run_dir("flips")
    assert a != b and a.is_dir() and b.is_dir()


def test_write_flips_run_matches_the_cli_layout(lab_env, tmp_path, capsys):
    """The dashboard's flips run and the CLI's are the same files: same records, same config but for who wrote it."""
    from engine.cli.main import main
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.flips import write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.presets import resolve_clamp
    from engine.method.prompts import load_prompts
    from engine.store.context import open_run
    from engine.store.files import read_json, read_jsonl

    cli_run = tmp_path / "cli"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "3", "--model", "tiny", "--sae", "tiny", "--features", "1,2",
                 "--value", "4", "--max-new-tokens", "3", "--out", str(cli_run)]) == 0, capsys.readouterr().err
    lm = load_model("tiny", "cpu")
    spec = resolve_clamp(load_sae("tiny", lm), "1,2", None, 4.0)
    page_run = catalogue.new_run_dir("flips")
    seen = []
    settings = {"model": "tiny", "prompts": "builtin:harmless", "limit": 3, "source": "dashboard"}
    summary = write_flips_run(lm, [spec], load_prompts("builtin:harmless", 3), GenerationConfig(max_new_tokens=3, batch_size=8),
                              JudgeConfig(), page_run, settings, on_record=seen.append)
    assert summary["n_prompts"] == 3 and len(seen) == 3
    assert sorted(p.name for p in page_run.iterdir()) == sorted(p.name for p in cli_run.iterdir())
    assert read_jsonl(page_run / "flips.jsonl") == read_jsonl(cli_run / "flips.jsonl")
    assert read_json(page_run / "summary.json") == read_json(cli_run / "summary.json")
    cfg_page, cfg_cli = read_json(page_run / "config.json"), read_json(cli_run / "config.json")
    differ = {k for k in cfg_page.keys() | cfg_cli.keys() if cfg_page.get(k) != cfg_cli.get(k)}
    assert differ == {"created", "source"}, differ
    ctx = open_run(page_run, lm=lm)  # the recovery engine can continue it
    assert ctx.specs[0].features == [1, 2]
