"""Steering playground: one prompt, the clamp set, base and clamped answers streamed side by side; then add it to a
flips run."""

import streamlit as st

from engine.errors import LabError
from engine.method.judge import JudgeConfig
from ui import clamp_set, clamp_views, state
from ui import playground as pg

st.title("Playground: steer one prompt")
st.caption(
    "Type a request, edit the clamp set, and watch the base model and the clamped model answer it side by side, token "
    "by token. When the clamp turns an answer into a refusal, add the prompt to a flips run to recover it later."
)
lm, sidebar_sae = state.require_model()
rows = clamp_set.clamp_state(lm, sidebar_sae)["rows"]
with st.expander(f"Clamp set · {len(rows)} row{'s' if len(rows) != 1 else ''} (shared with the Features page)",
                 expanded=not rows and not state.presenter()):
    clamp_views.clamp_editor(lm, sidebar_sae)
specs, clamp_error = None, None
try:
    specs = clamp_set.specs(lm)
except LabError as exc:
    clamp_error = str(exc)
    st.warning(f"The clamp set cannot be used yet: {clamp_error}")
else:
    st.markdown("**Clamped with:** " + " · ".join(clamp_set.describe(clamp_set.clamp_state(lm, sidebar_sae)["rows"])))

job = pg.current_job()
prompt, gen = pg.settings_form(lm)
running = job is not None and job.running
if st.button("Generate side by side", key="pg_start", type="primary",
             disabled=specs is None or gen is None or not prompt.strip() or running):
    job = pg.start(lm, specs, prompt, gen) or job
    if job is not None and job.running:
        st.rerun()

judge_cfg = JudgeConfig.from_json(st.session_state.get("judge_cfg"))
pg.live(job, judge_cfg)
if job is not None and not job.running and isinstance(job.result, pg.PlaygroundResult):
    pg.add_section(lm, job.result)
