"""The SAE-quality study page on a study folder written by the tiny study (tests/test_study.py)."""

from __future__ import annotations

import threading

from tests.app.apphelpers import goto, new_app, problems
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
