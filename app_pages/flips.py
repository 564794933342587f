"""Step 3: base vs clamped generations on a prompt set, the valid flips, and hand labels."""

import streamlit as st

from engine.errors import LabError
from engine.method.flips import resume_flips_run, write_flips_run
from engine.method.judge import JudgeConfig
from engine.services import jobs
from engine.store import catalogue, label_csv
from ui import clamp_set, config_loader, flip_features, labelling, render, state, verdict_views, views

st.title("Flips: does the clamp make the model refuse?")
st.caption(
    "A **valid flip** is a prompt the base model answers and the clamped model refuses. The judge's deciding "
    "spans are highlighted (red: refusal, orange: safety cue / blunt no, grey: apology that decides nothing, "
    "yellow badge: degenerate repetition)."
)
lm, sae = state.try_model()  # without a model, saved runs can still be read and labelled
config_loader.render(lm)  # 'Load a configuration': fills the form and the clamp set below
rows = clamp_set.clamp_state(lm, sae)["rows"] if lm is not None else []
clamp_error = None
if lm is not None and rows:
    try:
        clamp_set.specs(lm)
    except LabError as exc:
        clamp_error = str(exc)
    st.markdown(f"**Clamp set** ({clamp_set.clamp_state(lm, sae)['origin']}), all rows applied together:")
    st.markdown("\n".join(f"- {line} — features {', '.join(map(str, r['features'][:12]))}{' …' if len(r['features']) > 12 else ''}"
                          for line, r in zip(clamp_set.describe(rows), rows)))
    if clamp_error:
        st.error(f"The clamp set cannot be used: {clamp_error}")
        st.page_link("app_pages/features.py", label="2 · Features and clamp →")
elif lm is not None:
    st.warning("The clamp set is empty. Add features on the Features page first.")
    st.page_link("app_pages/features.py", label="2 · Features and clamp →")

job = state.attach_job("flips_job", "flips")

if lm is not None and not state.presenter():
    with st.expander("New flips run", expanded=job is None or not job.running):
        prompts, settings = views.prompt_source_form()
        judge_cfg = views.judge_editor()
        disabled = not rows or clamp_error is not None or not prompts or settings is None or (job is not None and job.running)
        if st.button("Run base vs clamped", type="primary", disabled=disabled, key="start_flips"):
            with state.shown_errors("cannot start"):
                specs = clamp_set.specs(lm)
                exe = state.executor_or_stop()
                gen = views.generation_config(settings)
                run_dir = catalogue.new_run_dir("flips")
                model_name, _ = state.model_choice()
                extra = {"model": model_name, "prompts": settings["source"], "limit": settings["limit"], "n_prompts": len(prompts),
                         "source": "dashboard"}

                def work(j: jobs.Job, prompts=prompts, specs=specs, gen=gen, judge_cfg=judge_cfg, run_dir=run_dir, extra=extra, exe=exe):
                    j.set_progress(0, 2 * len(prompts), "loading")  # the engine reports answers generated from here on
                    return write_flips_run(lm, specs, prompts, gen, judge_cfg, run_dir, extra, j.cancel, j.log, exe=exe,
                                           on_progress=j.report)

                job = jobs.start_job("flips", work, meta={"run": run_dir.name})
                state.remember_job("flips_job", job)
                state.set_current_run(run_dir.name)
                st.rerun()


ticking = job is not None and job.running
if job is not None:
    st.subheader(f"Run `{job.meta.get('run')}`")
render.live_job(job, "cancel_flips", "Stops after the current batch; finished prompts are kept.",
                body=lambda j: views.flip_cards(views.streamed_records(j.events(), j.partial), limit=50, newest_first=True,
                                                judge_cfg=views.run_judge(j.meta.get("run"))) if j.running else None)

if not ticking:
    name = state.run_picker("Run", key="flips_run", need="flips.jsonl")
    if name is None:
        st.info("No runs yet: start one above.")
        st.stop()
    try:
        records = catalogue.read_records(name, "flips.jsonl")
        info = catalogue.get_run(name)
    except LabError as exc:
        st.error(render.ui_words(str(exc)))
        st.stop()
    if info.config.get("clamps"):
        st.caption(f"Clamps of this run: {clamp_set.run_clamps_text(info.config)}")
    n_planned = info.config.get("n_prompts")
    if lm is not None and not state.presenter() and isinstance(n_planned, int) and len(records) < n_planned:
        st.info(f"This run stopped after {len(records)} of its {n_planned} prompts (cancelled, or the server stopped). "
                "Resuming keeps the finished prompts and runs the rest with the same settings.")
        if st.button(f"Resume `{name}`", key="resume_flips", type="primary") and state.run_model_matches(info, lm):
            exe = state.executor_or_stop()

            def resume_work(j: jobs.Job, run_dir=info.path, total=n_planned, done=len(records), exe=exe):
                j.set_progress(2 * done, 2 * total, "resuming")  # the engine reports answers generated from here on
                return resume_flips_run(run_dir, lm, j.cancel, j.log, exe=exe, on_progress=j.report)

            job = jobs.start_job("flips", resume_work, meta={"run": name})
            state.remember_job("flips_job", job)
            st.rerun()
    run_judge = JudgeConfig.from_json(info.config.get("judge"))
    views.flip_summary(info.summary, records)
    if records:
        tab_label, tab_all = st.tabs(["Hand labels", "All prompts"])
        with tab_label:
            labelling.labelling_section(name, records)
            st.download_button(
                "Export audit CSV (judge columns + manual_audit_label, labeller)",
                data=lambda: label_csv.export_csv(catalogue.run_path(name), catalogue.read_records(name, "flips.jsonl")),
                file_name=f"{name}-labels.csv", mime="text/csv", key="export_labels",
            )
        with tab_all:
            only_valid = st.toggle("Valid flips only", value=False, key="only_valid")
            shown = [r for r in records if r.get("valid")] if only_valid else records
            views.flip_cards(shown, limit=100, judge_cfg=run_judge)
            flip_features.flip_feature_section(info.config, shown)
    else:
        st.info("This run has no records yet.")
    verdict_views.judge_lists(run_judge, "The judge's lists and thresholds used for this run")
else:
    st.caption("Results appear above as they stream in: each batch's base answers as soon as they are generated, then its "
               "clamped answers and verdicts; the full view (with labelling) opens when the run ends.")
    verdict_views.judge_lists(views.run_judge(job.meta.get("run")), "The judge's lists and thresholds used for this run")
