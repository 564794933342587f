"""'Load a configuration' on the Flips page: the paper's configuration says what is missing; a tiny one fills the form
and the clamp set; a bad file is one message in page words. Tiny model, no hub."""

from __future__ import annotations

import json

import pytest

from tests.app.apphelpers import clamp_rows, goto, problems


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    from engine.method import run_config

    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.setattr(run_config, "CONFIG_DIR", folder)
    return folder


def _texts(app) -> str:
    return "\n".join([str(e.value) for e in app.warning] + [str(e.value) for e in app.code] + [str(e.value) for e in app.info]
                     + [str(e.value) for e in app.success] + [str(e.value) for e in app.markdown])


def test_paper_configuration_lists_what_is_missing(app, hf_cache):
    goto(app, "flips")
    assert app.selectbox(key="config_loader_choice").value == "paper-refusal-gemma-2-2b-it"
    text = _texts(app)
    assert "google/gemma-2-2b-it/model-00001-of-00002.safetensors" in text
    assert "clamp set of this configuration is not built yet" in text and "features direction" in text
    assert "for the model **gemma-2-2b-it**" in text
    assert not app.exception and not problems(app)


def test_a_configuration_fills_the_form_and_the_clamp_set(app, config_dir, hf_cache):
    rows = [{"sae": "tiny:blocks.1.hook_resid_post", "features": [0, 3], "mode": "set", "values": [6.0, 7.0]},
            {"sae": "tiny:blocks.2.hook_resid_post", "features": [1], "mode": "set", "values": [2.0]}]
    (config_dir / "tiny.clamp.json").write_text(json.dumps({"clamps": rows}))
    (config_dir / "tiny-paperlike.json").write_text(json.dumps({
        "name": "tiny-paperlike", "model": "tiny", "prompts": "builtin:harmful",
        "clamp": {"file": "tiny.clamp.json", "mode": "multiply", "value": 3.0},
        "generation": {"max_new_tokens": 5, "batch_size": 2, "seed": 7}}))
    goto(app, "flips")
    assert app.selectbox(key="config_loader_choice").options == ["tiny-paperlike"]  # the clamp file is not listed
    assert "Every file this configuration needs is in the local cache." in _texts(app)
    app.button(key="config_loader_fill").click().run()
    assert not app.exception and not problems(app)
    assert app.text_input(key="flips_max_new").value == "5"
    assert app.text_input(key="flips_batch").value == "2"
    assert app.text_input(key="flips_seed").value == "7"
    assert app.radio(key="flips_source").value == "Built-in harmful"
    assert clamp_rows(app) == [{"sae": "tiny:blocks.1.hook_resid_post", "features": [0, 3], "mode": "multiply", "values": [3.0, 3.0]},
                               {"sae": "tiny:blocks.2.hook_resid_post", "features": [1], "mode": "multiply", "values": [3.0]}]
    assert "configuration tiny-paperlike" in app.session_state["clamp"]["origin"]
    assert not any("Session State" in str(w.value) for w in app.warning)


def test_a_bad_configuration_is_one_message_in_page_words(app, config_dir):
    (config_dir / "broken.json").write_text(json.dumps({"name": "broken", "model": "tiny", "recovery": {"steps": 0}}))
    goto(app, "flips")
    errors = [e for e in problems(app) if "cannot be used" in e]
    assert len(errors) == 1 and "steps must be at least 1" in errors[0] and "--" not in errors[0]
    assert not app.exception
