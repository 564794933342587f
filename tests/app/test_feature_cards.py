"""AppTests for feature cards (issue 15, items 1–3) on the tiny model: the precompute job shows progress, a card opens
from the contrast results, the clamp editor and the attribution top-k table, and the per-prompt heat-map renders."""

from __future__ import annotations

import threading

import pytest

from tests.app.apphelpers import add_attribution_records, goto, make_flips_run, new_app, problems, wait_job

KIND = "feature cards"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cards") / "cache"


@pytest.fixture(autouse=True)
def card_cache(request, tmp_path, monkeypatch, shared_cache):
    """A private user cache for the precompute tests (they start with no store); one cache shared by the link tests,
    so the tiny store is computed once per module."""
    cache = tmp_path / "cache" if "precompute" in request.node.name else shared_cache
    monkeypatch.setenv("SAE_LAB_CACHE", str(cache))
    return cache


def _card_shown(at, feature: int) -> bool:
    return any(f"**Feature {feature}**" in m.value and "corpus tokens" in m.value for m in at.markdown)


def _precompute(at) -> None:
    """Open a card on the Features page (first use starts the precompute, once per module), wait for the job, rerun."""
    goto(at, "features")
    at.button(key="card_go").click().run()
    from engine.services import jobs

    job = jobs.latest_job(KIND)
    if job is not None and job.running:
        assert job.wait(180) and job.status == "done", job.error
    at.run()


def test_precompute_job_shows_progress_then_the_card(monkeypatch):
    from engine.features import card_precompute

    gate = threading.Event()
    real = card_precompute._acts_chunk

    def held(*args, **kwargs):  # the first chunk waits until the test has seen the progress
        gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(card_precompute, "_acts_chunk", held)
    at = new_app()
    goto(at, "features")
    assert any("not computed yet" in c.value for c in at.caption)  # the store's state, before any card is asked for
    at.text_input(key="card_feature").input("5")
    at.button(key="card_go").click().run()
    bars = at.get("progress")
    assert bars and KIND in bars[0].proto.text, [b.proto.text for b in bars]
    assert at.button(key="card_cancel_cards")  # cancellable while it runs
    gate.set()
    job = wait_job(KIND, timeout=180)
    assert job.status == "done", job.error
    at.run()
    assert _card_shown(at, 5), [m.value for m in at.markdown]
    assert not problems(at)


def test_cancelled_precompute_offers_resume():
    at = new_app()
    goto(at, "features")
    from engine.features import card_precompute

    gate = threading.Event()
    real = card_precompute._acts_chunk

    def held(*args, **kwargs):
        gate.wait(60)
        return real(*args, **kwargs)

    card_precompute._acts_chunk = held
    try:
        at.button(key="card_go").click().run()
        from engine.services import jobs

        job = jobs.latest_job(KIND)
        job.request_cancel()
        gate.set()
        assert job.wait(120) and job.status == "cancelled"
    finally:
        card_precompute._acts_chunk = real
    at.run()
    assert at.button(key="card_precompute").label == "Resume the precompute"
    at.button(key="card_precompute").click().run()
    assert wait_job(KIND, timeout=180).status == "done"
    at.run()
    assert not problems(at)


def test_card_opens_from_contrast_results():
    at = new_app()
    _precompute(at)
    at.session_state["contrast_rows:tiny"] = [
        {"feature": 11, "diff": 0.5, "refusal_mean": 1.0, "answer_mean": 0.5, "refusal_freq": 0.2, "answer_freq": 0.1},
        {"feature": 3, "diff": 0.4, "refusal_mean": 0.9, "answer_mean": 0.5, "refusal_freq": 0.2, "answer_freq": 0.1},
    ]
    at.run()
    at.selectbox(key="contrast_card_pick").select(3)
    at.button(key="contrast_card_open").click().run()
    assert _card_shown(at, 3)
    assert at.query_params.get("feature") in ("3", ["3"])
    assert not problems(at)


def test_card_opens_from_the_clamp_editor():
    at = new_app()
    _precompute(at)
    at.text_input(key="index_text").input("4, 9")
    at.button(key="index_add").click().run()
    rid = at.session_state["clamp"]["rows"][0]["id"]
    at.selectbox(key=f"clamp_card:{rid}_pick").select(9)
    at.button(key=f"clamp_card:{rid}_open").click().run()
    assert _card_shown(at, 9)
    assert not problems(at)


def test_card_opens_from_the_attribution_topk_table(lab_env):
    run = make_flips_run(lab_env, "tiny-run", n=3)
    add_attribution_records(run, n=3)
    at = new_app()
    _precompute(at)
    at.session_state["run"] = "tiny-run"
    goto(at, "attribution")
    assert not problems(at)
    assert at.selectbox(key="topk_card_pick").options == ["feature 7", "feature 9", "feature 10", "feature 11"]
    at.selectbox(key="topk_card_pick").select(10)
    at.button(key="topk_card_open").click().run()
    assert _card_shown(at, 10)
    assert not problems(at)


def test_per_prompt_feature_heatmap_renders(lab_env):
    make_flips_run(lab_env, "tiny-run", n=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "flips")
    assert not problems(at)
    at.selectbox(key="flipfeat_pick").select(1)
    at.button(key="flipfeat_go").click().run()
    assert not problems(at)
    pick, df = at.session_state["flipfeat_view"]
    assert pick == 1 and set(df["answer"]) == {"base", "clamped"} and sorted(set(df["feature"])) == [1, 2, 3]
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any("base answer" in x for x in specs) and any("clamped answer" in x for x in specs)
    assert at.selectbox(key="flipfeat_card_tiny_pick").options == ["feature 1", "feature 2", "feature 3"]


def test_feature_link_from_the_address_opens_on_the_features_page():
    at = new_app()
    _precompute(at)
    at2 = new_app()
    at2.query_params["feature"] = "6"
    goto(at2, "features")
    assert _card_shown(at2, 6)
