"""Presenter mode's replay: a saved recovery run played back step by step from its files (no model, no network)."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from ui import recovery_views as rv


def replay_section(name: str, info) -> None:
    st.header(f"Replay of `{name}`")
    s = info.summary or {}
    st.markdown(
        f"**{s.get('n_valid', '?')} valid flips** out of {s.get('n_prompts', '?')} prompts: the clamp made the model refuse "
        "requests it answered before. Can a small δ, which leaves the clamped features where they are, bring the answers back?"
    )
    if not info.has_recovery:
        st.info("This run has no recovery yet, so there is nothing to replay. Pick another run in the selector above.")
        return
    from ui import records as record_views

    record = record_views.pick(info, "recovery", "replay_record")
    try:
        records = catalogue.read_records(name, "recovery.jsonl", record.name)
    except LabError as exc:
        st.error(str(exc))
        return
    n_steps = max((len(r.get("loss_history") or []) for r in records), default=0)
    step_key, play_key = f"replay_step:{name}:{record.name}", f"replay_playing:{name}:{record.name}"
    st.session_state.setdefault(step_key, n_steps)
    st.session_state.setdefault(play_key, False)

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

    @st.fragment(run_every=0.5 if playing else None)
    def frame() -> None:
        step = int(st.session_state[step_key])
        if st.session_state[play_key]:
            step = min(n_steps, step + stride)
            st.session_state[step_key] = step
        st.progress(step / n_steps if n_steps else 1.0, text=f"step {step} of {n_steps}")
        rv.live_charts(rv.history_events(records, upto=step), height=320)
        if st.session_state[play_key] and step >= n_steps:
            st.session_state[play_key] = False
            st.rerun()

    frame()
    if not playing and st.session_state[step_key] >= n_steps:
        if record.summary:
            rv.summary_metrics(record.summary)
        ids = [r["id"] for r in records]
        pick = st.selectbox("Prompt", ids, format_func=lambda i: f"#{i}", key=f"replay_pick:{name}")
        flips = {f["id"]: f for f in catalogue.read_records(name, "flips.jsonl")}
        rv.texts_side_by_side(next(r for r in records if r["id"] == pick), flips.get(pick, {}))
