"""Verdict badges that explain themselves, and the judge's lists (the rules come from ``engine.method.verdicts``).

A badge is one line — the verdict with ✓/✗ and the rules that decided it, each with its measured value and
threshold ("base-like ✗: 29 chars < 80") — and an ⓘ popover with every rule checked. Nothing is judged
here: the engine explains, this module draws.
"""

from __future__ import annotations

import re

import streamlit as st

from engine.method.judge import JudgeConfig
from engine.method.verdicts import Explanation

COLOURS = {"refusal": ("red", "green"), "degenerate": ("orange", "gray"), "valid flip": ("green", "gray"),
           "non-refusal": ("green", "red"), "base-like": ("green", "gray"), "strict base-like": ("green", "gray")}
"""Verdict → (colour when it holds, colour when not)."""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~$:])")


def md_escape(text: str) -> str:
    """``text`` shown literally in markdown (a measured phrase may hold ``*``, ``_``, ``[`` …)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def badge_text(ex: Explanation) -> str:
    """``:red[**refusal ✓**]`` — the coloured verdict word."""
    on, off = COLOURS.get(ex.verdict, ("blue", "gray"))
    return f":{on if ex.holds else off}[**{ex.verdict} {'✓' if ex.holds else '✗'}**]"


def rules_table(ex: Explanation) -> str:
    """Markdown table of every rule: passed/fired, measured value, threshold."""
    head = "| rule | | measured | threshold |\n|---|---|---|---|\n"
    rows = "".join(f"| {md_escape(r.name)}{'' if r.decides else ' (note)'} | {'✓' if r.passed else '✗'} | {md_escape(r.measured)} | "
                   f"{md_escape(r.threshold)} |\n" for r in ex.rules)
    return head + rows


def badge(ex: Explanation, recorded: bool | None = None) -> None:
    """One verdict: the badge, its deciding rules, and every rule behind the ⓘ popover.

    ``recorded``: the verdict saved when the text was judged; a different verdict now (the judge's lists were
    edited since) is said, never hidden.
    """
    line = f"{badge_text(ex)} " + md_escape("; ".join(r.text for r in ex.deciding))
    left, right = st.columns([9, 1], vertical_alignment="center")
    left.markdown(line)
    with right.popover(":material/info:", help="All rules: each with its measured value and threshold"):
        st.markdown(f"**{ex.verdict}** holds when {'any rule fires' if ex.any_rule else 'every rule passes'}.")
        st.markdown(rules_table(ex))
    if recorded is not None and recorded != ex.holds:
        st.caption(f":orange[Saved as {ex.verdict} {'✓' if recorded else '✗'} when it was judged; the judge's lists or "
                   "thresholds differ now.]")


def judge_lists(cfg: JudgeConfig | None = None, title: str = "The judge's lists and thresholds") -> None:
    """Every list and threshold the judge uses (read-only); the same config is saved with each run."""
    cfg = cfg or JudgeConfig()
    with st.expander(title, expanded=False):
        st.caption("A text is a **refusal** when any rule fires anywhere in it; apologies are notes that decide nothing. "
                   "Degenerate text (repetition) counts as a refusal and is marked so.")
        cols = st.columns(3)
        for i, (name, label) in enumerate((("refusal_verbs", "Refusal verbs (after “I”)"), ("refusal_phrases", "Refusal phrases"),
                                           ("safety_cues", "Safety cues"), ("negative_openings", "Blunt openings"),
                                           ("idioms", "Idioms (not refusals)"), ("apology_openings", "Apology openings (notes)"))):
            with cols[i % 3]:
                st.markdown(f"**{label}**")
                st.code("\n".join(getattr(cfg, name)), language=None)
        st.markdown(
            f"**Degenerate**: unique-word ratio < {cfg.degenerate_unique_ratio} (from {cfg.min_words_for_ratio} words) · "
            f"one character > {cfg.degenerate_char_ratio} of the text · a sentence said ≥ {cfg.repeat_sentence_times}× · "
            f"a {cfg.repeat_ngram}-gram repeated ≥ {cfg.repeat_ngram_times}×  \n"
            f"**Base-like**: non-refusal, ≥ {cfg.base_like['min_chars']} chars, unique ratio ≥ {cfg.base_like['min_unique']}, "
            f"top character share ≤ {cfg.base_like['max_char']}, Jaccard ≥ {cfg.base_like['min_jaccard']} or difflib ≥ "
            f"{cfg.base_like['min_difflib']}" + (" — or identical to the base answer" if cfg.identical_is_base_like else "")
            + f"  \n**Strict base-like**: ≥ {cfg.strict_base_like['min_chars']} chars, unique ratio ≥ "
            f"{cfg.strict_base_like['min_unique']}, top character share ≤ {cfg.strict_base_like['max_char']}, Jaccard ≥ "
            f"{cfg.strict_base_like['min_jaccard']} (the paper's definition, no identical-answer exception)"
        )
