"""Every page under AppTest with the tiny model: widgets, session state, jobs, errors as users see them."""

from __future__ import annotations

import time

import pytest

from engine.method import presets
from engine.services import jobs
from engine.store import catalogue
from tests.app.apphelpers import (
    PAGES,
    add_attribution_records,
    add_recovery,
    clamp_rows,
    goto,
    make_flips_run,
    new_app,
    problems,
    run_typed_flips,
    wait_job,
)


def test_smoke_every_page(app, lab_env):
    make_flips_run(lab_env, "tiny-run")
    for page in PAGES:
        goto(app, page)
        assert not problems(app), f"{page}: {problems(app)}"
        assert app.title, f"{page} has no title"
        # The sidebar (drawn by the entry script) is there on every page.
        assert app.sidebar.selectbox(key="model_name").value == "tiny"


def test_sidebar_picker_and_status(app):
    model = app.sidebar.selectbox(key="model_name")
    assert {"default", "tiny", "gpt2"} <= set(model.options)
    sae = app.sidebar.selectbox(key="sae_choice")
    assert sae.value == "default" and "Local folder…" in sae.options
    status = " ".join(m.value for m in app.sidebar.markdown)
    if "checking" in status:  # the hub probe runs in the background; the next rerun shows its answer
        time.sleep(0.5)
        app.run()
        status = " ".join(m.value for m in app.sidebar.markdown)
    assert "tiny" in status and "Hub:** offline" in status


def test_hub_model_offline_is_a_clear_error_and_the_app_stays_usable(app):
    app.sidebar.selectbox(key="model_name").set_value("gpt2").run()
    assert not app.exception
    # offline and not in the local Hugging Face cache: one line that says both (the warm-cache route is tried first)
    assert any("not in the Hugging Face cache" in e.value for e in app.sidebar.error)
    assert any("not in the Hugging Face cache" in e for e in problems(app))
    app.sidebar.selectbox(key="model_name").set_value("tiny").run()
    assert not problems(app)


def test_bad_local_sae_folder_is_a_clear_error(app, tmp_path):
    app.sidebar.selectbox(key="sae_choice").set_value("Local folder…").run()
    app.sidebar.text_input(key="local_sae_path").input(str(tmp_path)).run()
    assert not app.exception
    assert any("not an sae_lens SAE folder" in e for e in problems(app))


def test_features_add_by_index_edit_and_presets(app):
    goto(app, "features")
    app.text_input(key="index_text").input("1, 2, 3")
    app.text_input(key="index_value").input("4.0")
    app.button(key="index_add").click().run()
    assert clamp_rows(app) == [{"sae": "tiny:blocks.1.hook_resid_post", "features": [1, 2, 3], "mode": "set", "values": [4.0, 4.0, 4.0]}]
    app.text_input(key="index_text").input("1, 999")
    app.button(key="index_add").click().run()
    assert any("out of range" in e.value for e in app.error)
    app.text_input(key="preset_name").input("my preset")
    app.button(key="preset_save").click().run()
    assert presets.preset_file("my-preset").is_file()
    app.button(key="clamp_clear").click().run()
    assert clamp_rows(app) == []
    app.selectbox(key="preset_choice").set_value("my-preset (layer 1)")
    app.button(key="preset_load").click().run()
    assert [r["features"] for r in clamp_rows(app)] == [[1, 2, 3]]
    assert not app.exception


def test_features_contrast_job_prompt_search_and_card(app):
    goto(app, "features")
    app.text_input(key="contrast_prompts").input("3")
    app.text_input(key="contrast_tokens").input("8")
    app.button(key="contrast_go").click().run()
    job = wait_job("contrast")
    assert job.status == "done", job.error
    app.run()
    rows = app.session_state["contrast_rows:tiny"]
    assert rows and {"feature", "diff", "refusal_mean"} <= set(rows[0])
    app.text_input(key="contrast_n").input("2")
    app.button(key="contrast_add").click().run()
    assert [r["features"] for r in clamp_rows(app)] == [[r["feature"] for r in rows[:2]]]
    app.button(key="prompt_go").click().run()
    assert app.session_state["prompt_rows:tiny"]
    app.button(key="card_go").click().run()  # first use: the card store is precomputed as a job (ui/card_views.py)
    from engine.services import jobs

    job = jobs.latest_job("feature cards")  # none when the user cache already holds the store
    assert job is None or (job.wait(180) and job.status == "done")
    app.run()
    assert any("corpus tokens" in m.value for m in app.markdown)
    assert not problems(app)


def test_neuronpedia_tab_errors_show_in_the_page(app, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    goto(app, "features")
    app.text_input(key="np_id").input("gpt2-small/6-res-jb")
    app.text_input(key="np_query").input("refusal").run()
    app.button(key="np_go").click().run()
    assert not app.exception
    assert any("unreachable" in e.value for e in app.error)


def _clamp(app):
    goto(app, "features")
    app.text_input(key="index_text").input("1, 2, 3")
    app.button(key="index_add").click().run()


def test_flips_job_streams_and_saves_a_run(app):
    _clamp(app)
    goto(app, "flips")
    run_typed_flips(app)
    name = app.session_state["run"]
    info = catalogue.get_run(name)
    assert info.summary["n_prompts"] == 2 and info.config["prompts"] == "typed" and info.config["model"] == "tiny"
    assert [m.value for m in app.metric][:1] == ["2"]


def test_flips_cancel_keeps_finished_prompts(app):
    _clamp(app)
    goto(app, "flips")
    app.text_input(key="flips_limit").input("40")
    app.text_input(key="flips_batch").input("1")
    app.text_input(key="flips_max_new").input("2")
    app.button(key="start_flips").click().run()
    job = jobs.latest_job("flips")
    job.request_cancel()
    assert job.wait(60)
    assert job.status == "cancelled"
    app.run()
    assert not app.exception
    summary = catalogue.get_run(job.meta["run"]).summary
    assert summary["cancelled"] and summary["n_prompts"] < 40


def test_bad_upload_is_a_clear_error(app):
    _clamp(app)
    goto(app, "flips")
    app.radio(key="flips_source").set_value("Type prompts").run()
    # The uploader itself cannot be driven by AppTest; the same parser is called on the bytes.
    from engine.errors import LabError
    from engine.method.prompts import parse_prompts

    with pytest.raises(LabError, match="not valid JSON"):
        parse_prompts(b"[{oops", "prompts.json")
    with pytest.raises(LabError, match="no prompt, instruction or goal column"):
        parse_prompts(b"a,b\n1,2\n", "prompts.csv")


def test_recovery_job_live_charts_results_and_reattach(lab_env):
    make_flips_run(lab_env, "tiny-run", n=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    assert not problems(at)
    at.text_input(key="rec_steps").input("3")
    at.text_input(key="rec_max_new").input("4")
    at.button(key="start_recovery").click().run()
    job = jobs.latest_job("recovery", run="tiny-run")
    job_id = at.session_state["recovery_job"]
    assert job is not None and job_id == job.id
    # Another page and back: the page finds the same job again.
    goto(at, "runs")
    goto(at, "recovery")
    assert at.session_state["recovery_job"] == job_id
    assert job.wait(120) and job.status == "done", job.error
    at.run()
    assert not problems(at)
    assert len(at.get("vega_lite_chart")) >= 2  # loss and drift
    assert catalogue.get_run("tiny-run").has_recovery


def test_recovery_reattach_after_reload_and_cancel(lab_env):
    make_flips_run(lab_env, "tiny-run", n=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    at.text_input(key="rec_steps").input("2000")
    at.button(key="start_recovery").click().run()
    job = jobs.latest_job("recovery")
    # A fresh session (a browser reload loses session state) finds the running job of this run.
    again = new_app()
    again.session_state["run"] = "tiny-run"
    goto(again, "recovery")
    assert again.session_state["recovery_job"] == job.id
    assert [b.key for b in again.button if b.key == "cancel_recovery"]
    at.button(key="cancel_recovery").click().run()
    assert job.wait(60)
    assert job.status == "cancelled"
    at.run()
    assert not at.exception


def test_recovery_page_explains_a_failed_job(lab_env, monkeypatch):
    make_flips_run(lab_env, "tiny-run", n=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    with (lab_env / "runs" / "tiny-run" / "flips.jsonl").open("a") as fh:  # the run breaks after the page was drawn
        fh.write("{broken\n")
    at.text_input(key="rec_steps").input("2")
    at.button(key="start_recovery").click().run()
    job = wait_job("recovery")
    assert job.status == "failed" and "not valid JSON" in job.error
    at.run()
    assert not at.exception
    assert any("not valid JSON" in e.value for e in at.error)


def test_sweep_and_presenter_replay(lab_env):
    run = make_flips_run(lab_env, "tiny-run", n=2)
    add_recovery(run, steps=3)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    at.text_input(key="rec_max_new").input("4")
    at.text_input(key="rec_steps").input("2")
    at.text_input(key="sweep_budgets").input("0, 0.1").run()
    at.button(key="start_sweep").click().run()
    job = wait_job("sweep")
    assert job.status == "done", job.error
    at.run()
    assert not problems(at)
    sweeps = catalogue.get_run("tiny-run").sweeps
    assert len(sweeps) == 1 and sweeps[0].complete and [p["budget"] for p in sweeps[0].summary["points"]] == [0.0, 0.1]
    assert len(at.get("vega_lite_chart")) >= 3
    # Presenter mode: settings hidden, a replay of the saved run from its files.
    at.session_state["presenter"] = True
    at.run()
    assert not problems(at)
    assert not [b for b in at.button if b.key == "start_recovery"]
    at.button(key="replay_restart").click().run()
    at.button(key="replay_play").click().run()
    for _ in range(5):
        at.run()  # AppTest does not fire run_every; each run is one tick
    newest = catalogue.get_run("tiny-run").record().name
    assert at.session_state[f"replay_step:tiny-run:{newest}"] >= 1
    assert not problems(at)


def test_attribution_page_renders_saved_results_and_runs_a_job(lab_env):
    run = make_flips_run(lab_env, "tiny-run", n=2)
    add_recovery(run, steps=2)
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "attribution")
    assert not problems(at)
    at.text_input(key="attr_k").input("2")
    at.button(key="start_attribution").click().run()
    job = wait_job("attribution", timeout=300)
    assert job.status == "done", job.error
    at.run()
    assert not problems(at)
    assert len(at.get("vega_lite_chart")) >= 3


def test_attribution_views_on_recorded_shape(lab_env):
    run = make_flips_run(lab_env, "tiny-run", n=3)
    add_attribution_records(run, n=3)  # into a record of its own, with an empty recovery.jsonl
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "attribution")
    assert not problems(at)
    from ui import attribution_views as av

    recs = catalogue.read_records("tiny-run", "attribution.jsonl")
    agg = {r["component"]: r["restored"] for r in av.aggregate_rows(recs)}
    assert agg == {"full": 3, "clamped": 0, "non_clamped": 0, "topk": 0, "residual": 3, "knockout": 0}
    top = av.topk_rows(recs)
    assert top[0]["feature"] == 7 and top[0]["count"] == 3


def test_runs_page_compare_export_delete(lab_env):
    make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=2, valid=False)
    at = new_app()
    goto(at, "runs")
    assert not problems(at)
    assert len(at.dataframe) >= 2  # the list and the comparison
    assert [b.label for b in at.get("download_button")][:2] == ["Download the run as a zip", "Download config.json"]
    at.selectbox(key="delete_run").set_value("run-b").run()
    at.checkbox(key="delete_sure").check().run()
    at.button(key="delete_go").click().run()
    assert [r.name for r in catalogue.list_runs()] == ["run-a"]
    assert not at.exception


def test_chart_exports_are_png_and_svg(lab_env):
    from ui import charts

    chart = charts.sweep_chart([{"budget": 0, "metric": "non refusal", "rate": 0.5, "lo": 0.2, "hi": 0.8, "k": 1, "n": 2}])
    assert charts.to_png(chart).startswith(b"\x89PNG")
    assert charts.to_svg(chart).lstrip().startswith("<svg")


def test_a_reload_keeps_the_sidebar_choices_and_the_run(lab_env, tmp_path):
    """Sidebar widgets are bound to the URL (the browser writes them there), and so is the current run: a new
    session opened on that URL starts with the same choices."""
    make_flips_run(lab_env, "run-a", n=2)
    make_flips_run(lab_env, "run-b", n=2)
    from streamlit.testing.v1 import AppTest

    from tests.app.apphelpers import ENTRY

    reload = AppTest.from_file(ENTRY, default_timeout=120)
    reload.query_params.update({"sae_choice": "Local folder…", "local_sae_path": str(tmp_path), "run": "run-a"})
    reload.run()
    assert reload.sidebar.selectbox(key="sae_choice").value == "Local folder…"
    assert reload.sidebar.text_input(key="local_sae_path").value == str(tmp_path)
    # Without a usable SAE the flips page still shows the saved run of the URL, for reading and labelling.
    goto(reload, "flips")
    assert any("not an sae_lens SAE folder" in e.value for e in reload.error)
    assert reload.session_state["run"] == "run-a"
    assert [k for k in (b.key for b in reload.button) if k == "lab_genuine"]


def test_an_interrupted_flips_run_offers_resume(lab_env):
    """A flips run stopped half-way (a cancel, or a server that stopped) shows Resume; it finishes the run."""
    import threading

    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.clamp import ClampSpec
    from engine.method.flips import write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.prompts import load_prompts

    lm = load_model("tiny", "cpu")
    stop = threading.Event()
    run = catalogue.run_path("half")
    run.mkdir()
    write_flips_run(lm, [ClampSpec(load_sae("tiny", lm), [0, 1], "set", [5.0])], load_prompts("builtin:harmless", 4),
                    GenerationConfig(max_new_tokens=4, batch_size=2), JudgeConfig(), run,
                    {"model": "tiny", "prompts": "builtin:harmless", "limit": 4}, stop, lambda row: stop.set())
    at = new_app()
    at.session_state["run"] = "half"
    goto(at, "flips")
    assert any("stopped after 2 of its 4 prompts" in i.value for i in at.info)
    at.button(key="resume_flips").click().run()
    job = wait_job("flips")
    assert job.status == "done", job.error
    at.run()
    assert not problems(at)
    assert len(catalogue.read_records("half", "flips.jsonl")) == 4 and not [b for b in at.button if b.key == "resume_flips"]
