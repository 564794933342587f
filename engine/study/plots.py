"""The study's two plots as altair charts (the dashboard renders them; ``study.html`` saves them, offline).

* quality vs share: explained variance, L0 and dead fraction (one panel each) against the share of valid flips
  restored by the residual part alone and by the non-clamped features;
* mean base-answer log-prob gain of each part of δ, per SAE.
"""

from __future__ import annotations

import logging
from pathlib import Path

import altair as alt
import pandas as pd

from engine.study.table import gain_frame, quality_share_frame

logger = logging.getLogger(__name__)

METRIC_TITLES = {"explained_variance": "explained variance", "l0": "L0", "dead_fraction": "dead fraction"}


def quality_chart(table: pd.DataFrame) -> alt.Chart | None:
    """Quality metric (x) against the residual-only and non-clamped shares (y); None when no row has both."""
    data = quality_share_frame(table)
    if data.empty:
        return None
    data["metric"] = data["metric"].map(METRIC_TITLES)
    base = alt.Chart(data).mark_point(filled=True, size=80).encode(
        x=alt.X("value:Q", title=None, scale=alt.Scale(zero=False)),
        y=alt.Y("share:Q", title="share of valid flips restored", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("part:N", title="part replayed alone"),
        shape=alt.Shape("part:N"),
        tooltip=["sae", "metric", "value", "part", alt.Tooltip("share:Q", format=".2f")],
    ).properties(width=220, height=200)
    return base.facet(column=alt.Column("metric:N", title=None, sort=list(METRIC_TITLES.values()))).resolve_scale(x="independent")


def gain_chart(table: pd.DataFrame) -> alt.Chart | None:
    """Mean base-answer log-prob gain per part (x) and SAE (colour); None when no row has gains."""
    data = gain_frame(table)
    if data.empty:
        return None
    return alt.Chart(data).mark_bar().encode(
        x=alt.X("part:N", title="part of δ replayed alone", sort=list(dict.fromkeys(data["part"]))),
        xOffset="sae:N",
        y=alt.Y("gain:Q", title="mean base log-prob gain"),
        color=alt.Color("sae:N", title="SAE"),
        tooltip=["sae", "part", alt.Tooltip("gain:Q", format=".3f")],
    ).properties(width=480, height=240)


def save_html(table: pd.DataFrame, path: Path, title: str) -> None:
    """Both charts in one self-contained HTML file (vega inlined by vl-convert, so it opens offline); a failure is
    logged, not raised: the table is the result."""
    try:
        _save(table, path, title)
    except Exception as exc:  # noqa: BLE001 - e.g. no offline renderer installed
        logger.warning("%s not written: %s", path.name, exc)


def _save(table: pd.DataFrame, path: Path, title: str) -> None:
    charts = [c for c in (quality_chart(table), gain_chart(table)) if c is not None]
    if not charts:
        return
    alt.vconcat(*charts).properties(title=f"SAE quality study {title}").save(str(path), inline=True)
