"""Altair charts of the lab (live recovery curves, sweep curve, attribution bars) and their PNG/SVG export."""

from __future__ import annotations

import altair as alt
import pandas as pd

from engine.attribution.components import COMPONENTS

COMPONENT_LABELS = {"full": "full δ", "clamped": "clamped part", "non_clamped": "non-clamped part", "topk": "top-k part",
                    "residual": "SAE residual", "knockout": "knockout (δ − top-k)"}


def step_frame(events: list[dict]) -> pd.DataFrame:
    """Per-step events (``engine.recovery.config.StepEvent`` rows) as a frame with a ``prompt`` column for colour."""
    if not events:
        return pd.DataFrame(columns=["step", "prompt", "loss", "drift"])
    df = pd.DataFrame(events)
    df["prompt"] = df["prompt_id"].astype(str)
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
            x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)),
            # "~g": 1.7e-7 stays readable where a fixed format writes 0.00000017 (an encoder run's drift)
            y=alt.Y(f"{metric}:Q", title=metric.replace("_", " "), scale=scale, axis=alt.Axis(format="~g")),
            color=alt.Color("prompt:N", title="prompt", legend=alt.Legend(columns=2, symbolLimit=24)),
            tooltip=["prompt", "step", alt.Tooltip(f"{metric}:Q", format=".4~g")],
        )
        .properties(height=height)
    )


def layer_drift_frame(events: list[dict], delta_layer: int | None = None) -> pd.DataFrame:
    """Per step and clamped layer: mean, min and max over prompts of ``drift_per_layer`` (answer positions)."""
    from engine.errors import LabError
    from engine.lm.saes import hook_layer

    rows = [{"step": e["step"], "hook": h, "drift": v} for e in events for h, v in (e.get("drift_per_layer") or {}).items() if v is not None]
    if not rows:
        return pd.DataFrame(columns=["step", "hook", "layer", "layer_index", "mean", "min", "max", "prompts"])
    df = pd.DataFrame(rows).groupby(["step", "hook"], as_index=False)["drift"].agg(["mean", "min", "max", "count"])
    df = df.rename(columns={"count": "prompts"})

    def index(hook: str) -> int:
        try:
            return hook_layer(hook)
        except LabError:
            return 10**6

    df["layer_index"] = df["hook"].map(index)
    df["layer"] = [hook if i == 10**6 else f"layer {i}" + (" (δ's layer)" if i == delta_layer else "") for hook, i in zip(df["hook"], df["layer_index"])]
    return df


def layer_drift_chart(df: pd.DataFrame, height: int = 230) -> alt.Chart:
    """One line per clamped layer: the mean drift over prompts, with a band from the lowest to the highest prompt."""
    order = df.drop_duplicates("layer").sort_values(["layer_index", "layer"])["layer"].tolist()
    # Distinct hues (the theme's default blues are hard to tell apart); legend on the right and a short y title like
    # the other charts: Streamlit fits the whole chart into ``height``, so a bottom legend or a long title squeezes the plot.
    color = alt.Color("layer:N", title="clamped layer", sort=order, scale=alt.Scale(scheme="tableau10"),
                      legend=alt.Legend(labelLimit=200, symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1))
    base = alt.Chart(df, title="Drift per clamped layer").encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)), color=color)
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("min:Q", title="drift"), y2="max:Q")
    line = base.mark_line(point=len(df) < 60).encode(
        y="mean:Q",
        tooltip=["layer", "hook", "step", alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("min:Q", format=".4g"),
                 alt.Tooltip("max:Q", format=".4g"), "prompts"],
    )
    return (band + line).properties(height=height)


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


def _order(df: pd.DataFrame) -> list[str]:
    present = set(df["component"])
    return [COMPONENT_LABELS.get(c, c) for c in COMPONENTS if c in present] + sorted(c for c in present if c not in COMPONENT_LABELS)


OUTCOME_SCALE = alt.Scale(domain=["restored", "still refuses"], range=["#2b8a3e", "#e03131"])


def attribution_aggregate_chart(rows: list[dict]) -> alt.Chart:
    """Horizontal bars: how many examples each component alone restores (non-refusal), out of n."""
    df = pd.DataFrame(rows or [], columns=["component", "restored", "n", "mean_gain"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    df["text"] = [f"{r} / {n}" for r, n in zip(df["restored"], df["n"])]
    n = int(df["n"].max()) if len(df) else 1
    base = alt.Chart(df, title="Each part replayed alone under the clamp: examples restored").encode(
        y=alt.Y("label:N", sort=_order(df), title="", axis=alt.Axis(labelLimit=240)),
    )
    bars = base.mark_bar(color="#2b8a3e").encode(
        x=alt.X("restored:Q", title="examples restored (non-refusal)", scale=alt.Scale(domain=[0, max(1, n)]),
                axis=alt.Axis(format="d", tickMinStep=1)),
        tooltip=["label", "restored", "n", alt.Tooltip("mean_gain:Q", format=".3f", title="mean base log-prob gain")],
    )
    text = base.mark_text(align="left", dx=4).encode(x="restored:Q", text="text:N")
    return (bars + text).properties(height=36 * max(1, len(df)))


def attribution_example_chart(rows: list[dict], title: str) -> alt.Chart:
    """Horizontal bars for one example: base log-prob gain per component, coloured by whether it restored the answer."""
    df = pd.DataFrame(rows or [], columns=["component", "non_refusal", "base_logprob_gain"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    df["outcome"] = df["non_refusal"].map(lambda v: "restored" if v else "still refuses")
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", sort=_order(df), title="", axis=alt.Axis(labelLimit=240)),
            x=alt.X("base_logprob_gain:Q", title="gain in log-prob of the base answer vs the defended model"),
            color=alt.Color("outcome:N", scale=OUTCOME_SCALE, title=""),
            tooltip=["label", "outcome", alt.Tooltip("base_logprob_gain:Q", format=".3f")],
        )
        .properties(height=36 * max(1, len(df)))
    )


def attribution_heatmap(rows: list[dict]) -> alt.Chart:
    """Components × examples: restored or not (the whole run at a glance)."""
    df = pd.DataFrame(rows or [], columns=["id", "component", "non_refusal"])
    df["label"] = df["component"].map(lambda c: COMPONENT_LABELS.get(c, c))
    df["outcome"] = df["non_refusal"].map(lambda v: "restored" if v else "still refuses")
    return (
        alt.Chart(df, title="Every example")
        .mark_rect(stroke="white")
        .encode(
            x=alt.X("id:O", title="prompt id", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("label:N", sort=_order(df), title="", axis=alt.Axis(labelLimit=240)),
            color=alt.Color("outcome:N", scale=OUTCOME_SCALE, title=""),
            tooltip=["id", "label", "outcome"],
        )
        .properties(height=36 * max(1, df["component"].nunique()))
    )


def topk_chart(rows: list[dict]) -> alt.Chart:
    df = pd.DataFrame(rows or [], columns=["feature", "count", "mean_abs_dz"])
    df["feature"] = df["feature"].astype(str)
    return (
        alt.Chart(df, title="Top-k changed features (across examples)")
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort="-x", title="feature", axis=alt.Axis(labelOverlap=False)),
            x=alt.X("mean_abs_dz:Q", title="mean ‖δz‖ over the prompt positions"),
            tooltip=["feature", "count", alt.Tooltip("mean_abs_dz:Q", format=".3f")],
        )
        .properties(height=24 * max(1, len(df)))
    )


def chart_height(chart) -> int | None:
    """The chart's own height plus room for its title and axis (Streamlit needs it for band-scaled charts)."""
    h = getattr(chart, "height", None)
    return int(h) + 90 if isinstance(h, (int, float)) else None


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


# ------------------------------------------------------------------------------------------------ comparing records


def compare_chart(steps: list[dict], sweeps: list[dict], records: list[str], height: int = 240) -> alt.TopLevelMixin:
    """Several records on one chart with one shared legend (a colour per record): loss and drift per step (the mean over
    each recovery's prompts, a band from its lowest to its highest prompt) and recovery against budget (one dash per
    rate, Wilson 95 % intervals). Panels without data are left out."""
    color = alt.Color("record:N", title="record", scale=alt.Scale(domain=records, scheme="tableau10"),
                      legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=600, symbolType="stroke",
                                        symbolStrokeWidth=3, symbolOpacity=1))
    sdf = pd.DataFrame(steps or [], columns=["record", "metric", "step", "mean", "min", "max", "prompts"])
    panels = []
    for metric, title in (("loss", "Loss per step"), ("drift", "Drift of the clamped features per step")):
        part = sdf[sdf["metric"] == metric]
        if part.empty:
            continue
        base = alt.Chart(part, title=title).encode(x=alt.X("step:Q", title="step", axis=alt.Axis(format="d", tickMinStep=1)), color=color)
        y_title = f"{metric} (mean over prompts)"  # one title for both layers (Vega-Lite joins differing ones)
        band = base.mark_area(opacity=0.12).encode(y=alt.Y("min:Q", title=y_title), y2="max:Q")
        # a dash per record too: two recoveries whose curves coincide (e.g. the same loss) stay distinguishable
        line = base.mark_line(point=len(part) < 80).encode(
            y=alt.Y("mean:Q", title=y_title), strokeDash=alt.StrokeDash("record:N", legend=None, sort=records),
            tooltip=["record", "step", alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("min:Q", format=".4g"),
                     alt.Tooltip("max:Q", format=".4g"), "prompts"])
        panels.append((band + line).properties(height=height, width=340))
    wdf = pd.DataFrame(sweeps or [], columns=["record", "metric", "budget", "rate", "lo", "hi", "k", "n"])
    if not wdf.empty:
        base = alt.Chart(wdf, title="Recovery against budget (Wilson 95 % intervals)").encode(
            x=alt.X("budget:Q", title="budget ‖δ‖"), color=color)
        line = base.mark_line(point=True).encode(
            y=alt.Y("rate:Q", title="rate", scale=alt.Scale(domain=[0, 1])),
            strokeDash=alt.StrokeDash("metric:N", title="rate"),
            tooltip=["record", "metric", "budget", alt.Tooltip("rate:Q", format=".2f"), "k", "n"])
        bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title="rate"), y2="hi:Q")
        panels.append((line + bars).properties(height=height, width=340))
    if not panels:
        return alt.Chart(pd.DataFrame({"record": records}), title="Nothing to chart yet").mark_point().encode(color=color)
    return alt.hconcat(*panels).resolve_scale(color="shared")


def presenter_style(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    """Large axes, titles and legends for a projector (presenter mode); apply to a finished top-level chart."""
    return (chart.configure_axis(labelFontSize=18, titleFontSize=21, tickSize=8)
            .configure_title(fontSize=26, anchor="start")
            .configure_legend(labelFontSize=18, titleFontSize=19, symbolSize=160))
