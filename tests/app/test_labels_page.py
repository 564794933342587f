"""The Flips page's hand labels (AppTest, tiny model): the sidebar's labeller name (kept in the URL), labels saved
in the run directory per labeller, the judge-vs-human agreement table, the disagreements filter, CSV import/export."""

from __future__ import annotations

import json

from engine.store import label_csv, labels
from tests.app.apphelpers import ENTRY, goto, make_flips_run, new_app, problems


def mixed_run(data, name="tiny-run", valid=(True, True, False, False)):
    """A flips run whose first flips are valid and the rest are not (judge-invalid: the clamped text answers)."""
    run = make_flips_run(data, name, n=len(valid))
    rows = [json.loads(line) for line in (run / "flips.jsonl").read_text().splitlines()]
    for row, v in zip(rows, valid):
        if not v:
            row.update(valid=False, clamped_refusal=False, clamped_text="Rivers flow downhill.", clamped_reasons=[])
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def open_flips(name="tiny-run", labeller=None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(ENTRY, default_timeout=120)
    if labeller is not None:
        at.query_params["labeller"] = labeller
    at.run()
    at.session_state["run"] = name
    return goto(at, "flips")


def by_labeller(run) -> dict:
    return {(fid, who): lab.label for fid, by in labels.get_labels(run).items() for who, lab in by.items()}


def test_labeller_name_from_the_sidebar_goes_into_the_url_and_every_label(lab_env):
    run = mixed_run(lab_env)
    at = open_flips()
    box = at.sidebar.text_input(key="labeller")
    assert box.proto.query_param_key == "labeller"  # the browser keeps it in the URL as ?labeller=… (read back below)
    box.input("ann").run()
    assert any("Labelling as **ann**" in c.value for c in at.caption)
    at.text_input(key="note:tiny-run:ann:0").input("clear refusal").run()
    at.button(key="lab_genuine").click().run()
    at.button(key="lab_not").click().run()  # the labeller moved on to flip 1
    assert not problems(at)
    assert by_labeller(run) == {(0, "ann"): "genuine", (1, "ann"): "not"}
    assert labels.get_labels(run)[0]["ann"].note == "clear refusal"
    assert (run / "labels.jsonl").is_file()

    # A fresh session opened from the URL labels as the same person and starts on their first unlabelled flip.
    fresh = open_flips(labeller="ann")
    assert fresh.session_state["labeller"] == "ann"
    assert any("2/2 valid flips labelled by ann" in p.proto.text for p in fresh.get("progress"))
    # Another labeller has labelled nothing yet; their label is kept apart from ann's.
    bob = open_flips(labeller="bob")
    assert any("0/2 valid flips labelled by bob" in p.proto.text for p in bob.get("progress"))
    bob.button(key="lab_genuine").click().run()
    assert by_labeller(run) == {(0, "ann"): "genuine", (1, "ann"): "not", (0, "bob"): "genuine"}
    bob.button(key="lab_prev").click().run()
    bob.button(key="lab_clear").click().run()
    assert (0, "bob") not in by_labeller(run)


def test_all_prompts_scope_labels_judge_invalid_flips(lab_env):
    run = mixed_run(lab_env)
    at = open_flips(labeller="ann")
    at.radio(key="label_scope").set_value("All prompts").run()
    assert any("0/4 prompts labelled by ann" in p.proto.text for p in at.get("progress"))
    for label in ("genuine", "genuine", "not", "genuine"):
        at.button(key=f"lab_{label}").click().run()
    assert not problems(at)
    assert by_labeller(run) == {(0, "ann"): "genuine", (1, "ann"): "genuine", (2, "ann"): "not", (3, "ann"): "genuine"}



def frame(at, *columns):
    """The one dataframe on the page that has ``columns``."""
    found = [el.value for el in at.dataframe if all(c in el.value.columns for c in columns)]
    assert len(found) == 1, [list(el.value.columns) for el in at.dataframe]
    return found[0]


def test_agreement_table_inter_labeller_kappa_and_disagreements(lab_env):
    run = mixed_run(lab_env)
    # judge: 0, 1 valid; 2, 3 not.  ann: 0 g, 1 n, 2 n, 3 g.  bob: 0 g, 1 n, 2 n, 3 n.
    # consensus: 0 genuine, 1 not, 2 not, 3 tie → unsure.  Compared: 0 (valid, g), 1 (valid, n), 2 (invalid, n).
    for fid, a, b in [(0, "genuine", "genuine"), (1, "not", "not"), (2, "not", "not"), (3, "genuine", "not")]:
        labels.set_label(run, fid, a, labeller="ann")
        labels.set_label(run, fid, b, labeller="bob")
    at = open_flips(labeller="ann")
    assert not problems(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flips compared"] == "3" and metrics["Unsure (left out)"] == "1"
    # p_o = 2/3; judge valid 2/3, humans genuine 1/3 → p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9; κ = (6/9 − 4/9)/(5/9) = 0.4
    assert metrics["Cohen's κ"] == "0.40"
    table = frame(at, "human genuine")
    assert table.to_dict("records") == [{"judge": "valid", "human genuine": 1, "human not": 1},
                                        {"judge": "not valid", "human genuine": 0, "human not": 1}]
    pairs = frame(at, "labeller A")
    assert pairs["n"].tolist() == [4] and pairs["labeller A"].tolist() == ["ann"]

    at.radio(key="label_scope").set_value("Disagreements").run()
    assert not problems(at)
    assert any("**1 disagreements**" in m.value for m in at.markdown)
    gaps = frame(at, "consensus", "judge")
    assert gaps["id"].tolist() == [1] and gaps["consensus"].tolist() == ["not"]
    assert any("flip 1 of 1" in p.proto.text for p in at.get("progress"))


def test_no_labels_shows_why_kappa_is_missing(lab_env):
    mixed_run(lab_env)
    at = open_flips()
    assert not problems(at)
    assert {m.label: m.value for m in at.metric}["Cohen's κ"] == "—"
    assert any("κ is not defined" in c.value and "n = 0" in c.value for c in at.caption)
    at.radio(key="label_scope").set_value("Disagreements").run()
    assert any("No disagreements" in i.value for i in at.info)


def test_csv_import_checks_every_row_and_says_how_many(lab_env):
    run = mixed_run(lab_env)
    at = open_flips(labeller="ann")
    bad = b"flip_id,label,labeller,note\n0,genuine,carl,ok\n7,not,carl,\n"
    at.file_uploader(key="labels_upload").set_value(("bad.csv", bad, "text/csv")).run()
    at.button(key="labels_import_go").click().run()
    errors = [e.value for e in at.error]
    assert any("Nothing imported" in e and "row 2" in e and "flip id 7" in e for e in errors), errors
    assert not (run / "labels.jsonl").exists()

    good = b"flip_id,label,labeller,note\n0,genuine,carl,ok\n2,not,carl,answers\n"
    at.file_uploader(key="labels_upload").set_value(("good.csv", good, "text/csv")).run()
    at.button(key="labels_import_go").click().run()
    assert any("Imported 2 labels from good.csv" in s.value for s in at.success)
    assert not problems(at)
    assert by_labeller(run) == {(0, "carl"): "genuine", (2, "carl"): "not"}
    buttons = {b.proto.id: b.label for b in at.get("download_button")}
    assert any("export_label_csv" in k for k in buttons) and any("export_labels" in k for k in buttons)
    assert label_csv.label_csv(run) == "flip_id,label,labeller,note\n0,genuine,carl,ok\n2,not,carl,answers\n"


def test_labels_survive_a_fresh_session_without_a_name(lab_env):
    run = mixed_run(lab_env, valid=(True, True, True))
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "flips")
    assert any("Labelling with no name" in c.value for c in at.caption)
    at.button(key="lab_genuine").click().run()
    fresh = open_flips()
    assert any("1/3 valid flips labelled by (no name)" in p.proto.text for p in fresh.get("progress"))
    assert any("flip 2 of 3" in p.proto.text for p in fresh.get("progress"))
    assert by_labeller(run) == {(0, ""): "genuine"}
