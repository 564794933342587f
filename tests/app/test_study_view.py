"""The SAE-quality study page on a study folder written by the tiny study (tests/test_study.py)."""

from __future__ import annotations

import threading

from tests.app.apphelpers import goto, new_app, problems, wait_job
from tests.test_study import FAST, make_saes, make_source_run, tiny_refusals


def test_study_page_shows_the_table_and_the_plots(lab_env, tmp_path):
    from engine.lm.tiny import tiny_model
    from engine.study.config import COLUMNS
    from engine.study.quality_study import run_study

    at = goto(new_app(), "study")
    assert not problems(at) and "No study yet" in " ".join(i.value for i in at.info)
    a, b = make_saes(tmp_path)
    run = make_source_run(tmp_path)
    lm = tiny_model(seed=0)
    with tiny_refusals():
        done = run_study(run, [str(a), str(b)], FAST, name="finished", lm=lm)
        cancel = threading.Event()
        run_study(run, [str(a), str(b)], FAST, name="stopped", lm=lm, cancel=cancel, on_row=lambda row: cancel.set())
    at = goto(new_app(), "study")
    assert not problems(at)
    assert at.selectbox(key="study_pick").options == ["stopped", "finished"]  # newest first
    at.selectbox(key="study_pick").set_value("finished").run()
    assert not problems(at) and not at.warning
    table = at.dataframe[0].value
    assert list(table.columns) == list(COLUMNS) and list(table["sae"]) == [str(a), str(b)]
    assert table["share_residual"].tolist() == [r["share_residual"] for r in done.rows]
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(specs) == 2  # quality vs shares, gains per part
    assert "share of valid flips restored" in specs[0] and "dead fraction" in specs[0]
    assert "mean base log-prob gain" in specs[1]
    assert {"Download study.csv", "Download the plots (study.html, works offline)"} <= {b.proto.label for b in at.get("download_button")}
    # a stopped study says so and still shows the SAE it finished
    at.selectbox(key="study_pick").set_value("stopped").run()
    assert not problems(at)
    assert "stopped before every SAE finished" in at.warning[0].value
    stopped = at.dataframe[0].value
    assert stopped["status"].tolist() == ["done", "not started"] and stopped["d_sae"].tolist() == [64, 128]
    # resuming it from the page finishes the second SAE as a background job
    with tiny_refusals():
        at.button(key="study_resume").click().run()
        job = wait_job("study")
    assert job.status == "done", job.error
    at.run()
    assert not problems(at) and not at.warning
    assert at.dataframe[0].value["status"].tolist() == ["done", "done"]
    assert not [b for b in at.button if b.key == "study_resume"]


def test_a_study_started_from_the_page(lab_env, tmp_path, monkeypatch):
    from engine.study.quality_study import list_studies

    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "cache"))  # no ladder built: the SAEs are named by hand
    a, _ = make_saes(tmp_path)
    other = tmp_path / "gpt2-sae"
    from engine.lm.tiny import tiny_sae

    tiny_sae(32, d_sae=64, hook_name="blocks.1.hook_resid_post", model_name="gpt2").save_model(str(other))
    (lab_env / "runs").mkdir()
    make_source_run(lab_env / "runs")
    at = goto(new_app(), "study")
    assert not problems(at)
    assert at.multiselect(key="study_ladder").options == []
    at.text_area(key="study_other").input(f"{a}\n{other}").run()
    at.number_input(key="study_steps").set_value(3).run()
    at.button(key="study_start").click().run()
    # an SAE for another model is refused in page words before any job starts
    assert "trained on gpt2" in " ".join(e.value for e in at.error) and not list_studies()
    assert all("--" not in e.value for e in at.error)
    at.text_area(key="study_other").input(str(a)).run()
    with tiny_refusals():
        at.button(key="study_start").click().run()
        job = wait_job("study")
    assert job.status == "done", job.error
    at.run()
    assert not problems(at)
    [study] = list_studies()
    table = at.dataframe[0].value
    assert table["sae"].tolist() == [str(a)] and table["status"].tolist() == ["done"]
    assert job.result["name"] == study.name
