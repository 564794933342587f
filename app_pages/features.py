"""Step 2: find features (contrast, prompt, index, Neuronpedia text search), inspect them, build the clamp set."""

import streamlit as st

from ui import clamp_set, clamp_views, direction_views, state
from ui import feature_views as fv

st.title("Features and the clamp set")
lm, sidebar_sae = state.require_model()
clamp_set.clamp_state(lm, sidebar_sae)

st.caption(
    "Find candidate refusal features, look at their cards, and add them to the clamp set used by Flips, Recovery "
    "and Attribution. A clamp set may span several SAEs (layers): pick the SAE to search below; each SAE has its row."
)
sae = clamp_views.search_sae(lm, sidebar_sae)
st.caption(f"SAE `{sae.source}` at `{sae.hook_name}` (layer {sae.layer}) · {sae.d_sae} features.")

if not state.presenter():
    tabs = st.tabs(["By contrast", "By prompt", "By index", "Neuronpedia search", "By refusal direction"])
    with tabs[0]:
        fv.contrast_tab(lm, sae)
    with tabs[1]:
        fv.prompt_tab(lm, sae)
    with tabs[2]:
        fv.index_tab(lm, sae)
    with tabs[3]:
        fv.neuronpedia_tab(lm, sae)
    with tabs[4]:
        direction_views.direction_tab(lm, sidebar_sae, sae)

st.divider()
st.subheader("Feature card")
fv.feature_card_section(lm, sae)

st.divider()
st.subheader("Clamp set")
clamp_views.clamp_editor(lm, sidebar_sae)
if not state.presenter():
    clamp_views.presets_section(lm, sae)
