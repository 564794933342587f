"""Step 1: the model and SAE chosen in the sidebar, what they are, and where to go next."""

import pandas as pd
import streamlit as st

from ui import clamp_set, state

st.title("Pick a model and an SAE")
st.markdown(
    "Choose them in the sidebar. The offline default — **SmolLM2-135M-Instruct** with the lab's own SAE — "
    "needs no downloads. Registry SAEs (sae_lens) load when the model hub is reachable; a local sae_lens "
    "folder always works."
)

with st.expander("Model from a local folder · number format", expanded=bool(st.session_state.get(state.MODEL_FOLDER_KEY))):
    from engine.lm.dtypes import DTYPE_CHOICES

    st.caption("A Hugging Face checkpoint folder (config.json, weights, tokenizer) of a gpt2, llama, qwen2 or gemma-2 "
               "model replaces the sidebar's model; leave it empty to use the sidebar's. Number format auto: float32 "
               "on CPU, bfloat16 on a GPU for models over 1B parameters.")
    folder = st.text_input("Model folder", value=st.session_state.get(state.MODEL_FOLDER_KEY) or "", key="pick_model_folder",
                           placeholder="/path/to/checkpoint")
    dtype = st.selectbox("Number format", DTYPE_CHOICES, index=DTYPE_CHOICES.index(state.model_dtype()), key="pick_dtype")
    if st.button("Use this model", key="pick_use_model"):
        problem = state.set_model_source(folder, dtype)
        if problem:
            st.error(problem)

lm, sae = state.require_model()

left, right = st.columns(2)
with left:
    st.subheader("Model")
    st.markdown(
        f"- **name:** {lm.name}\n- **device:** `{lm.device}` · **number format:** {str(lm.dtype).removeprefix('torch.')}\n- **layers:** {lm.n_layers} · **d_model:** {lm.d_model}\n"
        f"- **chat template:** {'yes' if lm.has_chat_template else 'no'}"
    )
with right:
    st.subheader("SAE")
    url = sae.neuronpedia_url(0)
    st.markdown(
        f"- **source:** `{sae.source}`\n- **hook:** `{sae.hook_name}` (layer {sae.layer})\n"
        f"- **width:** d_in {sae.d_in} → d_sae {sae.d_sae} · **architecture:** {sae.architecture}\n"
        f"- **Neuronpedia:** {('`' + sae.neuronpedia_id + '`') if sae.neuronpedia_id else 'none (search by contrast or prompt instead)'}"
        + (f" — [open]({url.rsplit('/', 1)[0]})" if url else "")
    )

clamp = clamp_set.clamp_state(lm, sae)
if clamp["rows"]:
    n = sum(len(r["features"]) for r in clamp["rows"])
    st.success(
        f"Clamp set ready ({clamp['origin']}): {n} features in {len(clamp['rows'])} row{'s' if len(clamp['rows']) != 1 else ''}.  \n"
        + "  \n".join(clamp_set.describe(clamp["rows"])) + "  \nNext: check it on the Features page, or go straight to Flips."
    )
else:
    st.info("No clamp set yet: find refusal features on the Features page.")

c1, c2, c3 = st.columns(3)
c1.page_link("app_pages/features.py", label="2 · Features and clamp →")
c2.page_link("app_pages/flips.py", label="3 · Flips and labels →")
c3.page_link("app_pages/runs.py", label="6 · Saved runs →")

rows = state.registry_options(lm.name)
with st.expander(f"sae_lens registry SAEs for this model ({len(rows)})", expanded=False):
    if rows:
        if state.hub_status() is False:
            st.warning("The model hub is unreachable: registry SAEs are listed but cannot be downloaded now.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.caption("The registry has no SAEs for this model.")
