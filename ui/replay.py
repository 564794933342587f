"""Presenter mode's replay: a saved recovery played back step by step from its files (no model, no network).

It opens on the newest run that has something to replay (a recovery record whose ``recovery.jsonl`` holds at least
one prompt with a loss history), unless the session's run has something itself. The charts use large axes, titles
and legends (``ui.charts.presenter_style``). The position survives a browser reload: the record, the step and
whether it was playing are kept in the URL (``?replay_record=…&replay_step=…&replay_playing=1``, next to ``?run=``
and ``?presenter=``), and a fresh session starts from there.
"""

from __future__ import annotations

import logging

import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from engine.store.files import read_jsonl
from ui import charts, state
from ui import recovery_views as rv

logger = logging.getLogger(__name__)

RECORD_PARAM, STEP_PARAM, PLAYING_PARAM = "replay_record", "replay_step", "replay_playing"
FRAME_S = 0.5
"""Seconds between two frames while playing."""
CHART_HEIGHT = 380


def replayable(record) -> bool:
    """Whether a recovery record has at least one prompt with a loss history to play back."""
    path = record.path / "recovery.jsonl"
    if record.kind != "recovery" or not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        return any(r.get("loss_history") for r in read_jsonl(path, torn_tail=True))
    except LabError as exc:
        logger.warning("not replayable: %s", exc)
        return False


def replayable_runs() -> dict[str, list]:
    """Run name → its replayable records (newest first), for every run that has one; newest run first."""
    out: dict[str, list] = {}
    for info in catalogue.list_runs():
        found = [r for r in info.recoveries if replayable(r)]
        if found:
            out[info.name] = found
    return out


def _param(name: str) -> str | None:
    try:
        return st.query_params.get(name)
    except Exception:  # noqa: BLE001 - the URL is a convenience only
        return None


def _set_params(**values: str | None) -> None:
    """Keep the replay's position in the URL (a reload starts from it)."""
    try:
        for k, v in values.items():
            if v is None:
                st.query_params.pop(k, None)
            elif st.query_params.get(k) != v:
                st.query_params[k] = v
    except Exception:  # noqa: BLE001 - the URL is a convenience only
        logger.debug("could not set query params", exc_info=True)


def presenter_page() -> None:
    """Pick the run and record to replay (the newest with something to replay by default), then replay it."""
    runs = replayable_runs()
    if not runs:
        st.info("No run has a recovery to replay yet. Turn presenter mode off, recover a run on this page, and come back.")
        return
    names = list(runs)
    current = state.current_run()
    index = names.index(current) if current in names else 0  # the newest run with something to replay
    name = st.selectbox("Run to replay", names, index=index, key=f"replay_run:{names[index]}",
                        help="Only runs with a recovery to replay are listed; the newest is opened first.")
    if name != current:
        state.set_current_run(name)
    record_names = [r.name for r in runs[name]]
    wanted = _param(RECORD_PARAM)
    record_name = st.selectbox("Recovery", record_names, index=record_names.index(wanted) if wanted in record_names else 0,
                               key=f"replay_record:{name}")
    replay_section(catalogue.get_run(name), next(r for r in runs[name] if r.name == record_name))


def replay_section(info, record) -> None:
    """Play ``record`` of run ``info`` back: Play, Pause, Restart; the charts grow, then the rates and the texts."""
    name = info.name
    st.header(f"Replay of `{name}`")
    s = info.summary or {}
    st.markdown(
        f"**{s.get('n_valid', '?')} valid flips** out of {s.get('n_prompts', '?')} prompts: the clamp made the model refuse "
        "requests it answered before. Can a small δ, which leaves the clamped features where they are, bring the answers back?"
    )
    try:
        records = catalogue.read_records(name, "recovery.jsonl", record.name)
    except LabError as exc:
        st.error(str(exc))
        return
    n_steps = max((len(r.get("loss_history") or []) for r in records), default=0)
    step_key, play_key = f"replay_step:{name}:{record.name}", f"replay_playing:{name}:{record.name}"
    if step_key not in st.session_state:  # a new session (a reload) starts where the URL says, when it is this record
        same = _param(RECORD_PARAM) == record.name
        try:
            start = int(_param(STEP_PARAM)) if same and _param(STEP_PARAM) is not None else n_steps
        except ValueError:
            start = n_steps
        st.session_state[step_key] = max(0, min(n_steps, start))
        st.session_state[play_key] = same and _param(PLAYING_PARAM) == "1" and st.session_state[step_key] < n_steps

    def play() -> None:
        if st.session_state[step_key] >= n_steps:
            st.session_state[step_key] = 0
        st.session_state[play_key] = True

    def pause() -> None:
        st.session_state[play_key] = False

    def restart() -> None:
        st.session_state[step_key] = 0
        st.session_state[play_key] = False

    c1, c2, c3, _ = st.columns([1, 1, 1.2, 2.5])
    c1.button("Play", icon=":material/play_arrow:", key="replay_play", on_click=play, width="stretch")
    c2.button("Pause", icon=":material/pause:", key="replay_pause", on_click=pause, width="stretch")
    c3.button("Restart", icon=":material/replay:", key="replay_restart", on_click=restart, width="stretch")
    playing = bool(st.session_state[play_key])
    stride = max(1, n_steps // 60)

    @st.fragment(run_every=FRAME_S if playing else None)
    def frame() -> None:
        step = int(st.session_state[step_key])
        if st.session_state[play_key]:
            step = min(n_steps, step + stride)
            st.session_state[step_key] = step
        _set_params(**{RECORD_PARAM: record.name, STEP_PARAM: str(step), PLAYING_PARAM: "1" if st.session_state[play_key] else None})
        st.progress(step / n_steps if n_steps else 1.0, text=f"step {step} of {n_steps}")
        big_charts(rv.history_events(records, upto=step))
        if st.session_state[play_key] and step >= n_steps:
            st.session_state[play_key] = False
            _set_params(**{PLAYING_PARAM: None})
            st.rerun()

    frame()
    if not playing and st.session_state[step_key] >= n_steps:
        if record.summary:
            rv.summary_metrics(record.summary)
        ids = [r["id"] for r in records]
        pick = st.selectbox("Prompt", ids, format_func=lambda i: f"#{i}", key=f"replay_pick:{name}")
        flips = {f["id"]: f for f in catalogue.read_records(name, "flips.jsonl")}
        rv.texts_side_by_side(next(r for r in records if r["id"] == pick), flips.get(pick, {}))


def big_charts(events: list[dict]) -> None:
    """Loss and drift per prompt (and per clamped layer when there are several), with presenter-sized axes and labels."""
    df = charts.step_frame(events)
    layers = charts.layer_drift_frame(events)
    multi = layers["layer"].nunique() > 1
    cols = st.columns(3 if multi else 2)
    cols[0].altair_chart(charts.presenter_style(charts.metric_chart(df, "loss", "Loss per step", CHART_HEIGHT)), width="stretch")
    cols[1].altair_chart(charts.presenter_style(charts.metric_chart(df, "drift", "Drift, clamped features", CHART_HEIGHT)),
                         width="stretch")
    if multi:
        cols[2].altair_chart(charts.presenter_style(charts.layer_drift_chart(layers, CHART_HEIGHT)), width="stretch")
