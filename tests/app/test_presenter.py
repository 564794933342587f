"""Presenter mode (AppTest, tiny model): it opens on the newest run with something to replay, draws presenter-sized
charts, and a reload mid-replay continues from the step kept in the URL."""

from __future__ import annotations

import json
import time

from streamlit.testing.v1 import AppTest

from engine.store import catalogue
from tests.app.apphelpers import ENTRY, add_attribution_records, add_recovery, goto, make_flips_run, new_app, problems


def _runs(data) -> str:
    """old: a real recovery; newer: flips only; newest: a recovery record with nothing in it. Returns old's record."""
    old = make_flips_run(data, "run-old", n=2)
    add_recovery(old, steps=4)
    time.sleep(0.01)
    make_flips_run(data, "run-newer", n=2)
    time.sleep(0.01)
    add_attribution_records(make_flips_run(data, "run-newest", n=2), n=2)  # its record's recovery.jsonl is empty
    return catalogue.get_run("run-old").record().name


def _presenter(at, run: str | None = "run-newest"):
    if run:
        at.session_state["run"] = run
    at.session_state["presenter"] = True
    return goto(at, "recovery")


def _axis_sizes(at) -> set:
    specs = [json.loads(c.proto.spec) for c in at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")]
    return {(s.get("config", {}).get("axis") or {}).get("labelFontSize") for s in specs}


def test_presenter_opens_on_the_newest_run_with_something_to_replay(lab_env):
    record = _runs(lab_env)
    at = _presenter(new_app())  # the session's run (the newest) has a recovery record, but nothing in it
    assert not problems(at)
    assert at.selectbox(key="replay_run:run-old").value == "run-old"
    assert at.selectbox(key="replay_run:run-old").options == ["run-old"]  # runs with nothing to replay are not offered
    assert any("Replay of `run-old`" in h.value for h in at.header)
    assert at.session_state["run"] == "run-old"
    assert at.selectbox(key="replay_record:run-old").value == record
    assert not [b for b in at.button if b.key == "start_recovery"]  # settings hidden
    assert _axis_sizes(at) == {18}  # large axes on every chart


def test_a_reload_mid_replay_continues_from_the_url(lab_env):
    record = _runs(lab_env)
    at = _presenter(new_app(), run=None)
    at.button(key="replay_restart").click().run()
    at.button(key="replay_play").click().run()
    at.run()  # AppTest does not fire run_every: each run is one frame
    step = at.session_state[f"replay_step:run-old:{record}"]
    assert 1 <= step < 5
    params = dict(at.query_params)
    assert params["replay_record"] == record and params["replay_step"] == str(step) and params["replay_playing"] == "1"
    assert params["run"] == "run-old"
    # the reload: a new session on the same address (presenter=true is in it too: the sidebar toggle is bound to it)
    fresh = AppTest.from_file(ENTRY, default_timeout=120)
    fresh.query_params.update({**params, "presenter": "true"})
    fresh.switch_page("app_pages/recovery.py")
    fresh.run()
    assert not problems(fresh)
    assert fresh.session_state["presenter"] is True
    assert fresh.session_state[f"replay_step:run-old:{record}"] == step + 1  # it goes on playing from there
    assert any(f"step {step + 1} of 5" in p.proto.text for p in fresh.get("progress"))
    # a bad step in the URL starts at the end instead of failing
    bad = AppTest.from_file(ENTRY, default_timeout=120)
    bad.query_params.update({**params, "presenter": "true", "replay_step": "abc", "replay_playing": "0"})
    bad.switch_page("app_pages/recovery.py")
    bad.run()
    assert not problems(bad) and bad.session_state[f"replay_step:run-old:{record}"] == 5


def test_presenter_without_anything_to_replay_says_so(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    at = _presenter(new_app(), run="run-a")
    assert not at.exception
    assert any("No run has a recovery to replay" in i.value for i in at.info)
