"""Page pieces for Recovery: live charts, results (per clamped layer too) and the budget sweep (the form: ``ui.recovery_form``;
presenter replay: ``ui.replay``)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import charts, render


def live_charts(events: list[dict], height: int = 230, delta_layer: int | None = None) -> None:
    """Loss and pooled drift per prompt; with clamps at several layers, also the drift of each clamped layer."""
    df = charts.step_frame(events)
    layers = charts.layer_drift_frame(events, delta_layer)
    multi = layers["layer"].nunique() > 1
    cols = st.columns([1, 1, 1.2] if multi else 2)
    cols[0].altair_chart(charts.metric_chart(df, "loss", "Loss per step", height), width="stretch")
    cols[1].altair_chart(charts.metric_chart(df, "drift", "Drift, all clamped features", height), width="stretch")
    if multi:
        cols[2].altair_chart(charts.layer_drift_chart(layers, height), width="stretch")
        cols[2].caption("Per clamped layer, over the answer positions. Line: the mean over prompts; band: the lowest to the "
                        "highest prompt. The middle chart pools every clamped feature over every position.")


def history_events(records: list[dict], upto: int | None = None) -> list[dict]:
    """Per-step events rebuilt from saved ``loss_history`` / ``drift_history`` / ``drift_per_layer_history`` (for
    reloads and replays)."""
    out = []
    for r in records:
        losses, drifts = r.get("loss_history") or [], r.get("drift_history") or []
        layers = r.get("drift_per_layer_history") or {}
        for s, loss in enumerate(losses[: upto if upto is not None else None]):
            out.append({"step": s, "prompt_id": r.get("id"), "loss": loss, "drift": drifts[s] if s < len(drifts) else None,
                        "drift_per_layer": {h: v[s] for h, v in layers.items() if s < len(v)}})
    return out


def _ci_text(summary: dict, key: str) -> str:
    ci = (summary.get("ci") or {}).get(key) or {}
    if not ci:
        return ""
    lo, hi = ci.get("ci95", [0, 0])
    return f"{ci.get('k')}/{ci.get('n')} · 95 % CI {lo:.2f}–{hi:.2f}"


def summary_metrics(summary: dict) -> None:
    """Rates with their Wilson intervals on one row, the geometry of δ on the next."""
    if not summary.get("n_valid"):
        st.info("No prompt of this recovery finished yet, so there is nothing to report: resume it to continue.")
        return
    cols = st.columns(3)
    for col, (title, key, ci) in zip(cols, (("Non-refusal recovery", "non_refusal_recovery", "non_refusal"),
                                            ("Base-like", "base_like_recovery", "base_like"),
                                            ("Strict base-like", "strict_base_like_recovery", "strict_base_like"))):
        col.metric(title, f"{summary.get(key, 0):.0%}")
        col.caption(_ci_text(summary, ci))
    cols = st.columns(3)
    cols[0].metric("Mean drift, every position", _small(summary.get("mean_drift", 0)),
                   help="All clamped features of every layer together, over every position (prompt and answer); the "
                        "per-layer table below gives it per layer, over answer positions (the paper's pooling) and over "
                        "every position.")
    cols[1].metric("Floor violation, every position", _small(summary.get("mean_floor_violation", 0)),
                   help="All clamped features of every layer together, over every position, like the drift beside it.")
    cols[2].metric("Relative ‖δ‖", f"{summary.get('mean_delta_rel_norm', 0):.3f}",
                   help="‖δ‖ / ‖h‖ at δ's layer, averaged over the recovered prompts: how large the perturbation is "
                        "against the residual stream it is added to.")
    layer_summary(summary)
    if summary.get("cancelled"):
        st.warning("This recovery was cancelled; the numbers cover the flips it finished.")


def _small(x: float) -> str:
    """4 decimals, or scientific notation for a tiny non-zero value (an encoder run's 1.8e-7 is not 0.0000)."""
    return f"{x:.2e}" if x and abs(x) < 1e-3 else f"{x:.4f}"


def _layer(hook: str) -> int | None:
    from engine.lm.saes import hook_layer

    try:
        return hook_layer(hook)
    except LabError:
        return None


def _layer_name(hook: str) -> str:
    layer = _layer(hook)
    return hook if layer is None else f"layer {layer}"


def _by_layer(hook: str) -> tuple:
    layer = _layer(hook)
    return (layer is None, layer or 0, hook)


def layer_rows(summary: dict) -> list[dict]:
    """One row per clamped hook from ``recovery_summary.json``'s per-layer means (empty for older runs)."""
    drift, floor = summary.get("drift_per_layer") or {}, summary.get("floor_violation_per_layer") or {}
    every = summary.get("drift_per_layer_all_positions") or {}
    delta_layer = (summary.get("config") or {}).get("delta_layer")
    rows = []
    for hook in sorted(set(drift) | set(floor) | set(every), key=_by_layer):
        name = _layer_name(hook)
        rows.append({"layer": name + (" (δ's layer)" if name == f"layer {delta_layer}" else ""), "hook": hook,
                     "drift (answer positions)": drift.get(hook), "drift (every position)": every.get(hook),
                     "floor violation (answer positions)": floor.get(hook)})
    return rows


def layer_summary(summary: dict) -> None:
    """The per-layer drift and floor violation of the clamped features (means over the recovered prompts)."""
    rows = layer_rows(summary)
    if not rows:
        return
    st.markdown("**Per clamped layer** (means over the recovered prompts)")
    fmt = {c: st.column_config.NumberColumn(c, format="%.4g") for c in rows[0] if c not in ("layer", "hook")}
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config=fmt)


def results_table(records: list[dict]) -> None:
    cols = ["id", "prompt", "non_refusal", "base_like", "strict_base_like", "drift", "floor_violation", "delta_rel_norm", "best_step"]
    hooks = sorted({h for r in records for h in (r.get("drift_per_layer") or {})}, key=_by_layer)
    out = []
    for r in records:
        row = {c: r.get(c) for c in cols}
        if len(hooks) > 1:
            row.update({f"drift {_layer_name(h)} (answer)": (r.get("drift_per_layer") or {}).get(h) for h in hooks})
        out.append(row)
    st.dataframe(pd.DataFrame(out), hide_index=True, width="stretch")


def _degenerate(reasons: list) -> bool:
    return any(str(r.get("rule", "")).startswith("degenerate") for r in reasons)


def texts_side_by_side(rec: dict, flip: dict, judge_cfg=None) -> None:
    """Base, clamped and recovered texts; each verdict badge lists the rules behind it (re-measured with the run's
    ``judge_cfg``; a verdict that differs from the one saved when the text was judged is said so)."""
    from engine.method.verdicts import explain_base_like, explain_degenerate, explain_non_refusal

    st.markdown(f"**#{rec.get('id')}** {rec.get('prompt', '')}")
    base_reasons, clamped_reasons, rec_reasons = flip.get("base_reasons", []), flip.get("clamped_reasons", []), rec.get("reasons", [])
    base_text, recovered = rec.get("base_text", ""), rec.get("recovered_text", "")
    rec_verdicts = [(explain_non_refusal(recovered, judge_cfg), rec.get("non_refusal")),
                    (explain_base_like(recovered, base_text, judge_cfg), rec.get("base_like")),
                    (explain_base_like(recovered, base_text, judge_cfg, strict=True), rec.get("strict_base_like"))]
    deg = explain_degenerate(recovered, judge_cfg)
    if deg.holds or rec.get("degenerate"):
        rec_verdicts.append((deg, rec.get("degenerate")))
    panels = (
        ("Base", base_text, base_reasons, bool(flip.get("base_refusal")), _degenerate(base_reasons), None),
        ("Clamped", rec.get("clamped_text", ""), clamped_reasons, bool(flip.get("clamped_refusal")), bool(flip.get("clamped_degenerate")), None),
        ("Recovered (clamp on, + δ)", recovered, rec_reasons, not rec.get("non_refusal"), bool(rec.get("degenerate")), rec_verdicts),
    )
    for col, (title, text, reasons, refusal, degenerate, verdicts) in zip(st.columns(3), panels):
        with col:
            render.text_panel(title, text, reasons, refusal, degenerate, verdicts=verdicts, judge_cfg=judge_cfg)


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
