"""Honest progress in the pages: the engine's phase and units in the status line, base answers streamed before their
clamped batch ends, and a real flips job whose progress counts answers."""

from __future__ import annotations

import threading

from engine.services import jobs
from engine.services.progress import ProgressEvent
from tests.app.apphelpers import goto, problems, wait_job


def _held_job(kind: str, events: list[ProgressEvent], meta: dict | None = None):
    """A running job that reports ``events`` and then waits until released (so the page sees it mid-run)."""
    release, reported = threading.Event(), threading.Event()

    def work(j: jobs.Job):
        for ev in events:
            j.report(ev)
        reported.set()
        release.wait(60)

    job = jobs.start_job(kind, work, meta=meta or {})
    assert reported.wait(10)
    return job, release


def test_flips_page_streams_base_answers_while_the_clamped_batch_runs(app):
    pending = [{"id": 0, "prompt": "What is rain?", "base_text": "Rain is water falling from clouds.", "base_refusal": False,
                "base_reasons": []}]
    job, release = _held_job("flips", [ProgressEvent("base answers", 0, 4, "answers", "batch 1/2"),
                                       ProgressEvent("clamped answers", 1, 4, "answers", "batch 1/2", pending)],
                             meta={"run": "streaming-run"})
    try:
        goto(app, "flips")
        assert not problems(app), problems(app)
        status = [p.proto.text for p in app.get("progress")]
        assert any("flips — clamped answers" in t and "1/4 answers" in t and "batch 1/2" in t for t in status), status
        texts = [m.value for m in app.markdown]
        assert any("What is rain?" in t for t in texts)
        assert any("generating the clamped answer" in c.value for c in app.caption)
        assert any("refusal ✗" in t for t in texts)  # the base answer is already judged and explained
    finally:
        release.set()
        job.wait(10)


def test_recovery_status_shows_the_engines_phase_not_a_stale_label(app, lab_env):
    from tests.app.apphelpers import make_flips_run

    make_flips_run(lab_env, "tiny-run", n=2)
    job, release = _held_job("recovery", [ProgressEvent("preparing", 0, 8, "steps", "batch 1/1"),
                                          ProgressEvent("optimising", 8, 8, "steps", "prompt #1, step 4/4"),
                                          ProgressEvent("generating recovered answers", 8, 8, "steps", "batch 1/1")],
                             meta={"run": "tiny-run", "delta_layer": None, "record": None})
    try:
        goto(app, "recovery")
        status = [p.proto.text for p in app.get("progress")]
        assert any("recovery — generating recovered answers" in t and "8/8 steps" in t for t in status), status
        assert not any("preparing" in t for t in status)
    finally:
        release.set()
        job.wait(10)


def test_a_real_flips_job_counts_answers_and_ends_with_every_record(app):
    goto(app, "features")
    app.text_input(key="index_text").input("1, 2, 3")
    app.button(key="index_add").click().run()
    goto(app, "flips")
    app.radio(key="flips_source").set_value("Type prompts").run()
    app.text_area(key="flips_typed").input("hello\nwhat is rain?\nname a tree").run()
    app.text_input(key="flips_max_new").input("3")
    app.text_input(key="flips_batch").input("2")
    app.button(key="start_flips").click().run()
    job = wait_job("flips")
    assert job.status == "done", job.error
    assert job.progress == (6, 6) and job.unit == "answers"  # 3 prompts × (base + clamped)
    assert [p["id"] for p in job.partial] == [0, 1, 2]  # every base answer was streamed before its record
    assert [e["id"] for e in job.events()] == [0, 1, 2]
