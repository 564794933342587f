"""Page pieces for flips: the prompt-source form, the judge editor, flip cards (the labeller: ``ui/labelling.py``)."""

from __future__ import annotations

import streamlit as st

from engine.errors import LabError
from engine.method.judge import JudgeConfig
from ui import render

SOURCES = {"Built-in harmless": "builtin:harmless", "Built-in harmful": "builtin:harmful", "Upload a file": "upload", "Type prompts": "typed"}
_PERSIST = {"persist_state": "session"}


def prompt_source_form() -> tuple[list[str], dict | None]:
    """The prompt set and generation settings the user chose (``prompts`` is empty when none are usable;
    ``settings`` is None while a number field is refused, its message under the field)."""
    from engine.method.prompts import MAX_PROMPT_BYTES, load_prompts, parse_prompts
    from ui import validate

    choice = st.radio("Prompts", list(SOURCES), horizontal=True, key="flips_source", **_PERSIST)
    source = SOURCES[choice]
    prompts: list[str] = []
    form = validate.Form()
    lm = validate.loaded_model()
    c1, c2, c3, c4 = st.columns(4)
    limit = form.number(c1, "How many prompts", "flips_limit", 8, check=validate.at_least_one("How many prompts"),
                        help="At most this many prompts of the source (all of them when it has fewer).")
    max_new = form.number(c2, "Max new tokens", "flips_max_new", 48,
                          check=validate.chain(validate.generation_check("max_new_tokens", "Max new tokens"),
                                               validate.context_check(lm, "Max new tokens")))
    batch = form.number(c3, "Batch size", "flips_batch", 4, check=validate.generation_check("batch_size", "Batch size"))
    seed = form.number(c4, "Seed", "flips_seed", 0, check=validate.seed_check)
    try:
        if source.startswith("builtin:"):  # (a refused limit is None: every prompt, but the form is off anyway)
            prompts = load_prompts(source, limit)
        elif source == "upload":
            up = st.file_uploader("JSON list, JSONL, or CSV with a prompt / instruction / goal column",
                                  type=["json", "jsonl", "csv"], key="flips_upload")
            if up is not None:
                if up.size > MAX_PROMPT_BYTES:
                    raise LabError(f"{up.name} is larger than {MAX_PROMPT_BYTES // 1_000_000} MB")
                prompts = parse_prompts(up.getvalue(), up.name)[:limit]
                source = f"upload:{up.name}"
        else:
            text = st.text_area("One prompt per line", key="flips_typed", height=140, **_PERSIST)
            prompts = [line.strip() for line in (text or "").splitlines() if line.strip()][:limit]
            source = "typed"
    except LabError as exc:
        st.error(str(exc))
        prompts = []
    if prompts:
        st.caption(f"{len(prompts)} prompts, e.g. “{prompts[0][:90]}”")
    if not form.ok:
        return prompts, None
    settings = {"source": source, "limit": limit, "max_new_tokens": max_new, "batch_size": batch, "seed": seed}
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


def flip_card(rec: dict, judge_cfg: JudgeConfig | None = None) -> None:
    """One prompt: the valid-flip verdict and the base and clamped texts, each verdict with the rules that decided it.

    A record whose clamped answer is still being generated (``clamped_text`` absent) shows its base answer only.
    """
    from engine.method.verdicts import explain_valid_flip
    from ui.verdict_views import badge

    pending = "clamped_text" not in rec
    with st.container(border=True):
        st.markdown(f"**#{rec.get('id')}** {rec.get('prompt', '')}")
        if not pending:
            badge(explain_valid_flip(rec.get("base_text", ""), rec.get("clamped_text", ""), judge_cfg), rec.get("valid"))
        left, right = st.columns(2)
        with left:
            render.text_panel("Base", rec.get("base_text", ""), rec.get("base_reasons"), rec.get("base_refusal"), judge_cfg=judge_cfg)
        with right:
            if pending:
                st.markdown("**Clamped**")
                st.caption("generating the clamped answer of this batch…")
            else:
                render.text_panel("Clamped", rec.get("clamped_text", ""), rec.get("clamped_reasons"), rec.get("clamped_refusal"),
                                  rec.get("clamped_degenerate", False), judge_cfg=judge_cfg)


def run_judge(name: str | None) -> JudgeConfig:
    """The judge config saved in run ``name``'s ``config.json`` (the default when there is none yet)."""
    from engine.store import catalogue
    from engine.store.files import read_json_or_none

    try:
        config = read_json_or_none(catalogue.run_path(name) / "config.json") if name else None
    except LabError:
        config = None
    return JudgeConfig.from_json(config.get("judge") if isinstance(config, dict) else None)


def streamed_records(records: list[dict], partial: list[dict]) -> list[dict]:
    """Finished records, then the base answers (``partial``) whose clamped answers are still being generated."""
    done = {r.get("id") for r in records}
    return list(records) + [p for p in partial if p.get("id") not in done]


def flip_cards(records: list[dict], limit: int = 100, newest_first: bool = False, judge_cfg: JudgeConfig | None = None) -> None:
    rows = list(reversed(records)) if newest_first else list(records)
    for rec in rows[:limit]:
        flip_card(rec, judge_cfg)
    if len(rows) > limit:
        st.caption(f"… {len(rows) - limit} more (export the run from the Runs page to see all).")
