"""Runs → Compare (AppTest, tiny model): several recoveries on one chart with one legend, a readable settings table, a
link (query parameters) that reopens the same view; the engine's curves and readable values."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from engine.store import catalogue
from engine.store import compare as cmp
from tests.app.apphelpers import ENTRY, add_recovery, goto, make_flips_run, new_app, problems


def _two_recoveries(data) -> list[str]:
    run = make_flips_run(data, "run-a", n=2)
    add_recovery(run, steps=2, budget=2.0)
    add_recovery(run, steps=3, budget=7.0)
    return [f"run-a/{r.name}" for r in catalogue.get_run("run-a").recoveries]


def _chart(at):
    charts = [c for c in at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")]
    return next(c for c in charts if "concat" in c.proto.spec)


def _chart_spec(at) -> dict:
    return json.loads(_chart(at).proto.spec)


def _chart_rows(at) -> list[dict]:
    """The rows of every dataset the chart carries (Streamlit sends them as Arrow beside the spec)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    rows = []
    for ds in _chart(at).proto.datasets:
        rows.extend(convert_arrow_bytes_to_pandas_df(ds.data.data).to_dict("records"))
    return rows


def test_two_recoveries_on_one_chart_with_one_legend_and_a_settings_table(lab_env):
    keys = _two_recoveries(lab_env)
    labels = [k.replace("/", " · ") for k in keys]
    at = goto(new_app(), "runs")
    assert not problems(at)
    at.multiselect(key="cmp").set_value(keys).run()
    assert not problems(at)
    spec = _chart_spec(at)
    panels = spec.get("hconcat") or spec.get("vconcat")
    assert len(panels) == 2  # loss and drift (no sweep picked)
    domains = {json.dumps(layer["encoding"]["color"]["scale"]["domain"]) for p in panels for layer in p["layer"]}
    assert domains == {json.dumps(labels)}  # one colour scale, both records in it
    assert spec.get("resolve", {}).get("scale", {}).get("color") == "shared"  # hence one legend
    # both records' curves are in the chart's data: 2 and 3 steps
    data = _chart_rows(at)
    steps = {lab: {r["step"] for r in data if r.get("record") == lab and r.get("metric") == "loss"} for lab in labels}
    assert sorted(len(s) for s in steps.values()) == [3, 4]  # steps + the final evaluation, as loss_history holds
    # the settings table: one column per record, readable values, the budget differs
    [table] = [t for t in at.table]
    df = table.value
    assert list(df.columns) == [*labels, "differs"]
    budget = df.loc[("Settings", "budget")]
    assert sorted(budget[labels]) == ["2", "7"] and budget["differs"] == "≠"
    assert "blocks.1.hook_resid_post: 3 features (1, 2, 3) set to 5" in df.loc[("Run", "clamp set")][labels[0]]
    assert not any(str(v).startswith(("{", "[")) for v in df.to_numpy().ravel())  # no JSON blobs
    at.toggle(key="cmp_diff_only").set_value(True).run()
    assert ("Run", "model") not in at.table[0].value.index


def test_the_link_reopens_the_same_comparison(lab_env):
    keys = _two_recoveries(lab_env)
    at = goto(new_app(), "runs")
    at.multiselect(key="cmp").set_value(keys).run()
    # the link shown on the page names the tab and both records (the browser keeps the same in its address bar:
    # the multiselect and the tabs are bound to the query parameters; AppTest has no address bar)
    from urllib.parse import parse_qs, urlsplit

    [link] = [c.value for c in at.code if "cmp=" in c.value]
    query = parse_qs(urlsplit(link).query)
    assert query == {"runs_tab": ["Compare"], "cmp": keys}
    # a fresh session opened on that address shows the same records on the Compare tab
    fresh = AppTest.from_file(ENTRY, default_timeout=120)
    fresh.query_params.update(query)
    fresh.switch_page("app_pages/runs.py")
    fresh.run()
    assert not problems(fresh)
    assert fresh.multiselect(key="cmp").value == keys
    assert fresh.session_state["runs_tab"] == "Compare"
    assert _chart_spec(fresh)


def test_a_link_to_a_deleted_record_says_so(lab_env):
    keys = _two_recoveries(lab_env)
    catalogue.delete_recovery("run-a", keys[0].split("/")[1])
    fresh = AppTest.from_file(ENTRY, default_timeout=120)
    fresh.query_params["cmp"] = keys
    fresh.switch_page("app_pages/runs.py")
    fresh.run()
    assert not fresh.exception
    assert any(keys[0] in w.value and "no longer here" in w.value for w in fresh.warning)
    assert fresh.multiselect(key="cmp").value == [keys[1]]


def test_sweep_curves_and_readable_values(lab_env):
    run = make_flips_run(lab_env, "run-s", n=2)
    from engine.store.records import create_record

    path = create_record(run, "sw", "sweep", {"projection": "encoder", "budgets": [0, 2], "valid": "judge", "flip_ids": [0, 1]})
    ci = {"non_refusal": {"k": 1, "n": 2, "rate": 0.5, "ci95": [0.1, 0.9]}, "base_like": {"k": 0, "n": 2, "rate": 0.0, "ci95": [0.0, 0.66]}}
    (path / "sweep.json").write_text(json.dumps({"budgets": [0, 2], "points": [{"budget": 0, "ci": ci}, {"budget": 2, "ci": ci}]}))
    found = cmp.resolve(["run-s/sw", "run-s/nope", "bad"])
    assert [c.ref.key for c in found.found] == ["run-s/sw"] and found.missing == ["run-s/nope", "bad"]
    rows = cmp.sweep_curves(found.found)
    assert {(r["budget"], r["metric"], r["k"]) for r in rows} == {(0, "non-refusal", 1), (2, "non-refusal", 1), (0, "base-like", 0), (2, "base-like", 0)}
    assert cmp.step_curves(found.found) == []
    table = {r["setting"]: r for r in cmp.settings_table(found.found)}
    assert table["non-refusal recovery"]["run-s · sw"] == "B 0: 1/2 · B 2: 1/2"
    assert cmp.readable(None) == "—" and cmp.readable(True) == "yes" and cmp.readable(0.123456) == "0.1235"
    assert cmp.readable(list(range(14))).endswith("… (14 in all)")
    rows = cmp.readable_run_rows([{"field": "config.clamps", "a": json.dumps([{"hook": "h", "features": [1], "mode": "zero"}]), "b": None,
                                   "same": False}])
    assert rows[0]["a"] == "h: 1 feature (1) zeroed" and rows[0]["b"] == "—"
