"""Feature ids that open their card, anywhere in the dashboard.

A link sets the card target (session state, and ``st.query_params`` ``card_sae`` + ``feature`` so the address can
be shared: the Features page opens that card when loaded with them) and opens the card in a dialog. Three forms:

* :func:`picker`: "Open the card of [#f ▾] [Open card]" under a table or a chart (works everywhere, also in tests);
* :func:`table_selection`: a ``st.dataframe(..., on_select="rerun")`` event whose picked row opens its card;
* :func:`chart_selection`: an ``st.altair_chart(..., on_select="rerun")`` event whose picked bar/cell opens its card.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import streamlit as st

from engine.errors import LabError

logger = logging.getLogger(__name__)

TARGET = "card_target"
"""Session-state key: ``{"sae": spec, "feature": int}`` of the card last opened."""
FIELD = "feature"
"""The Altair field (and dataframe column) that holds a feature id."""


def set_target(spec: str, feature: int) -> None:
    st.session_state[TARGET] = {"sae": spec, "feature": int(feature)}
    try:
        st.query_params["card_sae"] = spec
        st.query_params["feature"] = str(int(feature))
    except Exception:  # noqa: BLE001 - query params are a convenience; the card opens without them
        logger.debug("could not set the card query params", exc_info=True)


def target() -> dict | None:
    """The card target: from session state, else from the address (``?card_sae=…&feature=…``)."""
    got = st.session_state.get(TARGET)
    if got:
        return got
    qp = st.query_params
    if "feature" in qp and str(qp["feature"]).isdigit():
        return {"sae": qp.get("card_sae") or None, "feature": int(qp["feature"])}
    return None


def open_card(spec: str, feature: int) -> None:
    """Set the target and show the card in a dialog (call in the script run where the link was clicked)."""
    set_target(spec, feature)
    _dialog(spec, int(feature))


@st.dialog("Feature card", width="large")
def _dialog(spec: str, feature: int) -> None:
    from ui import card_views, state

    current = st.session_state.get(TARGET) or {"sae": spec, "feature": feature}  # a neighbour link moves it
    try:
        lm = state.get_lm()
        sae = state.load_sae_spec(current["sae"])
    except LabError as exc:
        st.error(f"Cannot open the card: {exc}")
        return
    card_views.card_view(lm, sae, int(current["feature"]), key="dlg")


def picker(features: Sequence[int], spec: str, key: str, label: str = "Open the card of") -> None:
    """A select box of ``features`` and an Open card button."""
    feats = list(dict.fromkeys(int(f) for f in features))
    if not feats:
        return
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    pick = c1.selectbox(label, feats, format_func=lambda f: f"feature {f}", key=f"{key}_pick")
    if c2.button("Open card", key=f"{key}_open", help="Density, histogram, examples with per-token activations, "
                                                      "neighbours and logit effects (from the precomputed store)"):
        open_card(spec, int(pick))


def _feature_of(rows: list[dict], event) -> int | None:
    try:
        picked = event.selection.rows  # dataframe
    except AttributeError:
        return None
    if picked:
        row = rows[int(picked[0])]
        return int(row[FIELD]) if row.get(FIELD) is not None else None
    return None


def table_selection(rows: list[dict], event, spec: str, key: str) -> None:
    """Open the card of the row picked in ``st.dataframe(..., on_select="rerun", selection_mode="single-row")``."""
    feature = _feature_of(rows, event)
    if feature is not None and st.session_state.get(f"{key}_last") != feature:
        st.session_state[f"{key}_last"] = feature  # a selection persists across reruns: open once per new pick
        open_card(spec, feature)
    elif feature is None:
        st.session_state.pop(f"{key}_last", None)


def chart_selection(event, spec: str, key: str) -> None:
    """Open the card of the bar or cell picked in ``st.altair_chart(..., on_select="rerun")`` (a point selection
    named anything, over a field ``feature``)."""
    feature = None
    try:
        for points in (event.selection or {}).values():
            for p in points or []:
                if isinstance(p, dict) and p.get(FIELD) is not None:
                    feature = int(p[FIELD])
                    break
    except (AttributeError, TypeError, ValueError):
        feature = None
    if feature is not None and st.session_state.get(f"{key}_last") != feature:
        st.session_state[f"{key}_last"] = feature
        open_card(spec, feature)
    elif feature is None:
        st.session_state.pop(f"{key}_last", None)
