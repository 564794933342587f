"""Step 5: split each recovered δ into parts (clamped / non-clamped / top-k / SAE residual), replay each alone."""

import streamlit as st

from engine.attribution.components import COMPONENTS
from engine.attribution.driver import PAPER, run_attribution
from engine.errors import LabError
from engine.services import jobs
from engine.store import catalogue
from ui import attribution_views as av
from ui import charts, feature_link, records, render, state, validate

st.title("Attribution: which part of δ carries the recovery?")
st.caption(
    "δ is split through the SAE into the part on the clamped features, on the other features, on the top-k most "
    "changed features, and the SAE's reconstruction residual. Each part is replayed **alone** under the clamp. "
    "Decoder directions are not orthogonal, so the parts' norms are not shares: the replay is the evidence."
)

info = state.require_run("Run (with recovery results)", "attr_run", "recovery.jsonl",
                         "No run has recovery results yet: run Recovery first.", "app_pages/recovery.py", "4 · Recovery →")
name = info.name
record = records.pick(info, "recovery", "attr_record")  # each recovery of the run has its own attribution
assert record is not None  # require_run asked for a run with a recovery

job = state.attach_job("attribution_job", "attribution", run=name, recovery=record.name)
ticking = job is not None and job.running
if not state.presenter() and (not record.has_attribution or record.attribution_summary is None or
                              record.attribution_summary.get("cancelled")):
    resume = record.has_attribution and not ticking
    if resume:
        st.info(f"The attribution of `{record.name}` was stopped before it finished; resuming keeps the finished "
                "examples (use the same k).")
    c1, c2 = st.columns([1, 3])
    layer = record.config.get("delta_layer")
    d_sae = validate.attribution_d_sae(info.config, layer)
    sae_spec, sae_ok = None, True
    if layer is not None and not validate.delta_layer_clamped(info.config, layer):
        # the paper splits δ through the SAE at δ's layer; when no clamp reads it, the user names one
        st.info(f"δ sits at layer {layer}, where none of the run's clamped SAEs reads: attribution splits δ through an SAE "
                "at that layer, so name one (a local sae_lens folder or a registry id).")
        earlier = (record.attribution_summary or {}).get("sae") or "" if resume else ""  # a resume must use the same SAE
        typed = st.text_input("SAE at δ's layer", value=earlier, key=f"attr_sae:{record.name}",
                              placeholder=f"an SAE reading blocks.{layer}.hook_resid_post")
        try:
            d_sae, sae_spec = int(validate.delta_layer_sae(typed, layer).d_sae), typed.strip()
        except LabError as exc:
            st.error(str(exc))
            sae_ok = False
    top_k = validate.Form().number(c1, "k (top changed features)", "attr_k", 10, check=validate.top_k_check(d_sae), says="k",
                                   help="How many of the most changed non-clamped features form the top-k part"
                                        + (f" (0 to d_sae = {d_sae})." if d_sae else " (0 or more)."))
    c2.write("")
    if c2.button("Resume attribution" if resume else "Run attribution", type="primary", key="start_attribution",
                 disabled=ticking or top_k is None or not sae_ok):
        lm, sae = state.require_model()
        if not state.run_model_matches(info, lm):
            st.stop()
        run_dir, total = info.path, len(catalogue.read_records(name, "recovery.jsonl", record.name))
        exe = state.executor_or_stop()

        def work(j: jobs.Job, run_dir=run_dir, k=int(top_k), total=total, rec_name=record.name, resume=resume, exe=exe,
                 sae_spec=sae_spec):
            j.set_progress(0, total * len(COMPONENTS), "loading")  # the engine reports each component replayed from here on
            return run_attribution(run_dir, k, lm=lm, cancel=j.cancel, on_record=j.log, recovery=rec_name, resume=resume,
                                   exe=exe, on_progress=j.report, sae_spec=sae_spec)

        job = jobs.start_job("attribution", work, meta={"run": name, "recovery": record.name})
        state.remember_job("attribution_job", job)
        st.rerun()

render.live_job(job, "cancel_attribution", "Stops after the current batch; finished examples are kept.")

if record.has_attribution and not ticking:
    try:
        rows = catalogue.read_records(name, "attribution.jsonl", record.name)
    except LabError as exc:
        st.error(str(exc))
        st.stop()
    agg = av.aggregate_rows(rows)
    st.subheader(f"All {len(rows)} attributed examples of `{record.name}`")
    used = record.attribution_summary or {}
    st.caption(f"top-k part: k = {used.get('top_k', '?')} most changed non-clamped features per example · decomposed "
               f"through {used.get('sae') or 'the clamped SAE at δ layer'} · valid set: {record.config.get('valid', 'judge')} "
               "· one attribution per recovery (start another recovery to attribute with another k)")
    left, right = st.columns([3, 2])
    agg_chart, heat_chart = charts.attribution_aggregate_chart(agg), charts.attribution_heatmap(av.heatmap_rows(rows))
    left.altair_chart(agg_chart, width="stretch", height=charts.chart_height(agg_chart))
    right.altair_chart(heat_chart, width="stretch", height=charts.chart_height(heat_chart))
    st.caption(f"Paper (gemma-2-2b-it + Gemma Scope, AdvBench, n = {PAPER['n']}): "
               + " · ".join(f"{charts.COMPONENT_LABELS[c]} {PAPER[c]}" for c in COMPONENTS if c in PAPER))
    st.subheader("One example")
    ids = [r.get("id") for r in rows]
    pick = st.selectbox("Prompt", ids, format_func=lambda i: f"#{i}", key="attr_pick")
    rec = next(r for r in rows if r.get("id") == pick)
    if rec.get("prompt"):
        st.markdown(f"**#{pick}** {rec['prompt']}")
    ex_chart = charts.attribution_example_chart(av.example_rows(rec), f"Prompt #{pick}: each part replayed alone")
    st.altair_chart(ex_chart, width="stretch", height=charts.chart_height(ex_chart))
    with st.expander("What each part generates when replayed alone"):
        av.component_texts(rec)
    st.subheader("Top-k changed features")
    sae = None
    try:
        sae = state.get_sae()
    except LabError:
        pass
    top = av.topk_rows(rows, sae)
    card_spec = av.topk_sae_spec(info.config, record.config, used, sae)
    if top:
        top_chart = av.topk_chart(top[:30])
        picked = st.altair_chart(top_chart, width="stretch", height=charts.chart_height(top_chart), key="topk_chart",
                                 on_select="rerun" if card_spec else "ignore")
        if card_spec:
            st.caption("Click a bar, a table row or use the picker to open that feature's card.")
            feature_link.chart_selection(picked, card_spec, "topk_chart")
    av.topk_table(top, card_spec)
elif not ticking:
    st.info(f"No attribution of `{record.name}` yet." + ("" if state.presenter() else " Run it above."))

from engine.method.judge import JudgeConfig  # noqa: E402  (issue 15: the judge's lists on every page that judges)
from ui import verdict_views  # noqa: E402

verdict_views.judge_lists(JudgeConfig.from_json(info.config.get("judge")),
                          "The judge's lists and thresholds of this run (each part's replay is judged with them)")
