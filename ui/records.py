"""Recovery records of a run in the dashboard: the valid-set choice, the record picker, resume and delete.

Every recovery or sweep lives in its own record (``engine.store.records``); these widgets let a page pick one, offer
"Resume" for a record a server restart or a crash left unfinished, and move one to the trash.
"""

from __future__ import annotations

import time

import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from engine.store.records import RecoveryRecord, check_name
from engine.store.valid_set import VALID_CHOICES, VALID_HELP, valid_counts

STATUS_WORDS = {"complete": "complete", "interrupted": "interrupted — can resume", "empty": "started, nothing finished"}


def describe(record: RecoveryRecord) -> str:
    """One line for a picker: name, status, projection, budget(s), valid set, flips done."""
    cfg = record.config
    when = time.strftime("%m-%d %H:%M", time.localtime(record.created))
    if record.kind == "sweep":
        what = f"budgets {', '.join(f'{b:g}' for b in cfg.get('budgets', []))}"
    else:
        what = f"B {cfg.get('budget')}"
    n_total = len(cfg.get("flip_ids", [])) or "?"
    n_done = record.n_finished  # not the summary's count: an interrupted record has rows before its summary
    return (f"{record.name} · {cfg.get('projection', '?')} · {what} · valid = {cfg.get('valid', 'judge')} · "
            f"{n_done}/{n_total if record.kind == 'recovery' else len(cfg.get('budgets', []))} · {STATUS_WORDS[record.status]} · {when}")


def valid_choice(info, key: str) -> tuple[str, int]:
    """Which flips to use (judge / labels / genuine), with how many each keeps; returns (choice, count)."""
    try:
        counts = valid_counts(info.path)
    except LabError as exc:
        st.error(f"The hand labels of this run cannot be read: {exc}")
        counts = {"judge": int((info.summary or {}).get("n_valid", 0)), "labels": 0, "genuine": 0}
    choice = st.radio(
        "Which flips count as valid", VALID_CHOICES, horizontal=True, key=key,
        format_func=lambda v: f"{v} ({counts[v]}): {VALID_HELP[v]}",
        help="Label flips on the Flips page; a flip's label over several labellers is their majority (a tie is 'unsure').",
    )
    return choice, counts[choice]


def record_name(info, key: str) -> tuple[str | None, str | None]:
    """An optional name for a new record, refused when malformed or taken; returns (name or None, error or None)."""
    text = st.text_input("Name (optional)", key=key, placeholder="generated from projection, budget and time",
                         help="The recovery is kept under this name in the run; an earlier one is never touched.").strip()
    if not text:
        return None, None
    try:
        check_name(text)
    except LabError as exc:
        st.error(str(exc))
        return None, str(exc)
    if any(r.name == text for r in info.records):
        msg = f"This run already has a recovery named `{text}`; choose another name (or leave it empty)."
        st.error(msg)
        return None, msg
    return text, None


def pick(info, kind: str, key: str) -> RecoveryRecord | None:
    """A picker over the run's records of ``kind`` (newest first); None when there are none."""
    records = info.recoveries if kind == "recovery" else info.sweeps
    if not records:
        return None
    names = [r.name for r in records]
    chosen = st.selectbox(f"{'Recovery' if kind == 'recovery' else 'Sweep'} of this run", names, key=key,
                          format_func=lambda n: describe(next(r for r in records if r.name == n)))
    return next(r for r in records if r.name == chosen)


def delete_button(info, record: RecoveryRecord, key: str) -> None:
    """Move ``record`` to the trash behind a confirmation that resets after each delete."""
    done = st.session_state.pop(f"{key}:deleted", None)
    if done:
        st.success(done)
    with st.popover(f"Delete `{record.name}`"):
        gen = st.session_state.get(f"{key}:gen", 0)
        sure = st.checkbox(f"Move `{record.name}` to the trash (restore it from the Runs page)", key=f"{key}:sure:{gen}")
        if st.button("Delete", key=f"{key}:go:{gen}", disabled=not sure):
            try:
                entry = catalogue.delete_recovery(info.name, record.name)
            except LabError as exc:
                st.error(str(exc))
                return
            st.session_state[f"{key}:gen"] = gen + 1  # a fresh, unticked confirmation
            st.session_state[f"{key}:deleted"] = (f"Moved {record.kind} `{record.name}` of `{info.name}` to the trash "
                                                  f"(entry `{entry.id}`); restore it from the Runs page.")
            st.rerun()
