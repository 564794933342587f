"""Drawing helpers: judge-highlighted texts, job status, presenter styling."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import streamlit as st

from engine.services import jobs

if TYPE_CHECKING:
    from engine.method.judge import JudgeConfig
    from engine.method.verdicts import Explanation

RULE_COLOURS = {
    "refusal_statement": "#ffc9c9",
    "refusal_phrase": "#ffc9c9",
    "safety_cue": "#ffd8a8",
    "negative_opening": "#ffd8a8",
    "apology_opening": "#e9ecef",
}
DEGENERATE_COLOUR = "#ffec99"

PRESENTER_CSS = """
<style>
[data-testid="stMain"] { font-size: 21px; }
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p, [data-testid="stMain"] [data-testid="stMarkdownContainer"] li {
  font-size: 1.2rem; line-height: 1.55; }
[data-testid="stMain"] h1 { font-size: 2.6rem !important; } [data-testid="stMain"] h2 { font-size: 2.0rem !important; }
[data-testid="stMain"] h3 { font-size: 1.6rem !important; }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * { font-size: 2.8rem !important; line-height: 1.2 !important; }
[data-testid="stMetricLabel"] p { font-size: 1.0rem !important; }
.flip-text { font-size: 1.2rem !important; }
</style>
"""

BASE_CSS = """
<style>
.flip-text { white-space: pre-wrap; font-family: ui-sans-serif, system-ui, sans-serif; font-size: 0.92rem;
             line-height: 1.45; border: 1px solid #dee2e6; border-radius: 6px; padding: 0.5rem 0.7rem;
             background: #fcfcfd; max-height: 16rem; overflow-y: auto; }
.flip-text mark { border-radius: 3px; padding: 0 2px; }
.badge { display: inline-block; border-radius: 10px; padding: 0 8px; margin: 0 4px 4px 0; font-size: 0.78rem; }
[data-testid="stSidebar"] [data-testid="stCaptionContainer"], [data-testid="stSidebar"] code { overflow-wrap: anywhere; }
</style>
"""


FLAG_WORDS = {
    "--sae": "the SAE", "--features": "the feature indices", "--value": "the value", "--mode": "the mode", "--clamp": "the clamp set",
    "--top-k": "k (top changed features)", "--resume": "Resume", "--limit": "How many prompts", "--prompts": "the prompt source",
    "--max-new-tokens": "Max new tokens", "--batch-size": "Batch size", "--seed": "Seed", "--budget": "the budget",
    "--budgets": "Budgets", "--delta-layer": "the δ layer", "--valid": "the valid set", "--name": "the recovery name",
    "--recovery": "the recovery", "--model": "the model", "--device": "Device", "--dtype": "the number format",
    "--out": "the run folder", "--run": "the run", "--judge": "the judge's lists",
}
"""Command-line flags in engine messages → the words the pages use for the same setting."""
_CLI_SNIPPET = re.compile(r"`?python -m engine[^`.;)]*`?")
_ANY_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def ui_words(message: str) -> str:
    """An engine message in page words: a command-line snippet becomes "the command line", a ``--flag`` the page's
    name for that setting (``--top-k`` → "k (top changed features)"), so no page message shows a ``--flag``."""
    text = _CLI_SNIPPET.sub("the command line", str(message))
    return _ANY_FLAG.sub(lambda m: FLAG_WORDS.get(m.group(0), m.group(1).replace("-", " ")), text)


def apply_presenter_style(on: bool) -> None:
    st.html(BASE_CSS + (PRESENTER_CSS if on else ""))


def highlighted(text: str, reasons: list[dict] | None) -> str:
    """HTML of ``text`` with the judge's deciding spans marked (whole-text rules become badges instead)."""
    reasons = reasons or []
    spans, badges = [], []
    for r in reasons:
        start, end, rule = int(r.get("start", 0)), int(r.get("end", 0)), str(r.get("rule", ""))
        whole = start <= 0 and end >= len(text)
        if rule.startswith("degenerate") or whole:
            badges.append((rule, str(r.get("text", ""))))
        elif 0 <= start < end <= len(text):
            spans.append((not r.get("decides", True), start, end, rule))
    # Deciding spans win over notes where they overlap; then draw left to right.
    chosen: list[tuple[int, int, str]] = []
    for _, start, end, rule in sorted(spans):
        if all(end <= s or start >= e for s, e, _ in chosen):
            chosen.append((start, end, rule))
    out, pos = [], 0
    for start, end, rule in sorted(chosen):
        out.append(html.escape(text[pos:start]))
        colour = RULE_COLOURS.get(rule, "#ffc9c9")
        out.append(f'<mark title="{html.escape(rule)}" style="background:{colour}">{html.escape(text[start:end])}</mark>')
        pos = end
    out.append(html.escape(text[pos:]))
    badge_html = "".join(
        f'<span class="badge" style="background:{DEGENERATE_COLOUR if rule.startswith("degenerate") else "#e9ecef"}" '
        f'title="{html.escape(detail)}">{html.escape(rule)}</span>'
        for rule, detail in badges
    )
    body = "".join(out) if text else "<i>(empty)</i>"
    return f'{badge_html}<div class="flip-text">{body}</div>'


def verdict_line(refusal: bool, degenerate: bool = False) -> str:
    if refusal and degenerate:
        return ":orange[**refusal** (degenerate)]"
    return ":red[**refusal**]" if refusal else ":green[**answers**]"


def text_panel(title: str, text: str, reasons: list[dict] | None, refusal: bool | None = None, degenerate: bool = False,
               verdicts: Sequence[tuple[Explanation, bool | None]] | None = None, judge_cfg: JudgeConfig | None = None) -> None:
    """A judged text: its title, a badge per verdict that lists the rules that decided it, the highlighted text.

    ``verdicts``: (explanation, verdict saved when judged) pairs; by default, when ``refusal`` is given, the refusal
    verdict (and degenerate, when it holds) explained with ``judge_cfg``.
    """
    from engine.method.verdicts import explain_degenerate, explain_refusal
    from ui.verdict_views import badge

    if verdicts is None:
        verdicts = []
        if refusal is not None:
            verdicts.append((explain_refusal(text, judge_cfg), bool(refusal)))
            deg = explain_degenerate(text, judge_cfg)
            if deg.holds or degenerate:
                verdicts.append((deg, bool(degenerate) if degenerate else None))
    st.markdown(f"**{title}**")
    for ex, recorded in verdicts:
        badge(ex, recorded)
    st.html(highlighted(text, reasons))


def job_status(job) -> None:
    """One line about a background job: state, progress, elapsed time, error."""
    took = f"{job.elapsed:.0f} s"
    if job.status == "running":
        phase = getattr(job, "phase", "") or ""
        unit = getattr(job, "unit", "") or ""
        if job.progress and job.progress[1]:
            done, total = job.progress
            parts = [f"{job.kind}" + (f" — {phase}" if phase else ""), f"{done}/{total}" + (f" {unit}" if unit else ""), took, job.message,
                     getattr(job, "memory_line", "")]
            st.progress(min(1.0, done / total), text=" · ".join(p for p in parts if p))
        else:
            st.info(" · ".join(p for p in (f"{job.kind} running" + (f" — {phase}" if phase else ""), took, job.message, getattr(job, "memory_line", "")) if p))
    elif job.status == "done":
        st.success(f"{job.kind} finished in {took}")
    elif job.status == "cancelled":
        st.warning(f"{job.kind} was cancelled after {took}; what it finished is saved")
    else:
        st.error(f"{job.kind} failed: {ui_words(job.error or '')}")


def live_job(job: jobs.Job | None, cancel_key: str, cancel_help: str, body: Callable[[jobs.Job], None] | None = None) -> None:
    """Poll a background job once a second while it runs: status, a Cancel button, then ``body(job)``.

    When the job ends, the whole page reruns once so it is redrawn from the saved run. A finished job (the page
    was opened afterwards) gets its status line only.
    """
    ticking = job is not None and job.running

    @st.fragment(run_every=1.0 if ticking else None)
    def live() -> None:
        current = jobs.get_job(job.id) if job else None
        if current is None:
            return
        job_status(current)
        if current.running and st.button("Cancel", key=cancel_key, help=cancel_help):
            current.request_cancel()
        if body is not None:
            body(current)
        if not current.running and ticking:
            st.rerun()

    live()


def ago(ts: float) -> str:
    d = time.time() - ts
    return f"{d:.0f} s ago" if d < 90 else f"{d / 60:.0f} min ago" if d < 5400 else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
