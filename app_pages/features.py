"""Step 2: find features (contrast, prompt, index, Neuronpedia text search), inspect them, build the clamp set."""

import streamlit as st

from ui import feature_views as fv
from ui import state

st.title("Features and the clamp set")
lm, sae = state.require_model()
clamp = state.clamp_state(sae)

st.caption(
    f"SAE `{sae.source}` at `{sae.hook_name}` · {sae.d_sae} features. Find candidate refusal features, look at "
    "their cards, and add them to the clamp set used by Flips, Recovery and Attribution."
)

if not state.presenter():
    tabs = st.tabs(["By contrast", "By prompt", "By index", "Neuronpedia search"])
    with tabs[0]:
        fv.contrast_tab(lm, sae)
    with tabs[1]:
        fv.prompt_tab(lm, sae)
    with tabs[2]:
        fv.index_tab(sae)
    with tabs[3]:
        fv.neuronpedia_tab(sae)

st.divider()
st.subheader("Feature card")
fv.feature_card_section(lm, sae)

st.divider()
st.subheader("Clamp set")
fv.clamp_editor(sae)
if not state.presenter():
    fv.presets_section(sae)
