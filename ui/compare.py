"""The Runs page's Compare tab: several recoveries and sweeps on one chart, a readable table of their settings and
results, and a link that reopens the same view (the picks live in the URL: ``?runs_tab=Compare&cmp=RUN/RECORD&…``)."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from engine.store import compare as cmp
from ui import charts, state

PICK_KEY = "cmp"
"""The multiselect of records; bound to the URL's ``cmp`` parameter (one per record)."""
TAB_KEY = "runs_tab"
"""The Runs page's tabs; bound to the URL, so a link opens on Compare."""
DIFF_KEY = "cmp_diff_only"


def records_section() -> None:
    """Pick records of any runs; overlay their curves on one chart with one legend; the settings table; the link."""
    refs = cmp.comparable()
    labels = {r.key: r.label for r in refs}
    asked = [k for k in st.query_params.get_all(PICK_KEY) if k not in labels]
    if asked:
        st.warning("The link names records that are no longer here (deleted, or moved to the trash): "
                   + ", ".join(f"`{k}`" for k in asked))
    if not refs:
        st.info("No run has a recovery or a sweep yet: start one on the Recovery page.")
        return
    keys = st.multiselect("Recoveries and sweeps to compare (RUN/RECORD)", list(labels), key=PICK_KEY,
                          bind="query-params", placeholder="Choose two or more (any runs)",
                          help="Every recovery and sweep record of every run. The choice is kept in the page's address.")
    if not keys:
        st.caption("Pick records above: their loss and drift curves (and sweeps' recovery against budget) share one chart.")
        return
    found = cmp.resolve(keys)
    for key in found.missing:
        st.warning(f"`{key}` cannot be read any more; it is left out.")
    picked = found.found
    try:
        steps, sweeps = cmp.step_curves(picked), cmp.sweep_curves(picked)
    except LabError as exc:
        st.error(f"The records' files cannot be read: {exc}")
        return
    chart = charts.compare_chart(steps, sweeps, [c.ref.label for c in picked])
    if state.presenter():
        chart = charts.presenter_style(chart)
    st.altair_chart(chart, key="cmp_chart")
    st.caption("Lines: the mean over each recovery's prompts; bands: its lowest to highest prompt. Sweeps: one dash per rate.")
    only_diff = st.toggle("Differences only", value=False, key=DIFF_KEY)
    rows = cmp.settings_table(picked, differences_only=only_diff)
    if rows:  # a static table: long values (a clamp set) wrap instead of being cut off
        table = pd.DataFrame([{**r, "differs": "≠" if r["differs"] else ""} for r in rows]).set_index(["section", "setting"])
        st.table(table)
    else:
        st.caption("Every setting and result shown is the same.")
    share_link(keys)


def share_link(keys: list[str]) -> None:
    """The address that reopens this comparison (the Runs page, the Compare tab, these records)."""
    base = st.context.url or ""
    query = urlencode([(TAB_KEY, "Compare"), *((PICK_KEY, k) for k in keys)])
    st.markdown("**Link to this comparison** (copy it; it reopens these records here):")
    st.code(f"{base}?{query}", language=None)


def runs_section(names: list[str]) -> None:
    """Two runs' settings and summaries side by side, every value written out (no JSON blobs)."""
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A", names, index=0, key="cmp_a")
    b = c2.selectbox("Run B", names, index=min(1, len(names) - 1), key="cmp_b")
    only_diff = st.toggle("Differences only", value=True, key="cmp_diff")
    try:
        rows = cmp.readable_run_rows(catalogue.compare_runs(a, b))
    except LabError as exc:
        st.error(str(exc))
        return
    shown = [r for r in rows if not r["same"]] if only_diff else rows
    st.dataframe(pd.DataFrame(shown, columns=["field", "a", "b", "same"]), hide_index=True, width="stretch",
                 column_config={"field": st.column_config.TextColumn("setting", width="medium"),
                                "a": st.column_config.TextColumn(f"A: {a}", width="large"),
                                "b": st.column_config.TextColumn(f"B: {b}", width="large"),
                                "same": st.column_config.CheckboxColumn("same", width="small")})
