"""Page pieces for Attribution: rows for the bar charts and the top-k feature list."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import streamlit as st

from engine.attribution.driver import summarize_attribution
from engine.errors import LabError
from ui import charts


def _components(record: dict) -> dict:
    comps = record.get("components") or {}
    return {k: v for k, v in comps.items() if isinstance(v, dict)}


def _gain(value: dict) -> float | None:
    g = value.get("base_logprob_gain")
    return float(g) if isinstance(g, (int, float)) else None


def aggregate_rows(records: list[dict]) -> list[dict]:
    """Per component: how many examples it restores alone, out of n, and the mean base log-prob gain
    (``engine.attribution.driver.summarize_attribution``, shaped for the bar chart)."""
    summary = summarize_attribution(records)
    return [{"component": name, "restored": c["non_refusal"], "n": summary["n"], "mean_gain": c["mean_base_logprob_gain"]}
            for name, c in summary["components"].items()]


def example_rows(record: dict) -> list[dict]:
    return [{"component": name, "non_refusal": bool(v.get("non_refusal")), "base_logprob_gain": _gain(v) or 0.0}
            for name, v in _components(record).items()]


def heatmap_rows(records: list[dict]) -> list[dict]:
    return [{"id": rec.get("id"), "component": name, "non_refusal": bool(v.get("non_refusal"))}
            for rec in records for name, v in _components(rec).items()]


def topk_rows(records: list[dict], sae=None) -> list[dict]:
    """The top-k features over all examples: how often each is in an example's top-k, its mean ‖δz‖, a link."""
    count: dict[int, int] = defaultdict(int)
    norms: dict[int, list[float]] = defaultdict(list)
    links: dict[int, str] = {}
    for rec in records:
        for f in rec.get("top_features", []):
            idx = int(f["index"])
            count[idx] += 1
            norms[idx].append(abs(float(f["delta_z_norm"])))
            url = f.get("neuronpedia_url") or (sae.neuronpedia_url(idx) if sae is not None else None)
            if url:
                links[idx] = url
    rows = [{"feature": i, "count": count[i], "mean_abs_dz": sum(norms[i]) / len(norms[i]), "link": links.get(i, "")} for i in count]
    return sorted(rows, key=lambda r: (-r["count"], -r["mean_abs_dz"]))


def topk_sae_spec(run_config: dict, record_config: dict, used: dict, sidebar_sae=None) -> str | None:
    """The SAE the top-k features index (for their cards): the attribution's own SAE, else the run's clamped SAE at
    δ's layer, else the sidebar's."""
    from engine.lm.saes import hook_layer
    from engine.method.clamp_sets import sae_spec_of
    from ui import clamp_set

    if used.get("sae"):
        return sae_spec_of(str(used["sae"]))
    layer = record_config.get("delta_layer")
    for row in run_config.get("clamps") or []:
        hook = row.get("hook") or clamp_set.spec_hook(str(row.get("sae", "")))
        try:
            if hook and layer is not None and hook_layer(hook) == int(layer):
                return sae_spec_of(str(row["sae"]))
        except (LabError, ValueError):
            continue
    return clamp_set.row_spec(sidebar_sae) if sidebar_sae is not None else None


def topk_chart(rows: list[dict]):
    """The top-k bar chart with a click selection on the bars (a click opens that feature's card)."""
    import altair as alt

    return charts.topk_chart(rows).add_params(alt.selection_point(name="card", fields=["feature"], on="click"))


def topk_table(rows: list[dict], spec: str | None = None) -> None:
    """The top-k table; with the SAE ``spec`` known, picking a row (or the picker below) opens the feature's card."""
    from ui import feature_link

    if not rows:
        st.caption("No top-k features recorded.")
        return
    df = pd.DataFrame(rows)
    config = {"link": st.column_config.LinkColumn("Neuronpedia", display_text="open")}
    if spec is None:
        st.dataframe(df, hide_index=True, width="stretch", column_config=config)
        return
    event = st.dataframe(df, hide_index=True, width="stretch", column_config=config, key="topk_table", on_select="rerun",
                         selection_mode="single-row")
    feature_link.table_selection(rows, event, spec, "topk_table")
    feature_link.picker([r["feature"] for r in rows], spec, "topk_card")


def component_texts(record: dict) -> None:
    from ui import render

    for name, value in _components(record).items():
        if "text" in value:
            verdict = ":green[restored]" if value.get("non_refusal") else ":red[still refuses]"
            st.markdown(f"**{charts.COMPONENT_LABELS.get(name, name)}** — {verdict} · log-prob gain {(_gain(value) or 0.0):+.2f}")
            st.html(render.highlighted(str(value.get("text", "")), None))
