"""Step 7: the SAE-quality study — for each SAE, its quality against which part of δ restores the answer
(docs/STUDY.md). Studies are run from the command line; this page shows their tables and plots."""

import streamlit as st

from engine.study.quality_study import list_studies
from ui import study_views

st.title("SAE quality study")
st.caption("Does the SAE's reconstruction residual still carry the recovery when the SAE gets better? Each SAE gets "
           "its own clamp preset, flips on the same prompts, encoder recovery and attribution; one row per SAE.")

studies = list_studies()
if not studies:
    st.info("No study yet. Start one from the command line with `python -m engine study sae-quality` and a flips run "
            "(docs/STUDY.md); it shows up here as its SAEs finish.")
    st.stop()
by_name = {p.name: p for p in studies}
name = st.selectbox("Study", list(by_name), key="study_pick", help="Newest first.")
study_views.show_study(by_name[name])
