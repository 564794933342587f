"""Altair charts of the lab (live recovery curves, sweep curve, attribution bars) and their PNG/SVG export."""

from __future__ import annotations

import altair as alt
import pandas as pd

COMPONENTS = ["full", "clamped", "non_clamped", "topk", "residual", "knockout"]
COMPONENT_LABELS = {"full": "full δ", "clamped": "clamped part", "non_clamped": "non-clamped part", "topk": "top-k part",
                    "residual": "SAE residual", "knockout": "knockout (δ − top-k)"}


def step_frame(events: list[dict]) -> pd.DataFrame:
    """Per-step events as a frame with ``step``, ``prompt`` and the metric columns present."""
    if not events:
        return pd.DataFrame(columns=["step", "prompt", "loss", "drift"])
    df = pd.DataFrame(events)
    if "step" not in df:
        df["step"] = range(len(df))
    prompt_col = next((c for c in ("prompt_id", "id", "prompt") if c in df), None)
    df["prompt"] = df[prompt_col].astype(str) if prompt_col else "all"
    return df


def metric_chart(df: pd.DataFrame, metric: str, title: str, height: int = 230, log: bool = False) -> alt.Chart:
    """One line per prompt of ``metric`` against the step."""
    if df.empty or metric not in df:
        df = pd.DataFrame({"step": [], "prompt": [], metric: []})
    scale = alt.Scale(type="symlog") if log else alt.Scale(zero=False)
    return (
        alt.Chart(df[["step", "prompt", metric]].dropna(), title=title)
        .mark_line(point=len(df) < 60)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y(f"{metric}:Q", title=metric.replace("_", " "), scale=scale),
            color=alt.Color("prompt:N", title="prompt", legend=alt.Legend(columns=2, symbolLimit=24)),
            tooltip=["prompt", "step", alt.Tooltip(f"{metric}:Q", format=".4f")],
        )
        .properties(height=height)
    )


def sweep_chart(rows: list[dict]) -> alt.Chart:
    """Recovery rate against budget, one line per metric, with Wilson 95 % intervals as error bars."""
    df = pd.DataFrame(rows or [], columns=["budget", "metric", "rate", "lo", "hi", "k", "n"])
    base = alt.Chart(df, title="Recovery against budget (Wilson 95 % intervals)").encode(
        x=alt.X("budget:Q", title="budget ‖δ‖"), color=alt.Color("metric:N", title="")
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("rate:Q", title="rate", scale=alt.Scale(domain=[0, 1])),
        tooltip=["metric", "budget", alt.Tooltip("rate:Q", format=".2f"), "k", "n", alt.Tooltip("lo:Q", format=".2f"), alt.Tooltip("hi:Q", format=".2f")],
    )
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title="rate"), y2="hi:Q")
    return (line + bars).properties(height=280)


def attribution_aggregate_chart(rows: list[dict]) -> alt.Chart:
    """Bars: how many examples each component alone restores (non-refusal), out of n."""
    df = pd.DataFrame(rows or [], columns=["component", "restored", "n", "mean_gain"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    order = [COMPONENT_LABELS.get(c, c) for c in COMPONENTS if c in set(df["component"])]
    return (
        alt.Chart(df, title="Replayed alone under the clamp: examples restored")
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=order, title="", axis=alt.Axis(labelAngle=-20)),
            y=alt.Y("restored:Q", title="non-refusal (count)"),
            color=alt.Color("label:N", sort=order, legend=None),
            tooltip=["label", "restored", "n", alt.Tooltip("mean_gain:Q", format=".3f", title="mean base log-prob gain")],
        )
        .properties(height=280)
    )


def attribution_example_chart(rows: list[dict], title: str) -> alt.Chart:
    """Bars for one example: base log-prob gain per component, coloured by whether it restored the answer."""
    df = pd.DataFrame(rows or [], columns=["component", "non_refusal", "base_logprob_gain"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    df["outcome"] = df["non_refusal"].map(lambda v: "restored" if v else "still refuses")
    order = [COMPONENT_LABELS.get(c, c) for c in COMPONENTS if c in set(df["component"])]
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=order, title="", axis=alt.Axis(labelAngle=-20)),
            y=alt.Y("base_logprob_gain:Q", title="base answer log-prob gain"),
            color=alt.Color("outcome:N", scale=alt.Scale(domain=["restored", "still refuses"], range=["#2b8a3e", "#c92a2a"]), title=""),
            tooltip=["label", "outcome", alt.Tooltip("base_logprob_gain:Q", format=".3f")],
        )
        .properties(height=260)
    )


def attribution_heatmap(rows: list[dict]) -> alt.Chart:
    """Examples × components: restored or not (the whole run at a glance)."""
    df = pd.DataFrame(rows or [], columns=["id", "component", "non_refusal"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    df["outcome"] = df["non_refusal"].map(lambda v: "restored" if v else "still refuses")
    order = [COMPONENT_LABELS.get(c, c) for c in COMPONENTS if c in set(df["component"])]
    return (
        alt.Chart(df, title="Every example")
        .mark_rect(stroke="white")
        .encode(
            x=alt.X("label:N", sort=order, title="", axis=alt.Axis(labelAngle=-20)),
            y=alt.Y("id:O", title="prompt id"),
            color=alt.Color("outcome:N", scale=alt.Scale(domain=["restored", "still refuses"], range=["#2b8a3e", "#f1aeb5"]), title=""),
            tooltip=["id", "label", "outcome"],
        )
    )


def topk_chart(rows: list[dict]) -> alt.Chart:
    df = pd.DataFrame(rows or [], columns=["feature", "count", "mean_abs_dz"])
    return (
        alt.Chart(df, title="Top-k changed features (across examples)")
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort="-x", title="feature"),
            x=alt.X("mean_abs_dz:Q", title="mean |δz|"),
            tooltip=["feature", "count", alt.Tooltip("mean_abs_dz:Q", format=".3f")],
        )
        .properties(height=max(120, 18 * len(df)))
    )


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())
