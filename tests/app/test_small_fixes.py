"""Issue 15's small items: presets (path-like names refused, the Load list up to date), ``auto`` by index, the hub
line, the SAE picker label, the toolbar's Deploy button, failed-job errors in page words next to their button."""

from __future__ import annotations

import json
import time
import tomllib

from tests.app.apphelpers import ROOT, goto, make_flips_run, new_app, wait_job
from ui import state


def _all_json(folder) -> set[str]:
    return {p.name for p in folder.rglob("*.json")}


def test_preset_name_with_path_separators_is_refused_with_a_message(app, lab_env):
    from engine.method import presets

    goto(app, "features")
    app.text_input(key="index_text").input("1, 2")
    app.button(key="index_add").click().run()
    before = _all_json(lab_env.parent)
    for name in ("../../evil", "a/b", "..\\evil", ".hidden"):
        app.text_input(key="preset_name").input(name)
        app.button(key="preset_save").click().run()
        errors = [e.value for e in app.error]
        assert any("Not saved" in e and "looks like a path" in e for e in errors), (name, errors)
        assert not any("--" in e for e in errors)
    assert _all_json(lab_env.parent) == before  # nothing written anywhere, not even evil.json
    assert not presets.preset_file("evil").exists()


def test_a_saved_preset_is_in_the_load_list_at_once(app):
    goto(app, "features")
    app.text_input(key="index_text").input("4, 5")
    app.button(key="index_add").click().run()
    app.text_input(key="preset_name").input("fresh-one")
    app.button(key="preset_save").click().run()  # one run: the list must already hold it
    assert any("Saved fresh-one.json" in s.value and "Preset list" in s.value for s in app.success)
    assert any("fresh-one" in o for o in app.selectbox(key="preset_choice").options)
    assert not any("--" in s.value for s in app.success)


def test_auto_by_index_adds_the_saes_shipped_preset(lab_env, tmp_path):
    from engine.lm.tiny import tiny_model, tiny_sae

    sae_dir = tmp_path / "sae-with-preset"
    tiny_sae(tiny_model(seed=0).d_model, d_sae=32, hook_name="blocks.1.hook_resid_post", model_name="").save_model(str(sae_dir))
    (sae_dir / "preset.json").write_text(json.dumps({"features": [3, 5, 7], "mode": "set", "values": [4.0]}))
    at = new_app()
    at.sidebar.selectbox(key=state.SAE_KEY).set_value(state.LOCAL_CHOICE).run()
    at.sidebar.text_input(key=state.LOCAL_SAE_KEY).input(str(sae_dir)).run()
    goto(at, "features")
    at.text_input(key="index_text").input("auto").run()
    assert not [e.value for e in at.error]
    assert any("auto: the 3 features of the SAE's shipped preset (3, 5, 7)" in c.value for c in at.caption)
    at.text_input(key="index_value").input("2.5")
    at.button(key="index_add").click().run()
    rows = at.session_state["clamp"]["rows"]
    local = [r for r in rows if str(sae_dir) in r["sae"]]
    assert local and local[-1]["features"][-3:] == [3, 5, 7] and local[-1]["values"][-3:] == [2.5, 2.5, 2.5], rows


def test_auto_without_a_preset_says_so(app):
    goto(app, "features")
    app.text_input(key="index_text").input("auto").run()
    errors = [e.value for e in app.error]
    assert any("this SAE has none" in e for e in errors) and not any("not an integer" in e for e in errors)


def test_hub_line_polls_until_the_check_answers(monkeypatch):
    import engine.lm.hub as hub

    state._hub_probe.clear()
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: time.sleep(1.0) or False)
    at = new_app()
    line = next(m.value for m in at.sidebar.markdown if "Hub:" in m.value)
    assert "checking" in line
    time.sleep(1.5)  # the check has answered; the page's one-second fragment redraws the line
    at.run()
    line = next(m.value for m in at.sidebar.markdown if "Hub:" in m.value)
    assert "offline (unreachable)" in line
    state._hub_probe.clear()


def test_sae_picker_labels_are_short_and_the_full_name_is_under_the_box(app):
    from ui.sidebar import sae_label

    assert sae_label("default:blocks.15.hook_resid_post") == "layer 15 · resid_post (shipped)"
    assert len(sae_label("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")) <= 34
    assert sae_label(state.LOCAL_CHOICE) == state.LOCAL_CHOICE
    assert app.sidebar.selectbox(key=state.SAE_KEY).options[0] == "tiny random SAE"
    assert any("`default`" in c.value for c in app.sidebar.caption)


def test_toolbar_has_no_deploy_button():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] in ("minimal", "viewer")


def test_failed_sweep_error_is_under_its_button_in_page_words(lab_env, monkeypatch):
    from engine.errors import LabError
    from engine.recovery import sweep

    make_flips_run(lab_env, "tiny-run", n=2)

    def broken(*args, **kwargs):
        raise LabError("--top-k must be ≥ 0, got -1; see `python -m engine sweep --help`")

    monkeypatch.setattr(sweep, "run_sweep", broken)  # the page imports it by name on every run
    at = new_app()
    goto(at, "recovery")
    at.button(key="start_sweep").click().run()
    assert wait_job("sweep").status == "failed"
    at.run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("The last sweep failed: k (top changed features) must be ≥ 0") for e in errors), errors
    assert not any("--" in e for e in errors), errors
    # in page order, the error is the next element after the Start sweep button
    order = _walk(at.main)
    i_button = next(i for i, el in enumerate(order) if getattr(el, "key", None) == "start_sweep")
    i_error = next(i for i, el in enumerate(order) if el.type == "error" and "sweep failed" in str(getattr(el, "value", "")))
    assert 0 < i_error - i_button <= 2, (i_button, i_error)


def _walk(node) -> list:
    """The page's elements in document order."""
    out = []
    for child in getattr(node, "children", {}).values():
        if getattr(child, "children", None):
            out.extend(_walk(child))
        else:
            out.append(child)
    return out
