"""The Pick page takes a local checkpoint folder and a number format, checked by the engine, errors in page words."""

from __future__ import annotations

import json

from tests.app.apphelpers import new_app, problems
from tests.hf_checkpoints import build_checkpoint
from ui import state


def _use(at, folder: str, dtype: str = "auto"):
    at.text_input(key="pick_model_folder").input(folder).run()
    at.selectbox(key="pick_dtype").select(dtype).run()
    at.button(key="pick_use_model").click().run()
    return at


def _page_errors(at) -> list[str]:
    errors = [str(e.value) for e in at.error]
    assert not any("--" in e for e in errors), errors  # page words, never command-line flags
    return errors


def test_pick_page_refuses_bad_folders_and_loads_a_good_one_in_bfloat16(tmp_path):
    from engine.lm.tiny import tiny_sae

    at = new_app()
    assert not problems(at), problems(at)
    _use(at, str(tmp_path / "nowhere"))
    assert any("This model cannot be used: model folder" in e and "does not exist" in e for e in _page_errors(at))
    assert state.MODEL_FOLDER_KEY not in at.session_state or not at.session_state[state.MODEL_FOLDER_KEY]

    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    _use(at, str(mamba))
    assert any("MambaForCausalLM" in e and "supported architectures" in e for e in _page_errors(at))
    assert "**name:** tiny" in " ".join(m.value for m in at.markdown)  # the sidebar's model is still the one in use

    folder = build_checkpoint("gemma2", tmp_path / "gemma2")
    sae_dir = tmp_path / "sae"
    tiny_sae(64, d_sae=32, hook_name="blocks.0.hook_resid_post", model_name="").save_model(str(sae_dir))
    at.selectbox(key=state.SAE_KEY).select(state.LOCAL_CHOICE).run()
    at.text_input(key=state.LOCAL_SAE_KEY).input(str(sae_dir)).run()
    _use(at, str(folder), "bfloat16")
    assert not problems(at), problems(at)
    shown = " ".join(m.value for m in at.markdown)
    assert f"**name:** {folder.resolve()}" in shown and "**number format:** bfloat16" in shown
    assert at.session_state[state.MODEL_FOLDER_KEY] == str(folder.resolve())
    assert at.session_state[state.DTYPE_KEY] == "bfloat16"
