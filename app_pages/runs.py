"""Step 6: every saved run — open, compare recoveries on one chart (and two runs side by side), export as a zip, charts
as PNG/SVG for slides, delete to the trash and restore from it."""

import json

import pandas as pd
import streamlit as st

from engine.errors import LabError
from engine.store import catalogue, labels
from ui import compare, records, run_views, state

st.title("Runs")
st.caption(f"Saved under `{catalogue.runs_root().resolve()}` (set `SAE_LAB_DATA` to move it). CLI runs written there show up too.")
run_views.show_flash()

runs = catalogue.list_runs()
if not runs:
    st.info("No runs yet: make one on the Flips page; runs made from the command line show up here too.")
    run_views.trash_section()
    st.stop()

st.dataframe(pd.DataFrame([run_views.run_row(r) for r in runs]), hide_index=True, width="stretch",
             column_config=run_views.RUN_COLUMNS)
names = [r.name for r in runs]
# Bound to the URL (?runs_tab=Compare), so a link reopens a tab; every tab is still drawn on each run.
tab_open, tab_compare, tab_export, tab_delete = st.tabs(["Open", "Compare", "Export", "Delete"], key=compare.TAB_KEY,
                                                        bind="query-params")

with tab_open:
    name = state.run_picker("Run", key="runs_open", need="config.json")
    try:
        info = catalogue.get_run(name)
    except LabError as exc:
        st.error(str(exc))
        st.stop()
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Settings** (`config.json`)")
        run_views.readable_table({k: v for k, v in info.config.items() if k != "judge"}, "runs_settings")
        st.markdown("**Hand labels:** " + ", ".join(f"{k} {v}" for k, v in labels.label_counts(name).items()))
    with c2:
        record = records.pick(info, "recovery", f"runs_record:{name}")  # every recovery of the run is kept
        for title, data in (("Flips summary", info.summary), ("Recovery summary", record.summary if record else None),
                            ("Attribution summary", record.attribution_summary if record else None)):
            if data:
                with st.expander(title):
                    run_views.readable_table(data, f"runs_{title}")
        if record is not None:
            records.delete_button(info, record, f"runs_record_delete:{name}")
    st.markdown("**Files:** " + ", ".join(sorted(p.name for p in info.path.iterdir())))
    st.subheader("Charts for slides")
    run_views.chart_downloads(info, record)

with tab_compare:
    compare.records_section()
    st.subheader("Two runs side by side")
    if len(names) < 2:
        st.info("Comparing runs needs two runs.")
    else:
        compare.runs_section(names)

with tab_export:
    name_x = st.selectbox("Run to export", names, key="export_run")
    st.caption("A zip with every JSON/JSONL file, each JSONL also as CSV and parquet, the δ tensors, and the hand labels CSV.")
    st.download_button("Download the run as a zip", data=lambda: catalogue.export_zip(name_x), file_name=f"{name_x}.zip",
                       mime="application/zip", key="export_zip")
    st.download_button("Download config.json", data=json.dumps(catalogue.get_run(name_x).config, indent=2),
                       file_name=f"{name_x}-config.json", mime="application/json", key="export_config")

with tab_delete:
    run_views.delete_section(names)

run_views.trash_section()
