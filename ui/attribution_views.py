"""Page pieces for Attribution: rows for the bar charts and the top-k feature list."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import streamlit as st

from ui import charts


def _components(record: dict) -> dict:
    comps = record.get("components") or {}
    return {k: v for k, v in comps.items() if isinstance(v, dict)}


def _gain(value: dict) -> float | None:
    g = value.get("base_logprob_gain")
    return float(g) if isinstance(g, (int, float)) else None


def aggregate_rows(records: list[dict]) -> list[dict]:
    """Per component: how many examples it restores alone, out of n, and the mean base log-prob gain."""
    restored: dict[str, int] = defaultdict(int)
    gains: dict[str, list[float]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)
    for rec in records:
        for name, value in _components(rec).items():
            seen[name] += 1
            restored[name] += bool(value.get("non_refusal"))
            if (g := _gain(value)) is not None:
                gains[name].append(g)
    order = [c for c in charts.COMPONENTS if c in seen] + [c for c in seen if c not in charts.COMPONENTS]
    return [{"component": c, "restored": restored[c], "n": seen[c], "mean_gain": sum(gains[c]) / len(gains[c]) if gains[c] else None}
            for c in order]


def example_rows(record: dict) -> list[dict]:
    return [{"component": name, "non_refusal": bool(v.get("non_refusal")), "base_logprob_gain": _gain(v) or 0.0}
            for name, v in _components(record).items()]


def heatmap_rows(records: list[dict]) -> list[dict]:
    return [{"id": rec.get("id"), "component": name, "non_refusal": bool(v.get("non_refusal"))}
            for rec in records for name, v in _components(rec).items()]


def _top_features(record: dict) -> list[dict]:
    for key in ("top_features", "topk_features", "topk"):
        value = record.get(key)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def topk_rows(records: list[dict], sae=None) -> list[dict]:
    """The top-k features over all examples: how often each is in an example's top-k, its mean ‖δz‖, a link."""
    count: dict[int, int] = defaultdict(int)
    norms: dict[int, list[float]] = defaultdict(list)
    links: dict[int, str] = {}
    for rec in records:
        for f in _top_features(rec):
            idx = f.get("index", f.get("feature"))
            if idx is None:
                continue
            idx = int(idx)
            count[idx] += 1
            norm = f.get("delta_z_norm", f.get("abs_dz", f.get("delta_z")))
            if isinstance(norm, (int, float)):
                norms[idx].append(abs(float(norm)))
            url = f.get("neuronpedia_url") or (sae.neuronpedia_url(idx) if sae is not None else None)
            if url:
                links[idx] = url
    rows = [{"feature": i, "count": count[i], "mean_abs_dz": sum(norms[i]) / len(norms[i]) if norms[i] else 0.0,
             "link": links.get(i, "")} for i in count]
    return sorted(rows, key=lambda r: (-r["count"], -r["mean_abs_dz"]))


def topk_table(rows: list[dict]) -> None:
    if not rows:
        st.caption("No top-k features recorded.")
        return
    df = pd.DataFrame(rows)
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"link": st.column_config.LinkColumn("Neuronpedia", display_text="open")})


def component_texts(record: dict) -> None:
    from ui import render

    for name, value in _components(record).items():
        if "text" in value:
            verdict = ":green[restored]" if value.get("non_refusal") else ":red[still refuses]"
            st.markdown(f"**{charts.COMPONENT_LABELS.get(name, name)}** — {verdict} · log-prob gain {(_gain(value) or 0.0):+.2f}")
            st.html(render.highlighted(str(value.get("text", "")), None))
