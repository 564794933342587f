"""The hand-labelling section of the Flips page: the labeller (one flip at a time, as the sidebar's labeller),
the judge–human agreement, the disagreements, and label CSV import/export. Labels live in the run directory
(``engine.store.labels``: ``RUN/labels.jsonl``)."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError
from engine.method.judge import JudgeConfig
from engine.store import agreement, label_csv, labels
from engine.store.catalogue import run_path
from engine.store.files import read_json_or_none
from ui.views import flip_card

LABELLER_KEY = "labeller"
"""Session key (and URL query parameter) of the labeller name set in the sidebar."""
SCOPES = {"Valid flips": "valid", "All prompts": "all", "Disagreements": "disagree"}
MAX_UPLOAD = 5_000_000


def labeller_name() -> str:
    """The sidebar's labeller name (stripped; ``""`` when none or unusable)."""
    try:
        return labels.check_labeller(st.session_state.get(LABELLER_KEY) or "")
    except LabError:
        return ""


def labelling_section(name: str, records: list[dict]) -> None:
    """Everything about hand labels of run ``name`` (its ``flips.jsonl`` records given)."""
    run = run_path(name)
    who = labeller_name()
    st.caption(f"Labelling as **{who}**." if who else
               "Labelling with no name: set **Labeller** in the sidebar so your labels are told apart from others'.")
    choice = st.radio("Label", list(SCOPES), horizontal=True, key="label_scope",
                      help="Valid flips: what the judge calls a flip. All prompts: include the judge's non-flips, so "
                           "the agreement table has both rows. Disagreements: flips where the judge and the humans differ.")
    scope = SCOPES[choice]
    try:
        found = agreement.agreement(run)
        gaps = agreement.disagreements(run)
    except LabError as exc:
        st.error(str(exc))
        return
    if scope == "valid":
        shown = [r for r in records if r.get("valid")]
    elif scope == "disagree":
        ids = {d.flip_id for d in gaps}
        shown = [r for r in records if int(r["id"]) in ids]
        _disagreement_table(gaps, records)
    else:
        shown = list(records)
    labeller(name, run, shown, who, scope)
    agreement_view(found)
    csv_tools(name, run)


def labeller(name: str, run, shown: list[dict], who: str, scope: str) -> None:
    """Label ``shown`` one at a time: Genuine (G) · Not a refusal (N) · Unsure (U) · Prev (K) · Next (J)."""
    if not shown:
        st.info({"valid": "This run has no valid flips to label.",
                 "disagree": "No disagreements: the judge and the humans agree on every flip labelled genuine or not."}.get(
                     scope, "This run has no records to label."))
        return
    mine = labels.labels_of(run, who)
    idx_key = f"label_idx:{name}:{scope}:{who}"
    if idx_key not in st.session_state:
        unlabelled = [i for i, r in enumerate(shown) if int(r["id"]) not in mine]
        st.session_state[idx_key] = unlabelled[0] if unlabelled else 0
    i = min(max(0, st.session_state[idx_key]), len(shown) - 1)
    rec = shown[i]
    fid = int(rec["id"])
    done = sum(int(r["id"]) in mine for r in shown)
    what = {"valid": "valid flips", "all": "prompts", "disagree": "disagreements"}[scope]
    st.progress(done / len(shown), text=f"{done}/{len(shown)} {what} labelled by {who or '(no name)'} · flip {i + 1} of {len(shown)}")
    flip_card(rec, _run_judge(run))
    current = mine.get(fid)
    note_key = f"note:{name}:{who}:{fid}"
    if note_key not in st.session_state:
        st.session_state[note_key] = current.note if current else ""
    st.text_input("Note (optional)", key=note_key, placeholder="why: e.g. 'apology but answers', 'refuses then answers'")

    def save(label: str) -> None:
        try:
            labels.set_label(run, fid, label, st.session_state.get(note_key, ""), labeller=who)
        except LabError as exc:
            st.session_state["label_error"] = str(exc)
            return
        st.session_state[idx_key] = min(i + 1, len(shown) - 1)

    def clear() -> None:
        try:
            labels.clear_label(run, fid, labeller=who)
        except LabError as exc:
            st.session_state["label_error"] = str(exc)

    def move(step: int) -> None:
        st.session_state[idx_key] = min(max(0, i + step), len(shown) - 1)

    def kind(label: str) -> str:
        return "primary" if current and current.label == label else "secondary"

    cols = st.columns(6)
    cols[0].button("Genuine refusal", key="lab_genuine", on_click=save, args=("genuine",), shortcut="G", type=kind("genuine"))
    cols[1].button("Not a refusal", key="lab_not", on_click=save, args=("not",), shortcut="N", type=kind("not"))
    cols[2].button("Unsure", key="lab_unsure", on_click=save, args=("unsure",), shortcut="U", type=kind("unsure"))
    cols[3].button("Clear", key="lab_clear", on_click=clear, disabled=current is None, help="Remove your label of this flip")
    cols[4].button("← Prev", key="lab_prev", on_click=move, args=(-1,), shortcut="K", disabled=i == 0)
    cols[5].button("Next →", key="lab_next", on_click=move, args=(1,), shortcut="J", disabled=i >= len(shown) - 1)
    if "label_error" in st.session_state:
        st.error(st.session_state.pop("label_error"))
    st.caption(f"Your label: **{current.label}**" + (f" — {current.note}" if current.note else "") if current else "Not labelled by you yet.")
    with st.expander("All labels of this run"):
        everyone = labels.get_labels(run)
        cons = labels.consensus(run)
        st.dataframe(
            [{"id": int(r["id"]), "judge valid": bool(r.get("valid")), "prompt": r.get("prompt", "")[:80],
              "consensus": cons.get(int(r["id"]), ""),
              "labels": ", ".join(f"{w or '(no name)'}: {lab.label}" for w, lab in everyone.get(int(r["id"]), {}).items()),
              "notes": " | ".join(lab.note for lab in everyone.get(int(r["id"]), {}).values() if lab.note)}
             for r in shown],
            hide_index=True, width="stretch",
        )


def _run_judge(run) -> JudgeConfig:
    """The judge config saved with the run (its verdicts are explained with it)."""
    config = read_json_or_none(run / "config.json") or {}
    return JudgeConfig.from_json(config.get("judge") if isinstance(config, dict) else None)


def _kappa_text(k: agreement.Kappa) -> str:
    return f"{k.value:.2f}" if k.value is not None else "—"


def agreement_view(found: agreement.Agreement) -> None:
    """The judge-vs-human 2×2 table with κ and n, and κ for each pair of labellers (when there are two or more)."""
    st.subheader("Judge vs humans")
    j = found.judge
    cols = st.columns(4)
    cols[0].metric("Flips compared", j.n, help="Flips whose consensus label is genuine or not")
    cols[1].metric("Cohen's κ", _kappa_text(j.kappa))
    cols[2].metric("Unsure (left out)", j.n_unsure)
    cols[3].metric("Not labelled", j.n_unlabelled)
    if j.kappa.value is None:
        st.caption(f"κ is not defined: {(j.kappa.reason or '').removeprefix('undefined: ')}.")
    st.dataframe(j.confusion.rows(), hide_index=True, key="agreement_table")
    st.caption("Rows: the judge's verdict (valid flip or not). Columns: the humans' consensus (the majority label "
               "over labellers; a tie counts as unsure). genuine ⇔ valid."
               + (f" {j.n_unknown} labelled flip ids are not in flips.jsonl and are left out." if j.n_unknown else ""))
    if len(found.labellers) >= 2:
        st.markdown("**Between labellers** (Cohen's κ over genuine / not / unsure, on the flips both labelled)")
        if found.pairs:
            st.dataframe([{"labeller A": p.a or "(no name)", "labeller B": p.b or "(no name)", "n": p.n, "κ": p.kappa.value,
                           "note": p.kappa.reason or ""} for p in found.pairs], hide_index=True, key="labeller_kappa")
        else:
            st.caption("No two labellers have labelled the same flip yet.")


def _disagreement_table(gaps: list[agreement.Disagreement], records: list[dict]) -> None:
    prompts = {int(r["id"]): r.get("prompt", "") for r in records}
    st.markdown(f"**{len(gaps)} disagreements** between the judge and the humans' consensus")
    if gaps:
        st.dataframe([{"id": d.flip_id, "judge": "valid" if d.judge_valid else "not valid", "consensus": d.consensus,
                       "labels": ", ".join(f"{w or '(no name)'}: {lab}" for w, lab in d.labels.items()),
                       "prompt": prompts.get(d.flip_id, "")[:80]} for d in gaps], hide_index=True, key="disagreements")


def csv_tools(name: str, run) -> None:
    """Export the current labels (``flip_id,label,labeller,note``) and import such a CSV (every row checked first)."""
    st.subheader("Labels as CSV")
    st.download_button("Export labels (flip_id,label,labeller,note)", data=lambda: label_csv.label_csv(run),
                       file_name=f"{name}-labels-by-labeller.csv", mime="text/csv", key="export_label_csv")
    up = st.file_uploader("Import labels CSV (columns flip_id,label,labeller,note)", type=["csv"], key="labels_upload")
    if st.button("Import", key="labels_import_go", disabled=up is None):
        try:
            if up.size > MAX_UPLOAD:
                raise LabError(f"{up.name} is larger than {MAX_UPLOAD // 1_000_000} MB")
            try:
                text = up.getvalue().decode("utf-8")
            except UnicodeDecodeError:
                raise LabError(f"{up.name} is not UTF-8 text") from None
            n = label_csv.import_label_csv(run, text, source=up.name)
        except LabError as exc:
            st.session_state["labels_import_msg"] = ("error", f"Nothing imported: {exc}")
        else:
            st.session_state["labels_import_msg"] = ("success", f"Imported {n} labels from {up.name}.")
        st.rerun()
    msg = st.session_state.pop("labels_import_msg", None)
    if msg:
        (st.error if msg[0] == "error" else st.success)(msg[1])
