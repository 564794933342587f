"""Page pieces for the SAE-quality study: the table with its column meanings, the two plots, the downloads.

The engine builds the table (``engine.study.table``) and the charts (``engine.study.plots``); this module only renders.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.errors import LabError
from engine.study import plots
from engine.study.config import COLUMNS
from engine.study.quality_study import FINISHED
from engine.study.table import read_study, table_frame

_PERCENT = tuple(c for c in COLUMNS if c.startswith("share_")) + ("recovered",)


def _column_config() -> dict:
    config = {}
    for col, doc in COLUMNS.items():
        if col in _PERCENT:
            config[col] = st.column_config.NumberColumn(col, help=doc, format="percent")
        elif col.startswith("gain_") or col in ("explained_variance", "dead_fraction", "mean_drift"):
            config[col] = st.column_config.NumberColumn(col, help=doc, format="%.3f")
        else:
            config[col] = st.column_config.Column(col, help=doc)
    return config


def show_study(folder: Path) -> None:
    """The table and plots of one study folder (what ``study sae-quality`` wrote)."""
    if not (folder / "study.json").is_file():
        st.info("This study has no finished SAE yet. It fills in as each SAE finishes; an interrupted study is "
                "continued from the command line (docs/STUDY.md, resume).")
        return
    try:
        data = read_study(folder)
    except LabError as exc:
        st.error(str(exc))
        return
    table = table_frame(data.get("rows", []))
    n_done = int(table["status"].isin(FINISHED).sum()) if not table.empty else 0
    st.caption(f"Prompts from the flips run `{data.get('run')}` · {len(table)} SAE(s), {n_done} finished. "
               "Hover a column header for its meaning; each SAE's flips run is on the Runs page under the name in "
               "the *run* column.")
    if n_done < len(table):
        st.warning("This study was stopped before every SAE finished (see *status*); it continues from the command "
                   "line with resume (docs/STUDY.md).")
    if (table["status"] == "no valid flips").any():
        st.info("An SAE with no valid flips has nothing to recover or attribute: its clamp flipped none of the prompts.")
    st.dataframe(table, hide_index=True, width="stretch", column_config=_column_config(), key="study_table")
    st.subheader("SAE quality against the part that restores the answer")
    chart = plots.quality_chart(table)
    if chart is None:
        st.info("No SAE of this study has attribution results yet, so there is nothing to plot.")
    else:
        st.altair_chart(chart, key="study_quality_chart")
        st.caption("Share of valid flips whose answer comes back (not a refusal) when only that part of δ is replayed "
                   "under the clamp, against each quality measure of the SAE.")
    gains = plots.gain_chart(table)
    if gains is not None:
        st.subheader("Mean base-answer log-prob gain of each part")
        st.altair_chart(gains, key="study_gain_chart")
    c1, c2 = st.columns(2)
    c1.download_button("Download study.csv", data=(folder / "study.csv").read_bytes() if (folder / "study.csv").is_file() else b"",
                       file_name=f"{folder.name}.csv", mime="text/csv", key="study_csv")
    if (folder / "study.html").is_file():
        c2.download_button("Download the plots (study.html, works offline)", data=(folder / "study.html").read_bytes(),
                           file_name=f"{folder.name}.html", mime="text/html", key="study_html")
