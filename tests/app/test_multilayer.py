"""Clamp sets over several SAEs (layers) in the dashboard, on the tiny model: the Features editor and presets, a
flips run with the whole set, and cross-layer (jacobian) recovery with per-layer drift."""

from __future__ import annotations

import json

from engine.services import jobs
from engine.store import catalogue
from tests.app.apphelpers import (
    TWO_LAYER_CLAMPS,
    add_recovery,
    clamp_rows,
    goto,
    make_flips_run,
    new_app,
    problems,
    run_typed_flips,
)

L1, L2 = "tiny:blocks.1.hook_resid_post", "tiny:blocks.2.hook_resid_post"


def _search_in(at, spec: str) -> None:
    next(s for s in at.selectbox if s.key.startswith("search_sae:")).set_value(spec).run()


def _add_by_index(at, text: str, value: float = 5.0) -> None:
    at.text_input(key="index_text").input(text)
    at.text_input(key="index_value").input(str(value))
    at.button(key="index_add").click().run()


def _two_layer_set(at) -> None:
    goto(at, "features")
    _add_by_index(at, "1, 2, 3")  # the sidebar SAE: the tiny SAE at layer 1
    _search_in(at, L2)
    _add_by_index(at, "4, 5", 2.0)


def test_search_results_go_to_the_row_of_the_searched_sae(app):
    _two_layer_set(app)
    assert not problems(app)
    assert clamp_rows(app) == [{"sae": L1, "features": [1, 2, 3], "mode": "set", "values": [5.0] * 3},
                               {"sae": L2, "features": [4, 5], "mode": "set", "values": [2.0, 2.0]}]
    captions = [c.value for c in app.caption]
    assert any(c.startswith("#0 · layer 1 · " + L1) for c in captions) and any(c.startswith("#1 · layer 2 · " + L2) for c in captions)
    # More features for layer 1 join its row, not a new one.
    _search_in(app, L1)
    _add_by_index(app, "7")
    assert [r["features"] for r in clamp_rows(app)] == [[1, 2, 3, 7], [4, 5]]
    # Per-row editing: the mode of row #1 becomes multiply, applied through the engine's checks.
    rid = app.session_state["clamp"]["rows"][1]["id"]
    version = app.session_state["clamp"]["version"]
    app.radio(key=f"clamp_mode:{version}:{rid}").set_value("multiply")
    app.button(key="clamp_apply").click().run()
    assert not problems(app)
    assert [r["mode"] for r in clamp_rows(app)] == ["set", "multiply"]


def test_an_empty_row_and_an_empty_set_are_refused_with_a_page_message(app):
    _two_layer_set(app)
    app.selectbox(key="clamp_new_sae").set_value("tiny:blocks.3.hook_resid_post")
    app.button(key="clamp_add_row").click().run()
    assert len(clamp_rows(app)) == 3
    app.button(key="clamp_apply").click().run()
    assert any("row #2 (layer 3 · tiny:blocks.3.hook_resid_post) has no features" in e.value for e in app.error)
    # The flips page will not start with it either, and says why.
    goto(app, "flips")
    assert any("has no features" in e.value for e in app.error)
    assert app.button(key="start_flips").disabled
    goto(app, "features")
    app.button(key=f"clamp_remove:{app.session_state['clamp']['rows'][2]['id']}").click().run()
    assert [r["sae"] for r in clamp_rows(app)] == [L1, L2] and not problems(app)
    app.button(key="clamp_clear").click().run()
    app.text_input(key="preset_name").input("nothing")
    app.button(key="preset_save").click().run()
    assert any("The clamp set is empty" in e.value for e in app.error)


def test_presets_save_the_whole_set_in_the_cli_format_and_load_it_back(app, lab_env):
    from engine.lm.loading import load_model
    from engine.method.clamp_sets import load_clamp_set, read_clamp_file

    _two_layer_set(app)
    app.text_input(key="preset_name").input("two layers")
    app.button(key="preset_save").click().run()
    assert not problems(app)
    # `flips --clamp preset:two-layers` reads it: both layers, each SAE named so it reloads.
    rows, meta = read_clamp_file("preset:two-layers")
    specs = load_clamp_set(load_model("tiny", "cpu"), rows)
    assert [(s.hook_name, s.features) for s in specs] == [("blocks.1.hook_resid_post", [1, 2, 3]), ("blocks.2.hook_resid_post", [4, 5])]
    app.button(key="clamp_clear").click().run()
    app.selectbox(key="preset_choice").set_value("two-layers (layers 1, 2)")
    app.button(key="preset_load").click().run()
    assert [(r["sae"], r["features"]) for r in clamp_rows(app)] == [(L1, [1, 2, 3]), (L2, [4, 5])]
    # Adding the same preset again would clamp feature 1 of layer 1 twice: refused, the set is unchanged.
    app.button(key="preset_add").click().run()
    assert any("clamped twice" in e.value for e in app.error)
    assert len(clamp_rows(app)) == 2
    # A hand-written preset with a bad value or an out-of-range feature is refused with the row named.
    bad = {"clamps": [{"sae": L2, "features": [1], "mode": "set", "values": [float("inf")]}]}
    (lab_env / "presets" / "bad-value.json").write_text(json.dumps(bad))
    far = {"clamps": [{"sae": L1, "features": [999], "mode": "zero", "values": []}]}
    (lab_env / "presets" / "far.json").write_text(json.dumps(far))
    app.run()
    for label, message in (("bad-value (layer 2)", "finite"), ("far (layer 1)", "out of range")):
        app.selectbox(key="preset_choice").set_value(label)
        app.button(key="preset_load").click().run()
        assert any("row #0" in e.value and message in e.value for e in app.error), [e.value for e in app.error]
        assert len(clamp_rows(app)) == 2
    assert not app.exception


def test_flips_lists_every_row_and_runs_with_the_whole_set(app):
    _two_layer_set(app)
    goto(app, "flips")
    text = " ".join(m.value for m in app.markdown)
    assert "#0 · layer 1 · " + L1 + " · 3 features" in text and "#1 · layer 2 · " + L2 + " · 2 features" in text
    run_typed_flips(app)
    clamps = catalogue.get_run(app.session_state["run"]).config["clamps"]
    assert [(c["hook"], c["features"]) for c in clamps] == [("blocks.1.hook_resid_post", [1, 2, 3]), ("blocks.2.hook_resid_post", [4, 5])]
    # The saved run says which clamps it was made with.
    assert any("Clamps of this run: layer 1 · 3 features · set; layer 2 · 2 features · set" in c.value for c in app.caption)


def test_recovery_form_checks_projection_and_delta_layer_before_a_job(lab_env):
    make_flips_run(lab_env, "two-layer", n=2, clamps=TWO_LAYER_CLAMPS)
    before = jobs.latest_job("recovery")  # the registry is process-wide: earlier tests' jobs are still listed
    at = new_app()
    at.session_state["run"] = "two-layer"
    goto(at, "recovery")
    assert not problems(at)
    assert at.selectbox(key="rec_projection").value == "jacobian"  # the run clamps two layers
    assert at.text_input(key="rec_delta_layer:two-layer").value == "1"  # the lowest clamp
    assert not at.button(key="start_recovery").disabled
    at.selectbox(key="rec_projection").set_value("encoder").run()
    assert any("only protects the clamps at δ's layer 1" in e.value and "blocks.2.hook_resid_post" in e.value for e in at.error)
    assert at.button(key="start_recovery").disabled
    at.selectbox(key="rec_projection").set_value("jacobian").run()
    at.text_input(key="rec_delta_layer:two-layer").input("2").run()
    assert any("pick a layer from 0 to 1" in e.value for e in at.error)
    assert not any("--" in e.value for e in at.error)  # worded for the page, not as command-line flags
    assert at.button(key="start_recovery").disabled
    at.text_input(key="rec_delta_layer:two-layer").input("0").run()
    assert not problems(at) and not at.button(key="start_recovery").disabled
    assert jobs.latest_job("recovery") is before  # no job was started


def _layer_chart(at) -> bool:
    return any("Drift per clamped layer" in c.proto.spec for c in at.get("vega_lite_chart"))


def test_jacobian_recovery_draws_one_drift_line_per_layer_and_per_layer_results(lab_env):
    make_flips_run(lab_env, "two-layer", n=2, clamps=TWO_LAYER_CLAMPS)
    at = new_app()
    at.session_state["run"] = "two-layer"
    goto(at, "recovery")
    at.text_input(key="rec_steps").input("2000")
    at.text_input(key="rec_probes").input("2")
    at.text_input(key="rec_corr_steps").input("1")
    at.selectbox(key="rec_constraint_positions").set_value("answer")
    at.toggle(key="rec_later_encoder").set_value(True)
    at.text_input(key="rec_gn_damping").input("0.02")
    at.text_input(key="rec_gn_decay").input("0.5")
    at.button(key="start_recovery").click().run()
    job = jobs.latest_job("recovery", run="two-layer")
    while job.running and job.n_events < 4:
        job.wait(0.2)
    used = catalogue.get_run("two-layer").record().config
    assert {k: used[k] for k in ("projection", "delta_layer", "n_probes", "correction_steps", "constraint_positions",
                                 "later_encoder_prior", "gn_damping", "gn_damping_decay")} == {
        "projection": "jacobian", "delta_layer": 1, "n_probes": 2, "correction_steps": 1, "constraint_positions": "answer",
        "later_encoder_prior": True, "gn_damping": 0.02, "gn_damping_decay": 0.5}
    at.run()  # the live fragment draws from the job's events
    assert job.running and _layer_chart(at)
    from ui import charts

    frame = charts.layer_drift_frame(job.events(), delta_layer=1)
    assert set(frame["layer"]) == {"layer 1 (δ's layer)", "layer 2"}
    job.request_cancel()
    assert job.wait(60)
    # A finished jacobian run: the per-layer means of recovery_summary.json, δ's layer marked.
    add_recovery(lab_env / "runs" / "two-layer", steps=2, projection="jacobian", n_probes=2, correction_steps=1)
    at.run()
    assert not problems(at)
    table = next(d.value for d in at.dataframe if "drift (answer positions)" in d.value.columns)
    assert list(table["layer"]) == ["layer 1 (δ's layer)", "layer 2"]
    summary = catalogue.get_run("two-layer").recovery_summary
    assert list(table["drift (answer positions)"]) == [summary["drift_per_layer"][h] for h in table["hook"]]
    assert any("jacobian" in c.value and "correction step" in c.value for c in at.caption)
    per_prompt = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert {"drift layer 1 (answer)", "drift layer 2 (answer)"} <= set(per_prompt.columns)
    assert _layer_chart(at)  # the saved run draws its per-layer chart from drift_per_layer_history


def test_attribution_asks_for_an_sae_when_no_clamp_reads_the_delta_layer(lab_env):
    """δ below every clamp (layer 0): the page says attribution needs an SAE at δ's layer, refuses one at another layer
    in its own words (no command-line flag), and runs through the one given."""
    from tests.app.apphelpers import wait_job

    run = make_flips_run(lab_env, "two-layer", n=2, clamps=TWO_LAYER_CLAMPS)
    add_recovery(run, steps=2, projection="jacobian", delta_layer=0, n_probes=2, correction_steps=1)
    at = new_app()
    at.session_state["run"] = "two-layer"
    goto(at, "attribution")
    assert any("δ sits at layer 0" in i.value for i in at.info)
    assert at.button(key="start_attribution").disabled
    for typed, says in (("", "Type an SAE that reads blocks.0.hook_resid_post"),
                        (L2, "reads blocks.2.hook_resid_post, but δ sits at blocks.0.hook_resid_post")):
        at.text_input(key=next(t.key for t in at.text_input if t.key.startswith("attr_sae"))).input(typed).run()
        errors = [e.value for e in at.error]
        assert any(says in e for e in errors) and not any("--" in e for e in errors), errors
        assert at.button(key="start_attribution").disabled
    at.text_input(key=next(t.key for t in at.text_input if t.key.startswith("attr_sae"))).input("tiny:blocks.0.hook_resid_post").run()
    assert not at.error and not at.button(key="start_attribution").disabled
    at.text_input(key="attr_k").input("2")
    at.button(key="start_attribution").click().run()
    job = wait_job("attribution", timeout=300)
    assert job.status == "done", job.error
    assert catalogue.get_run("two-layer").record().attribution_summary["sae"] == "tiny:blocks.0.hook_resid_post"


def test_direction_search_makes_a_multi_layer_clamp_set_in_one_click(lab_env):
    """Features page, "By refusal direction": bad numbers are refused in the page's words before a job; the search
    ranks both picked SAEs against one direction, and one click makes the chosen features the clamp set."""
    from tests.app.apphelpers import wait_job

    at = new_app()
    goto(at, "features")
    for key, bad, says in (("dir_layer", "99", "Direction layer must be from 0 to"), ("dir_k", "0", "Top K must be at least 1"),
                           ("dir_prompts", "1", "Prompts must be from 2 to")):
        at.text_input(key=key).input(bad).run()
        errors = [e.value for e in at.error]
        assert any(says in e for e in errors) and not any("--" in e for e in errors), errors
        assert at.button(key="dir_go").disabled
    at.text_input(key="dir_layer").input("1")
    at.text_input(key="dir_k").input("2")
    at.text_input(key="dir_prompts").input("4")
    at.multiselect(key="dir_saes").set_value([L1, L2]).run()
    assert not problems(at)
    at.button(key="dir_go").click().run()
    job = wait_job("direction", timeout=300)
    assert job.status == "done", job.error
    at.run()
    chosen = next(d.value for d in at.dataframe if "cosine" in d.value.columns)
    assert sorted(set(chosen["layer"])) == [1, 2] and len(chosen) == 4  # K = 2 from each SAE
    at.button(key="dir_use").click().run()
    rows = clamp_rows(at)
    assert [r["sae"] for r in rows] == [L1, L2] and all(len(r["features"]) == 2 and r["mode"] == "set" for r in rows)
    assert at.session_state["clamp"]["origin"] == "direction search"
    assert [list(chosen[chosen["layer"] == k]["feature"]) for k in (1, 2)] == [r["features"] for r in rows]
    # multiply mode: the same search clamps ×m; any warning (features off where the clamp acts) has no command-line flag
    at.selectbox(key="dir_mode").set_value("multiply").run()
    at.button(key="dir_go").click().run()
    assert wait_job("direction", timeout=300).status == "done"
    at.run()
    assert not any("--" in w.value for w in at.warning)
    at.button(key="dir_use").click().run()
    assert all(r["mode"] == "multiply" and r["values"] == [3.0, 3.0] for r in clamp_rows(at))


def test_engine_warnings_lose_their_command_line_flags_on_a_page():
    from ui.validate import without_flags

    assert without_flags("use the set mode (--mode set). E.g. 3") == "use the set mode. E.g. 3"
    assert without_flags("no flag here (really)") == "no flag here (really)"
