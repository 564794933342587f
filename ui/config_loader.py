"""'Load a configuration' on the Flips page: a ready configuration (``configs/*.json``) fills the flips form and the
clamp set, and says what is missing from the local Hugging Face cache. The engine reads and checks the file
(``engine.method.run_config``); this module only renders it and writes the form's session state."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError

SELECT_KEY = "config_loader_choice"
LOADED_KEY = "config_loader_loaded"
"""Session key: the name of the configuration last applied to the form."""
_FORM = {"max_new_tokens": "flips_max_new", "batch_size": "flips_batch", "seed": "flips_seed"}
"""Generation setting → the flips form's field key (ui.views.prompt_source_form)."""


def render(lm) -> None:
    """The expander: pick a configuration, see its settings and what is not cached, and fill the form with it.
    Nothing without a model or in presenter mode (the form is hidden there)."""
    from engine.method.run_config import config_files
    from ui import state

    files = config_files()
    if lm is None or not files or state.presenter():
        return
    with st.expander("Load a configuration", expanded=False):
        st.caption("A ready configuration sets the model, the clamp set and the answer length of a published setting. "
                   "Files it needs are looked up in this machine's Hugging Face cache; nothing is downloaded here.")
        names = {p.stem: p for p in files}
        choice = st.selectbox("Configuration", list(names), key=SELECT_KEY)
        try:
            _show(lm, names[choice])
        except LabError as exc:
            from ui.validate import page_message

            st.error(f"This configuration cannot be used: {page_message(exc, 'Configuration')}")


def _show(lm, path) -> None:
    from engine.method.clamp_sets import read_clamp_file
    from engine.method.run_config import missing_downloads, read_run_config

    cfg = read_run_config(path)
    if cfg.description:
        st.markdown(cfg.description)
    rc = cfg.recovery_config()
    st.markdown(
        f"- **model:** {cfg.model}" + (f" ({cfg.dtype})" if cfg.dtype else "") + "\n"
        f"- **clamp:** {cfg.clamp.mode or 'each row’s mode'} × {cfg.clamp.value if cfg.clamp.value is not None else 'each row’s value'}"
        f" at every position · **answer length:** {cfg.generation.max_new_tokens} tokens, greedy\n"
        f"- **recovery:** budget {rc.budget:g}, {rc.steps} steps ({rc.boundary_steps} boundary), learning rate {rc.lr:g}, "
        f"projection {rc.projection}"
    )
    clamp = cfg.clamp_path()
    rows = None
    if clamp is not None and (clamp.startswith("preset:") or _is_file(clamp)):
        rows = cfg.clamp_rows(read_clamp_file(clamp)[0])
    missing = missing_downloads(cfg, rows)
    not_built = [m for m in missing if m.startswith("clamp file")]
    files = [m for m in missing if not m.startswith("clamp file")]
    if not_built:
        st.warning("The clamp set of this configuration is not built yet. Build it with the feature search, "
                   "then load the configuration again:")
        st.code(cfg.feature_search.get("command", ""), language="bash")
    if files:
        st.warning(f"Not in the local Hugging Face cache ({len(files)} files); download them before running:")
        st.code("\n".join(files), language="text")
    elif not not_built:
        st.success("Every file this configuration needs is in the local cache.")
    if lm.name != cfg.model:
        st.info(f"This configuration is for the model **{cfg.model}**; the model loaded now is **{lm.name}**. "
                "Choose it in the sidebar to run it; the answer length can be filled now.")
    if st.button("Fill the form with this configuration", key="config_loader_fill"):
        for setting, key in _FORM.items():
            st.session_state[key] = str(getattr(cfg.generation, setting))
        if cfg.prompts and cfg.prompts.startswith("builtin:"):
            from ui.views import SOURCES

            label = next((k for k, v in SOURCES.items() if v == cfg.prompts), None)
            if label:
                st.session_state["flips_source"] = label
        if rows is not None and lm.name == cfg.model:
            from ui import clamp_set

            clamp_set.set_rows(lm, rows, f"configuration {cfg.name}")
        st.session_state[LOADED_KEY] = cfg.name
        st.rerun()  # the clamp set shown above the form is drawn again from the new rows
    if st.session_state.get(LOADED_KEY) == cfg.name:
        st.caption(f"The form below holds the settings of {cfg.name}.")


def _is_file(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()
