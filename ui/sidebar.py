"""The sidebar: model and SAE picker, device and hub status, presenter mode, the labeller name."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError
from engine.lm.models import is_default_model
from engine.store import labels
from ui import labelling, render, state

DEVICES = ["auto", "cpu", "cuda", "mps"]


@st.cache_resource(show_spinner=False)
def _model_options() -> list[str]:
    from engine.lm.loading import available_models

    return available_models()


@st.cache_resource(show_spinner=False)
def _default_sae_options() -> list[str]:
    from engine.lm.sae_sources import default_sae_names, primary_default_hook

    names, primary = default_sae_names(), primary_default_hook()
    if primary is None:
        return []
    return [f"default:{primary}", *(f"default:{n}" for n in names if n != primary)]


def _sae_options(model_name: str) -> tuple[list[str], dict[str, str]]:
    """SAE choices for ``model_name`` and a caption per choice."""
    options: list[str] = []
    captions: dict[str, str] = {}
    if model_name == "tiny":
        options.append("default")
        captions["default"] = "random tiny SAE (tests)"
    elif is_default_model(model_name):
        shipped = _default_sae_options()
        options.extend(shipped)
        for o in shipped:
            captions[o] = "shipped, offline"
    for row in state.registry_options(model_name):
        spec = f"{row['release']}/{row['sae_id']}"
        options.append(spec)
        captions[spec] = "sae_lens registry (from the local cache, else downloaded)"
    options.append(state.LOCAL_CHOICE)
    captions[state.LOCAL_CHOICE] = "an sae_lens folder on this machine"
    return options, captions


def sae_label(spec: str) -> str:
    """A short label for the narrow SAE box: ``default:blocks.15.hook_resid_post`` → ``layer 15 · resid_post (shipped)``."""
    if spec == "default":
        return "tiny random SAE"
    if spec.startswith("default:blocks."):
        parts = spec.removeprefix("default:blocks.").split(".", 1)
        if len(parts) == 2 and parts[0].isdigit():
            return f"layer {parts[0]} · {parts[1].removeprefix('hook_')} (shipped)"
    if "/" in spec and len(spec) > 34:  # a registry release/sae_id: its end tells the choices apart
        return "…" + spec[-33:]
    return spec


def render_sidebar() -> None:
    """Draw the sidebar; choices land in ``st.session_state`` (see ``ui.state``)."""
    sb = st.sidebar
    presenter = sb.toggle("Presenter mode", key="presenter", bind="query-params", help="Larger type, settings hidden, replay saved runs offline.")
    render.apply_presenter_style(presenter)
    models = _model_options()
    default = state.default_model_name()
    # In presenter mode the picker is folded away (still rendered, so the choice is kept).
    with sb.expander("Model and SAE", expanded=not presenter):
        model = st.selectbox("Model", models, index=models.index(default) if default in models else 0, key=state.MODEL_KEY, bind="query-params",
                             help="`default` is SmolLM2-135M-Instruct, shipped offline. Others need the model hub.")
        st.selectbox("Device", DEVICES, key=state.DEVICE_KEY, bind="query-params", help="auto: CUDA, then MPS, then CPU")
        options, captions = _sae_options(model)
        # A previous choice that does not fit the new model falls back to the first option.
        if st.session_state.get(state.SAE_KEY) not in options:
            st.session_state.pop(state.SAE_KEY, None)
        choice = st.selectbox("SAE", options, key=state.SAE_KEY, bind="query-params", format_func=sae_label,
                              help="Shipped default SAEs, the sae_lens registry for this model, or a local folder.")
        # the box is narrow: the full name of the choice, wrapped, under it
        st.caption(f"`{choice}` — {captions.get(choice, '')}" if choice != state.LOCAL_CHOICE else captions.get(choice, ""))
        if choice == state.LOCAL_CHOICE:
            st.text_input("SAE folder", key=state.LOCAL_SAE_KEY, bind="query-params", placeholder="/path/to/sae (cfg.json + safetensors)")
    _executor(sb, presenter)
    sb.text_input("Labeller", key=labelling.LABELLER_KEY, bind="query-params", max_chars=labels.MAX_LABELLER,
                  placeholder="your name, for hand labels",
                  help="Every hand label you set on the Flips page is saved under this name (kept in the URL).")
    _status(sb, compact=presenter)


def _executor(sb, presenter: bool) -> None:
    """Where the jobs of the pages run: here, or on a Ray cluster (docs/CLUSTER.md)."""
    import os

    from engine.scale.config import RAY_ADDRESS_ENV

    with sb.expander("Executor", expanded=False):
        st.radio("Run jobs", ["local", "ray"], key=state.EXECUTOR_KEY, horizontal=True,
                 help="local: this server process. ray: shards of whole batches on a Ray cluster (same files as local).")
        if st.session_state.get(state.EXECUTOR_KEY) == "ray":
            st.text_input("Ray address", key=state.RAY_ADDRESS_KEY, value=os.environ.get(RAY_ADDRESS_ENV, ""),
                          placeholder="empty: a local Ray cluster; or HEAD_IP:6379, ray://HOST:10001, auto")
            c1, c2 = st.columns(2)
            c1.number_input("Workers", 1, 1024, 2, key=state.RAY_WORKERS_KEY)
            c2.number_input("GPUs per worker", 0.0, 8.0, 0.0, 0.5, key=state.RAY_GPUS_KEY)


def _status(sb, compact: bool = False) -> None:
    import torch

    name, device = state.model_choice()
    gpu = torch.cuda.is_available()
    lines = []
    try:
        lm = state.get_lm()
        lines.insert(0, f"**Model:** {lm.name} on `{lm.device}`")
        try:
            sae = state.get_sae()
            lines.insert(1, f"**SAE:** `{sae.hook_name}` · d_sae {sae.d_sae}")
        except LabError as exc:
            sb.warning(f"SAE: {exc}")
    except LabError as exc:
        sb.error(f"Model {name!r} ({device}): {exc}")
    except MemoryError:
        sb.error("Out of memory while loading the model; pick a smaller one.")
    if lines and not compact:
        sb.markdown("  \n".join(lines))
    with sb:
        _hub_line(gpu)


def hub_text(hub: bool | None) -> str:
    return "checking…" if hub is None else "reachable" if hub else "offline (unreachable)"


def _hub_line(gpu: bool) -> None:
    """The hub line, redrawn every second while the background check runs, so it never says "checking…" after the
    check has answered (the server log says so at the same moment)."""
    checking = state.hub_status() is None

    @st.fragment(run_every=1.0 if checking else None)
    def line() -> None:
        hub = state.hub_status()
        st.markdown(f"**Hub:** {hub_text(hub)} · **GPU:** {'yes' if gpu else 'no'}")
        if checking and hub is not None:
            st.rerun()  # once: the whole app, so the line stops polling

    line()
