"""Page pieces for Recovery: the settings form, live charts, results and the budget sweep (presenter replay: ``ui.replay``)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.errors import LabError
from engine.recovery.config import RecoveryConfig
from ui import charts, render

_PERSIST = {"persist_state": "session"}
PROJECTIONS = {"encoder": "encoder-orthogonal (defended features cannot move)", "none": "unconstrained baseline",
               "jacobian": "cross-layer: δ below the clamp, ⟂ the Jacobian rows"}


def settings_form(n_valid: int):
    """The user's RecoveryConfig and flip limit (None with an error shown when the settings are invalid)."""
    d = RecoveryConfig()
    c1, c2, c3, c4 = st.columns(4)
    projection = c1.selectbox("Projection", list(PROJECTIONS), format_func=lambda p: f"{p} — {PROJECTIONS[p]}", key="rec_projection", **_PERSIST)
    budget_kind = c2.selectbox("Budget norm", ["per_position", "matrix"], index=["per_position", "matrix"].index(d.budget_kind),
                               format_func=lambda k: {"per_position": "per position: every ‖δ_t‖ ≤ B", "matrix": "whole matrix: ‖δ‖_F ≤ B"}[k],
                               key="rec_budget_kind", **_PERSIST)
    relative = c3.toggle("B relative to the median residual norm", value=d.budget_relative, key="rec_relative", **_PERSIST,
                         help="On: B is a fraction of the median ‖h‖ at δ's layer (position 0 excluded). Off: an absolute norm.")
    budget = c4.number_input("Budget B", min_value=0.0001, value=float(d.budget), step=0.05, format="%.4f", key="rec_budget", **_PERSIST)
    c1, c2, c3, c4 = st.columns(4)
    steps = c1.number_input("Steps", 1, 2000, int(d.steps), key="rec_steps", **_PERSIST)
    lr = c2.number_input("Learning rate", min_value=0.0001, value=float(d.lr), step=0.01, format="%.4f", key="rec_lr", **_PERSIST)
    where = c3.selectbox("δ acts on", ["prompt+gen", "prompt"], index=["prompt+gen", "prompt"].index(d.where), key="rec_where", **_PERSIST,
                         help="prompt: one row per prompt position; prompt+gen: plus one shared row at every answer position")
    limit = c4.number_input("Valid flips to recover", 1, max(1, n_valid), max(1, n_valid), key="rec_limit")
    with st.popover("More settings"):
        method = st.selectbox("Method", ["delta", "soft-suffix"], key="rec_method", **_PERSIST)
        boundary = st.number_input("Boundary steps (reward a non-refusal first token first)", 0, 2000, int(d.boundary_steps), key="rec_boundary", **_PERSIST)
        answer_tokens = st.number_input("Answer tokens teacher-forced", 1, 512, int(d.answer_tokens), key="rec_answer_tokens", **_PERSIST)
        max_new = st.number_input("Recovered answer length (tokens)", 1, 512, int(d.max_new_tokens), key="rec_max_new", **_PERSIST)
        batch = st.number_input("Batch size", 1, 64, int(d.batch_size), key="rec_batch", **_PERSIST)
        seed = st.number_input("Seed", 0, 2**31 - 1, int(d.seed), key="rec_seed", **_PERSIST)
    try:
        cfg = RecoveryConfig(projection=projection, method=method, where=where, budget=float(budget), budget_kind=budget_kind,
                             budget_relative=bool(relative), steps=int(steps), boundary_steps=int(boundary), lr=float(lr),
                             answer_tokens=int(answer_tokens), max_new_tokens=int(max_new), batch_size=int(batch), seed=int(seed))
    except LabError as exc:
        st.error(str(exc))
        return None, None
    return cfg, int(limit)


def live_charts(events: list[dict], height: int = 230) -> None:
    df = charts.step_frame(events)
    left, right = st.columns(2)
    left.altair_chart(charts.metric_chart(df, "loss", "Loss per step", height), width="stretch")
    right.altair_chart(charts.metric_chart(df, "drift", "Defended-feature drift per step", height), width="stretch")


def history_events(records: list[dict], upto: int | None = None) -> list[dict]:
    """Per-step events rebuilt from saved ``loss_history`` / ``drift_history`` (for reloads and replays)."""
    out = []
    for r in records:
        losses, drifts = r.get("loss_history") or [], r.get("drift_history") or []
        for s, loss in enumerate(losses[: upto if upto is not None else None]):
            out.append({"step": s, "prompt_id": r.get("id"), "loss": loss, "drift": drifts[s] if s < len(drifts) else None})
    return out


def _ci_text(summary: dict, key: str) -> str:
    ci = (summary.get("ci") or {}).get(key) or {}
    if not ci:
        return ""
    lo, hi = ci.get("ci95", [0, 0])
    return f"{ci.get('k')}/{ci.get('n')} · 95 % CI {lo:.2f}–{hi:.2f}"


def summary_metrics(summary: dict) -> None:
    """Rates with their Wilson intervals on one row, the geometry of δ on the next."""
    cols = st.columns(3)
    for col, (title, key, ci) in zip(cols, (("Non-refusal recovery", "non_refusal_recovery", "non_refusal"),
                                            ("Base-like", "base_like_recovery", "base_like"),
                                            ("Strict base-like", "strict_base_like_recovery", "strict_base_like"))):
        col.metric(title, f"{summary.get(key, 0):.0%}")
        col.caption(_ci_text(summary, ci))
    cols = st.columns(3)
    cols[0].metric("Mean drift of clamped features", f"{summary.get('mean_drift', 0):.4f}")
    cols[1].metric("Floor violation", f"{summary.get('mean_floor_violation', 0):.4f}")
    cols[2].metric("Relative ‖δ‖", f"{summary.get('mean_delta_rel_norm', 0):.3f}")
    if summary.get("cancelled"):
        st.warning("This recovery was cancelled; the numbers cover the flips it finished.")


def results_table(records: list[dict]) -> None:
    cols = ["id", "prompt", "non_refusal", "base_like", "strict_base_like", "drift", "floor_violation", "delta_rel_norm", "best_step"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in records])
    st.dataframe(df, hide_index=True, width="stretch")


def _degenerate(reasons: list) -> bool:
    return any(str(r.get("rule", "")).startswith("degenerate") for r in reasons)


def texts_side_by_side(rec: dict, flip: dict) -> None:
    """Base, clamped and recovered texts with the verdicts recorded when each was judged (nothing is re-judged)."""
    st.markdown(f"**#{rec.get('id')}** {rec.get('prompt', '')}")
    base_reasons, clamped_reasons, rec_reasons = flip.get("base_reasons", []), flip.get("clamped_reasons", []), rec.get("reasons", [])
    panels = (
        ("Base", rec.get("base_text", ""), base_reasons, bool(flip.get("base_refusal")), _degenerate(base_reasons)),
        ("Clamped", rec.get("clamped_text", ""), clamped_reasons, bool(flip.get("clamped_refusal")), bool(flip.get("clamped_degenerate"))),
        ("Recovered (clamp on, + δ)", rec.get("recovered_text", ""), rec_reasons, not rec.get("non_refusal"), bool(rec.get("degenerate"))),
    )
    for col, (title, text, reasons, refusal, degenerate) in zip(st.columns(3), panels):
        with col:
            render.text_panel(title, text, reasons, refusal, degenerate)


def sweep_rows(sweep: dict) -> list[dict]:
    rows = []
    for p in sweep.get("points", []):
        for metric in ("non_refusal", "base_like", "strict_base_like"):
            ci = (p.get("ci") or {}).get(metric) or {}
            if ci:
                lo, hi = ci.get("ci95", [None, None])
                rows.append({"budget": p["budget"], "metric": metric.replace("_", " "), "rate": ci.get("rate"), "lo": lo, "hi": hi,
                             "k": ci.get("k"), "n": ci.get("n")})
    return rows
