"""Session state, cached model/SAE loading, run selection and job re-attachment (the clamp set: ``ui.clamp_set``).

Models and SAEs are cached with ``st.cache_resource``: one object shared by every browser session. Clamp hooks
are only ever attached inside ``engine.method.clamp.clamped`` (which holds the model's lock and always removes them),
so two sessions never see each other's clamps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from engine.errors import LabError
from engine.services import jobs

logger = logging.getLogger(__name__)

MODEL_KEY, DEVICE_KEY, SAE_KEY, LOCAL_SAE_KEY = "model_name", "device", "sae_choice", "local_sae_path"
MODEL_FOLDER_KEY, DTYPE_KEY = "model_folder", "model_dtype"
"""A local checkpoint folder chosen on the Pick page (replaces the sidebar's model while set), and the number format."""
LOCAL_CHOICE = "Local folder…"
RUN_KEY = "run"
EXECUTOR_KEY, RAY_ADDRESS_KEY, RAY_WORKERS_KEY, RAY_GPUS_KEY = "executor", "ray_address", "ray_workers", "ray_gpus"


def executor_or_stop():
    """:func:`executor`, or its problem shown in the page (worded for it) and the script stopped: no job starts."""
    try:
        return executor()
    except LabError as exc:
        st.error(f"Jobs cannot be sent to the chosen executor: {exc}. Fix it in the sidebar's Executor, or run locally.")
        st.stop()


def executor():
    """The sidebar's executor (``engine.scale.config.ExecutorConfig``), checked; a bad one is a LabError whose
    message the page shows before any job starts (an unreachable Ray address is found here, in seconds)."""
    from engine.scale.config import ExecutorConfig

    if st.session_state.get(EXECUTOR_KEY, "local") != "ray":
        return ExecutorConfig()
    exe = ExecutorConfig("ray", ray_address=(st.session_state.get(RAY_ADDRESS_KEY) or "").strip() or None,
                         workers=int(st.session_state.get(RAY_WORKERS_KEY, 2)),
                         gpus_per_worker=float(st.session_state.get(RAY_GPUS_KEY, 0.0))).check()
    from engine.scale.pool import check_reachable, require_ray

    require_ray()
    if exe.address and exe.address != "auto":
        check_reachable(exe.address)
    return exe


def default_model_name() -> str:
    """The model the sidebar starts on: ``default`` (offline), or ``SAE_LAB_UI_MODEL`` (tests use ``tiny``)."""
    return os.environ.get("SAE_LAB_UI_MODEL", "default")


# ------------------------------------------------------------------------------------------------ cached loads


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def _load_model(name: str, device: str, dtype: str = "auto"):
    from engine.lm.loading import load_model

    return load_model(name, device, dtype)


@st.cache_resource(show_spinner="Loading the SAE…", max_entries=6)
def _load_sae(spec: str, model_name: str, device: str, dtype: str = "auto"):
    from engine.lm.sae_sources import load_sae

    return load_sae(spec, _load_model(model_name, device, dtype))


@st.cache_resource(show_spinner=False)
def registry_options(model_name: str) -> list[dict]:
    """sae_lens registry SAEs for ``model_name`` (none for the offline default and tiny: no release targets them,
    and reading the registry costs a second or two of start-up)."""
    from engine.lm.models import is_default_model
    from engine.lm.sae_sources import registry_saes

    if is_default_model(model_name) or model_name == "tiny":
        return []
    try:
        return registry_saes(model_name)
    except Exception:  # noqa: BLE001 - a broken registry must not break the sidebar
        logger.exception("listing registry SAEs failed")
        return []


@st.cache_resource(show_spinner=False)
def _hub_probe() -> dict:
    """Ask once, in the background: an unreachable hub can take seconds to time out, and nothing should wait."""
    import threading

    from engine.lm.hub import hub_reachable

    result: dict = {"reachable": None}

    def probe() -> None:
        result["reachable"] = hub_reachable()

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    return result


def hub_status() -> bool | None:
    """True/False once known; None while the background check is still running."""
    return _hub_probe()["reachable"]


def model_choice() -> tuple[str, str]:
    """``(name, device)``: the Pick page's model folder when one is set, else the sidebar's model."""
    name = st.session_state.get(MODEL_FOLDER_KEY) or st.session_state.get(MODEL_KEY, default_model_name())
    return name, st.session_state.get(DEVICE_KEY, "auto")


def model_dtype() -> str:
    """The number format chosen on the Pick page (``auto`` until one is chosen)."""
    return st.session_state.get(DTYPE_KEY, "auto")


def set_model_source(folder: str, dtype: str) -> str | None:
    """Check a model folder (empty: the sidebar's model) and a number format with the engine's checks; keep them when
    they are good. Returns the problem in page words, or None."""
    from engine.lm.dtypes import check_dtype_choice
    from engine.lm.hf_sources import check_model_folder

    folder = (folder or "").strip()
    try:
        dtype = check_dtype_choice(dtype)
        path = str(check_model_folder(folder)) if folder else None
    except LabError as exc:
        return f"This model cannot be used: {exc}."
    st.session_state[MODEL_FOLDER_KEY] = path
    st.session_state[DTYPE_KEY] = dtype
    return None


def sae_spec() -> str | None:
    """The SAE spec chosen in the sidebar (``default``, ``RELEASE/ID``, a folder), or None if none is usable."""
    choice = st.session_state.get(SAE_KEY, "default")
    if choice == LOCAL_CHOICE:
        path = (st.session_state.get(LOCAL_SAE_KEY) or "").strip()
        return path or None
    return choice


def get_lm():
    """The chosen model, loaded once per process; raises LabError with the reason when it cannot load."""
    name, device = model_choice()
    return _load_model(name, device, model_dtype())


def load_sae_spec(spec: str):
    """The SAE ``spec`` for the chosen model, loaded once per process (a clamp set's rows name their SAEs so)."""
    name, device = model_choice()
    return _load_sae(spec, name, device, model_dtype())


def get_sae():
    spec = sae_spec()
    if spec is None:
        from engine.lm.models import is_default_model
        from engine.lm.sae_sources import default_sae_names

        if is_default_model(model_choice()[0]) and not default_sae_names():
            raise LabError("no default SAE is shipped in this checkout (train it with `python -m engine.sae_recipe train`); "
                           "or type the path of a local sae_lens SAE folder in the sidebar")
        raise LabError("choose an SAE in the sidebar (or type a local folder path)")
    name, device = model_choice()
    return _load_sae(spec, name, device, model_dtype())


def try_model():
    """``(lm, sae)``, or ``(None, None)`` with the reason shown in the page (saved results stay viewable)."""
    try:
        return get_lm(), get_sae()
    except LabError as exc:
        st.error(str(exc))
        st.info("Pick another model or SAE in the sidebar: the offline default (`default`) needs no downloads.")
    except MemoryError:
        st.error("Out of memory while loading the model; pick a smaller model or close other jobs.")
    return None, None


def require_model():
    """``(lm, sae)`` for a page, or an error in the page and a stop (the sidebar stays usable)."""
    lm, sae = try_model()
    if lm is None:
        st.stop()
    return lm, sae


# ------------------------------------------------------------------------------------------------ errors


@contextmanager
def shown_errors(what: str = "") -> Iterator[None]:
    """Show a LabError (or an out-of-memory) as one clear message in the page instead of a traceback."""
    try:
        yield
    except LabError as exc:
        from ui.render import ui_words  # page words, never --flags

        st.error(f"{what}: {ui_words(str(exc))}" if what else ui_words(str(exc)))
    except MemoryError:
        st.error("Out of memory: try fewer prompts, a smaller batch or a smaller model.")
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            st.error("Out of GPU memory: try fewer prompts, a smaller batch or a smaller model.")
        else:
            raise


# ------------------------------------------------------------------------------------------------ runs


def current_run() -> str | None:
    """The session's run; after a browser reload, the one named in the URL (``?run=…``)."""
    name = st.session_state.get(RUN_KEY)
    if name is None:
        name = st.query_params.get(RUN_KEY)
        if name:
            st.session_state[RUN_KEY] = name
    return name


def set_current_run(name: str | None) -> None:
    st.session_state[RUN_KEY] = name
    try:
        if name:
            st.query_params[RUN_KEY] = name
        else:
            st.query_params.pop(RUN_KEY, None)
    except Exception:  # noqa: BLE001 - the URL is a convenience only
        logger.debug("could not set query param", exc_info=True)


def run_picker(label: str, key: str, need: str = "flips.jsonl", help: str | None = None) -> str | None:
    """A selectbox of stored runs that have ``need`` (``recovery.jsonl``: in any of its recovery records); the choice
    becomes the session's current run."""
    from engine.store.catalogue import list_runs

    runs = [r.name for r in list_runs() if (r.has_recovery if need == "recovery.jsonl" else (r.path / need).is_file())]
    if not runs:
        return None
    current = current_run()
    index = runs.index(current) if current in runs else 0
    # The key follows the current run, so a run chosen elsewhere (a new flips run, another page) shows here.
    choice = st.selectbox(label, runs, index=index, key=f"{key}:{runs[index]}", help=help)
    if choice != current:
        set_current_run(choice)
    return choice


def require_run(label: str, key: str, need: str, missing: str, page: str, page_label: str):
    """The chosen run's ``RunInfo``; without any run that has ``need``, say ``missing``, link ``page`` and stop."""
    from engine.store import catalogue

    name = run_picker(label, key=key, need=need)
    if name is None:
        st.info(missing)
        st.page_link(page, label=page_label)
        st.stop()
    return catalogue.get_run(name)


# ------------------------------------------------------------------------------------------------ jobs


def attach_job(slot: str, kind: str, **meta) -> jobs.Job | None:
    """The job this session started in ``slot`` (kept in session state and in the URL), or else the newest
    running job of ``kind`` with ``meta``: how a page finds its job again after a switch or a reload."""
    job_id = st.session_state.get(slot) or st.query_params.get(slot)
    job = jobs.get_job(job_id)
    if job is not None and meta and any(job.meta.get(k) != v for k, v in meta.items()):
        job = None
    if job is None:
        found = jobs.find_jobs(kind, running_only=True, **meta)
        job = found[0] if found else None
    if job is not None:
        st.session_state[slot] = job.id
    return job


def remember_job(slot: str, job: jobs.Job) -> None:
    st.session_state[slot] = job.id
    try:
        st.query_params[slot] = job.id
    except Exception:  # noqa: BLE001 - the URL is a convenience only
        logger.debug("could not set query param", exc_info=True)


def presenter() -> bool:
    return bool(st.session_state.get("presenter", False))


def run_model_matches(info, lm) -> bool:
    """Whether the run was made with the loaded model; if not, say so in the page."""
    from engine.lm.models import is_default_model

    made_with = info.config.get("model_id") or info.config.get("model")
    same = made_with == lm.name or (is_default_model(made_with) and is_default_model(lm.name))
    if made_with and not same:
        st.error(f"Run `{info.name}` was made with model **{made_with}**, but **{lm.name}** is loaded. "
                 f"Pick {info.config.get('model', made_with)!r} in the sidebar to continue this run.")
        return False
    return True
