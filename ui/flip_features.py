"""The per-prompt feature view of a flip: which clamped features fire on which tokens, base versus clamped.

The engine reads the activations (``engine.features.flip_features``); this module picks the flip, renders an
Altair heat-map per answer (features × tokens, one colour scale for both) and lets a cell or the picker open the
feature's card.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import clamp_set, feature_link, state

KEY = "flipfeat"


def heatmap_frame(view) -> pd.DataFrame:
    """One row per (answer, feature, token) of a ``FlipFeatures``."""
    from engine.features.card_store import visible_token
    from engine.method.clamp_sets import sae_spec_of

    rows = []
    for side, text in (("base", view.base), ("clamped", view.clamped)):
        for i, ref in enumerate(view.features):
            label = f"L{ref.hook.split('.')[1]} #{ref.feature}"
            for pos, tok in enumerate(text.tokens):
                rows.append({"answer": side, "feature": ref.feature, "sae": sae_spec_of(ref.sae), "row": label,
                             "pos": pos, "token": f"{pos}·{visible_token(tok)}", "activation": float(text.values[i, pos])})
    return pd.DataFrame(rows)


def heatmap(df: pd.DataFrame, side: str, peak: float) -> alt.Chart:
    part = df[df["answer"] == side]
    n_tokens = int(part["pos"].max()) + 1 if len(part) else 1
    pick = alt.selection_point(name="card", fields=["sae", "feature"], on="click")
    return (
        alt.Chart(part, title=f"{side} answer")
        .mark_rect()
        .encode(
            x=alt.X("token:N", sort=alt.SortField("pos"), title=None, axis=alt.Axis(labelAngle=-60, labelLimit=90)),
            y=alt.Y("row:N", title="clamped feature", sort=None),
            color=alt.Color("activation:Q", scale=alt.Scale(scheme="reds", domain=[0, max(peak, 1e-6)]), title="activation"),
            tooltip=["row", "token", alt.Tooltip("activation:Q", format=".3f")],
        )
        .add_params(pick)
        .properties(width=max(240, 16 * n_tokens), height=22 * max(1, part["row"].nunique()))
    )


def flip_feature_section(config: dict, records: list[dict]) -> None:
    """Pick a flip of the run; show its clamped features' activations on the base and clamped answers."""
    flips = [r for r in records if r.get("base_text") and r.get("clamped_text")]
    if not flips:
        return
    with st.expander("Which clamped features fire on which tokens (one prompt, base versus clamped)"):
        st.caption("Each clamped feature's activation at every answer token, read from the model without the clamp "
                   "(what the clamp overrides). Click a cell, or use the picker, to open that feature's card.")
        by_id = {r.get("id"): r for r in flips}
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        pick = c1.selectbox("Prompt", list(by_id), key=f"{KEY}_pick",
                            format_func=lambda i: f"#{i} {str(by_id[i].get('prompt', ''))[:70]}")
        if c2.button("Show features", key=f"{KEY}_go"):
            from engine.features.flip_features import flip_feature_activations

            rec = by_id[pick]
            try:
                lm = state.get_lm()
                if config.get("model") and config["model"] != lm.name:
                    raise LabError(f"this run was made with model {config['model']}; pick it in the sidebar to read its features")
                with st.spinner("Reading the clamped features on both answers…"):
                    view = flip_feature_activations(lm, clamp_set.run_specs(lm, config), str(rec.get("prompt", "")),
                                                    rec["base_text"], rec["clamped_text"])
                st.session_state[f"{KEY}_view"] = (pick, heatmap_frame(view))
            except LabError as exc:
                st.error(f"Cannot show the features: {exc}")
        shown = st.session_state.get(f"{KEY}_view")
        if not shown or shown[0] != pick:
            return
        df = shown[1]
        peak = float(df["activation"].max()) if len(df) else 0.0
        for side in ("base", "clamped"):
            event = st.altair_chart(heatmap(df, side, peak), key=f"{KEY}_{side}", on_select="rerun")
            _open_from_chart(event, f"{KEY}_{side}")
        feats = df.drop_duplicates(["sae", "feature"])
        for spec, group in feats.groupby("sae", sort=False):
            feature_link.picker(group["feature"].tolist(), spec, f"{KEY}_card_{spec}",
                                label=f"Open the card of ({clamp_set.sae_label(spec)})")


def _open_from_chart(event, key: str) -> None:
    """A clicked cell names its SAE and feature."""
    try:
        points = [p for ps in (event.selection or {}).values() for p in (ps or []) if isinstance(p, dict)]
    except (AttributeError, TypeError):
        points = []
    hit = next((p for p in points if p.get("sae") and p.get("feature") is not None), None)
    if hit is None:
        st.session_state.pop(f"{key}_last", None)
        return
    ident = (hit["sae"], int(hit["feature"]))
    if st.session_state.get(f"{key}_last") != ident:
        st.session_state[f"{key}_last"] = ident
        feature_link.open_card(*ident)
