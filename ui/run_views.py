"""Charts of a saved run, with PNG/SVG downloads (vl-convert, offline) for slides."""

from __future__ import annotations

import time

import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from ui import charts
from ui import recovery_views as rv


def run_row(info) -> dict:
    """One line of the runs table, read from the run's config and summaries."""
    s, r = info.summary or {}, info.recovery_summary or {}
    clamps = info.config.get("clamps") or []
    nr = (r.get("ci") or {}).get("non_refusal")
    return {
        "run": info.name, "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created)),
        "model": info.config.get("model_id") or info.config.get("model"), "sae": info.config.get("sae"),
        "features": sum(len(c.get("features", [])) for c in clamps), "mode": ", ".join(sorted({str(c.get("mode")) for c in clamps})),
        "seed": info.config.get("seed"), "prompts": s.get("n_prompts"), "valid flips": s.get("n_valid"),
        "non-refusal recovery": f"{nr['k']}/{nr['n']}" if nr else None, "mean drift": r.get("mean_drift"),
        "attribution": bool(info.attribution_summary), "sweeps": len(info.sweeps),
    }


def run_charts(info) -> list[tuple[str, object]]:
    """``(slug, chart)`` for every chart a run's files support."""
    out: list[tuple[str, object]] = []
    try:
        if info.has_recovery:
            records = catalogue.read_records(info.name, "recovery.jsonl")
            df = charts.step_frame(rv.history_events(records))
            out.append(("recovery-loss", charts.metric_chart(df, "loss", f"Loss per step · {info.name}")))
            out.append(("recovery-drift", charts.metric_chart(df, "drift", f"Defended-feature drift per step · {info.name}")))
        for sweep_file in info.sweeps:
            out.append((sweep_file.removesuffix(".json"), charts.sweep_chart(rv.sweep_rows(catalogue.read_sweep(info.name, sweep_file)))))
        if info.has_attribution:
            from ui import attribution_views as av

            records = catalogue.read_records(info.name, "attribution.jsonl")
            out.append(("attribution-aggregate", charts.attribution_aggregate_chart(av.aggregate_rows(records))))
    except LabError as exc:
        st.error(str(exc))
    return out


def chart_downloads(info) -> None:
    found = run_charts(info)
    if not found:
        st.caption("This run has no recovery, sweep or attribution results to chart yet.")
        return
    for slug, chart in found:
        st.altair_chart(chart, width="stretch", height=charts.chart_height(chart))
        c1, c2, _ = st.columns([1, 1, 4])
        c1.download_button("PNG", data=lambda chart=chart: charts.to_png(chart), file_name=f"{info.name}-{slug}.png",
                           mime="image/png", key=f"png:{slug}")
        c2.download_button("SVG", data=lambda chart=chart: charts.to_svg(chart), file_name=f"{info.name}-{slug}.svg",
                           mime="image/svg+xml", key=f"svg:{slug}")
