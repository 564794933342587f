"""The clamp set a session starts with is the sidebar SAE's shipped preset, from the very first page it opens."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest


def _first_page(folder: str) -> None:
    import streamlit as st

    from engine.lm.sae_sources import load_sae
    from engine.lm.tiny import tiny_model
    from ui import clamp_set

    lm = tiny_model(seed=0)
    state = clamp_set.clamp_state(lm, load_sae(folder, lm))
    st.write(f"rows={len(state['rows'])} origin={state['origin']}")


def test_the_first_call_returns_the_loaded_preset_not_an_empty_set(tmp_path, tiny_lm):
    """Before the fix the first call returned the empty dict it had made, although the preset was already stored:
    the Pick page said "No clamp set yet" while Flips clamped with the preset."""
    from engine.lm.tiny import tiny_sae

    folder = tmp_path / "sae"
    tiny_sae(tiny_lm.d_model, 64, "blocks.1.hook_resid_post", seed=1).save_model(str(folder))
    (folder / "preset.json").write_text(json.dumps({"features": [3, 5], "mode": "set", "values": [4.0]}))
    at = AppTest.from_function(_first_page, args=(str(folder),), default_timeout=120).run()
    assert not at.exception
    assert at.markdown[0].value == "rows=1 origin=the SAE's shipped preset"
