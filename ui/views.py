"""Page pieces for flips: the prompt-source form, the judge editor, flip cards, the labeller."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError
from engine.method.judge import JudgeConfig
from engine.store import labels
from ui import render

SOURCES = {"Built-in harmless": "builtin:harmless", "Built-in harmful": "builtin:harmful", "Upload a file": "upload", "Type prompts": "typed"}
_PERSIST = {"persist_state": "session"}


def prompt_source_form() -> tuple[list[str], dict]:
    """The prompt set and generation settings the user chose (``prompts`` is empty when none are usable)."""
    from engine.method.prompts import MAX_PROMPT_BYTES, load_prompts, parse_prompts

    choice = st.radio("Prompts", list(SOURCES), horizontal=True, key="flips_source", **_PERSIST)
    source = SOURCES[choice]
    prompts: list[str] = []
    c1, c2, c3, c4 = st.columns(4)
    limit = c1.number_input("How many prompts", 1, 1000, 8, key="flips_limit", **_PERSIST)
    max_new = c2.number_input("Max new tokens", 1, 512, 48, key="flips_max_new", **_PERSIST)
    batch = c3.number_input("Batch size", 1, 64, 4, key="flips_batch", **_PERSIST)
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="flips_seed", **_PERSIST)
    try:
        if source.startswith("builtin:"):
            prompts = load_prompts(source, int(limit))
        elif source == "upload":
            up = st.file_uploader("JSON list, JSONL, or CSV with a prompt / instruction / goal column",
                                  type=["json", "jsonl", "csv"], key="flips_upload")
            if up is not None:
                if up.size > MAX_PROMPT_BYTES:
                    raise LabError(f"{up.name} is larger than {MAX_PROMPT_BYTES // 1_000_000} MB")
                prompts = parse_prompts(up.getvalue(), up.name)[: int(limit)]
                source = f"upload:{up.name}"
        else:
            text = st.text_area("One prompt per line", key="flips_typed", height=140, **_PERSIST)
            prompts = [line.strip() for line in (text or "").splitlines() if line.strip()][: int(limit)]
            source = "typed"
    except LabError as exc:
        st.error(str(exc))
        prompts = []
    if prompts:
        st.caption(f"{len(prompts)} prompts, e.g. “{prompts[0][:90]}”")
    settings = {"source": source, "limit": int(limit), "max_new_tokens": int(max_new), "batch_size": int(batch), "seed": int(seed)}
    return prompts, settings


def generation_config(settings: dict):
    from engine.method.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=settings["max_new_tokens"], batch_size=settings["batch_size"], seed=settings["seed"])


def judge_editor() -> JudgeConfig:
    """The judge's lists, editable (one phrase per line); saved with each run."""
    cfg = JudgeConfig()
    if not st.toggle("Edit the judge's lists", key="judge_edit", help="Saved with the run, so verdicts can be reproduced."):
        return JudgeConfig.from_json(st.session_state.get("judge_cfg"))
    current = JudgeConfig.from_json(st.session_state.get("judge_cfg"))
    cols = st.columns(2)
    edited = {}
    for i, (name, title) in enumerate((("refusal_verbs", "Refusal verbs"), ("refusal_phrases", "Refusal phrases"),
                                       ("safety_cues", "Safety cues"), ("negative_openings", "Blunt openings"))):
        text = cols[i % 2].text_area(title, "\n".join(getattr(current, name)), height=150, key=f"judge_{name}")
        edited[name] = [line.strip() for line in text.splitlines() if line.strip()]
    cfg = JudgeConfig.from_json({**current.to_json(), **edited})
    st.session_state["judge_cfg"] = cfg.to_json()
    if st.button("Reset to the default lists", key="judge_reset"):
        st.session_state.pop("judge_cfg", None)
        for name in edited:
            st.session_state.pop(f"judge_{name}", None)
        st.rerun()
    return cfg


def flip_summary(summary: dict | None, records: list[dict]) -> None:
    s = summary or {}
    n = s.get("n_prompts", len(records))
    valid = s.get("n_valid", sum(bool(r.get("valid")) for r in records))
    cols = st.columns(5)
    cols[0].metric("Prompts", n)
    cols[1].metric("Valid flips", valid)
    cols[2].metric("Fluent valid flips", s.get("n_valid_fluent", sum(bool(r.get("valid")) and not r.get("clamped_degenerate") for r in records)))
    cols[3].metric("Base refusals", s.get("n_base_refusal", sum(bool(r.get("base_refusal")) for r in records)))
    cols[4].metric("Clamped refusals", s.get("n_clamped_refusal", sum(bool(r.get("clamped_refusal")) for r in records)))
    if s.get("cancelled"):
        st.warning("This run was cancelled before it finished; the counts cover the prompts it did.")


def flip_card(rec: dict) -> None:
    with st.container(border=True):
        tag = " · :green[valid flip]" if rec.get("valid") else ""
        st.markdown(f"**#{rec.get('id')}** {rec.get('prompt', '')}{tag}")
        left, right = st.columns(2)
        with left:
            render.text_panel("Base", rec.get("base_text", ""), rec.get("base_reasons"), rec.get("base_refusal"))
        with right:
            render.text_panel("Clamped", rec.get("clamped_text", ""), rec.get("clamped_reasons"), rec.get("clamped_refusal"),
                              rec.get("clamped_degenerate", False))


def flip_cards(records: list[dict], limit: int = 100, newest_first: bool = False) -> None:
    rows = list(reversed(records)) if newest_first else list(records)
    for rec in rows[:limit]:
        flip_card(rec)
    if len(rows) > limit:
        st.caption(f"… {len(rows) - limit} more (export the run from the Runs page to see all).")


def labeller(run: str, valid: list[dict]) -> None:
    """Label the valid flips one at a time: Genuine (G) · Not a refusal (N) · Unsure (U) · Prev (K) · Next (J)."""
    if not valid:
        st.info("This run has no valid flips to label.")
        return
    saved = labels.get_labels(run)
    idx_key = f"label_idx:{run}"
    if idx_key not in st.session_state:
        unlabeled = [i for i, r in enumerate(valid) if int(r["id"]) not in saved]
        st.session_state[idx_key] = unlabeled[0] if unlabeled else 0
    i = min(max(0, st.session_state[idx_key]), len(valid) - 1)
    rec = valid[i]
    fid = int(rec["id"])
    done = sum(int(r["id"]) in saved for r in valid)
    st.progress(done / len(valid), text=f"{done}/{len(valid)} valid flips labelled · flip {i + 1} of {len(valid)}")
    flip_card(rec)
    current = saved.get(fid)
    note_key = f"note:{run}:{fid}"
    if note_key not in st.session_state:
        st.session_state[note_key] = current.note if current else ""
    st.text_input("Note (optional)", key=note_key, placeholder="why: e.g. 'apology but answers', 'refuses then answers'")

    def save(label: str) -> None:
        try:
            labels.set_label(run, fid, label, st.session_state.get(note_key, ""), rec.get("prompt", ""))
        except LabError as exc:
            st.session_state["label_error"] = str(exc)
            return
        st.session_state[idx_key] = min(i + 1, len(valid) - 1)

    def move(step: int) -> None:
        st.session_state[idx_key] = min(max(0, i + step), len(valid) - 1)

    cols = st.columns(5)
    cols[0].button("Genuine refusal", key="lab_genuine", on_click=save, args=("genuine",), shortcut="G", type="primary" if current and current.label == "genuine" else "secondary")
    cols[1].button("Not a refusal", key="lab_not", on_click=save, args=("not",), shortcut="N", type="primary" if current and current.label == "not" else "secondary")
    cols[2].button("Unsure", key="lab_unsure", on_click=save, args=("unsure",), shortcut="U", type="primary" if current and current.label == "unsure" else "secondary")
    cols[3].button("← Prev", key="lab_prev", on_click=move, args=(-1,), shortcut="K", disabled=i == 0)
    cols[4].button("Next →", key="lab_next", on_click=move, args=(1,), shortcut="J", disabled=i >= len(valid) - 1)
    if "label_error" in st.session_state:
        st.error(st.session_state.pop("label_error"))
    st.caption(f"Saved label: **{current.label}**" + (f" — {current.note}" if current.note else "") if current else "Not labelled yet.")
    with st.expander("All labels of this run"):
        st.dataframe(
            [{"id": int(r["id"]), "prompt": r.get("prompt", "")[:80], "label": saved[int(r["id"])].label if int(r["id"]) in saved else "",
              "note": saved[int(r["id"])].note if int(r["id"]) in saved else ""} for r in valid],
            hide_index=True, width="stretch",
        )
