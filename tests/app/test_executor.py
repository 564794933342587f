"""The sidebar's executor: an unreachable Ray address is refused before a job exists; a Ray job streams its
per-step events to the page like a local job and writes the same records."""

from __future__ import annotations

import pytest

from engine.services import jobs
from engine.store import catalogue
from tests.app.apphelpers import add_recovery, goto, make_flips_run, new_app, problems, wait_job


def _ray_sidebar(at, address: str = "") -> None:
    at.sidebar.radio(key="executor").set_value("ray").run()
    at.sidebar.text_input(key="ray_address").input(address).run()


def test_an_unreachable_ray_address_is_refused_before_a_job(lab_env):
    pytest.importorskip("ray")
    make_flips_run(lab_env, "tiny-run", n=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    _ray_sidebar(at, "127.0.0.1:9")
    before = {j.id for j in jobs.find_jobs()}
    at.text_input(key="rec_steps").input("2").run()
    at.button(key="start_recovery").click().run()
    assert any("no Ray cluster answers at 127.0.0.1:9" in e.value and "sidebar" in e.value for e in at.error)
    assert {j.id for j in jobs.find_jobs()} == before


def test_a_recovery_job_on_a_local_ray_cluster_streams_events_and_matches_local(lab_env):
    ray = pytest.importorskip("ray")
    run = make_flips_run(lab_env, "tiny-run", n=2)
    local = add_recovery(run, steps=3, batch_size=1)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    _ray_sidebar(at)
    at.sidebar.number_input(key="ray_workers").set_value(2).run()
    at.text_input(key="rec_steps").input("3").run()
    at.text_input(key="rec_max_new").input("4").run()
    at.text_input(key="rec_answer_tokens").input("8").run()
    at.text_input(key="rec_batch").input("1").run()
    at.text_input(key="rec_name").input("on-ray").run()
    at.button(key="start_recovery").click().run()
    job = wait_job("recovery", timeout=600)
    try:
        assert job.status == "done", job.error
        assert job.n_events >= 2 * 4  # every step of both prompts, streamed from the workers
        at.run()
        assert not problems(at)
        assert catalogue.read_records("tiny-run", "recovery.jsonl", "on-ray") == \
            catalogue.read_records("tiny-run", "recovery.jsonl", local["name"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
