"""Step 7: the SAE-quality study — for each SAE, its quality against which part of δ restores the answer
(docs/STUDY.md). Start a study here or with `python -m engine study sae-quality`; both show up below."""

import streamlit as st

from engine.study.quality_study import list_studies
from ui import render, state, study_views

st.title("SAE quality study")
st.caption("Does the SAE's reconstruction residual still carry the recovery when the SAE gets better? Each SAE gets "
           "its own clamp preset, flips on the same prompts, encoder recovery and attribution; one row per SAE.")

job = state.attach_job(study_views.JOB_SLOT, study_views.JOB_KIND)
busy = job is not None and job.running
studies = list_studies()
with st.expander("Start a study", expanded=not studies):
    study_views.start_form(busy)
render.live_job(job, "cancel_study", study_views.CANCEL_HELP)

if not studies:
    st.info("No study yet. Start one above, or from the command line with `python -m engine study sae-quality` and a "
            "flips run (docs/STUDY.md); it shows up here as its SAEs finish.")
    st.stop()
by_name = {p.name: p for p in studies}
name = st.selectbox("Study", list(by_name), key="study_pick", help="Newest first.")
folder = by_name[name]
if not study_views.show_study(folder):
    study_views.resume_button(folder, busy)
