"""Step 4: optimise a per-prompt δ under the clamp (background job), watch loss and drift live, read the results."""

import streamlit as st

from engine.errors import LabError
from engine.recovery.driver import run_recovery
from engine.recovery.sweep import run_sweep
from engine.services import jobs
from engine.store import catalogue
from ui import charts, clamp_set, recovery_form, render, state, validate
from ui import recovery_views as rv

st.title("Recovery: is the behaviour really gone?")
st.caption(
    "With the clamp active, optimise a small perturbation δ of the residual stream so the model gives its own "
    "base answer again. The encoder projection keeps the pre-activations of the clamped features at δ's layer fixed "
    "(the jacobian projection also those of later layers), so a recovery cannot come from simply turning the "
    "clamped features back down."
)

info = state.require_run("Run (its valid flips are recovered)", "rec_run", "flips.jsonl",
                         "No flips runs yet: make one on the Flips page first.", "app_pages/flips.py", "3 · Flips and labels →")
name = info.name
if state.presenter():  # replay from files only: no model, no network
    from ui import replay

    replay.replay_section(name, info)
    st.stop()
lm, sae = state.try_model()  # without the run's model, results stay readable but nothing new can start
can_run = lm is not None and state.run_model_matches(info, lm)
n_valid = int((info.summary or {}).get("n_valid", 0))

rec_job = state.attach_job("recovery_job", "recovery", run=name)
sweep_job = state.attach_job("sweep_job", "sweep", run=name)
active = next((j for j in (rec_job, sweep_job) if j is not None and j.running), None)

specs = None
if can_run and n_valid:
    try:
        specs = clamp_set.run_specs(lm, info.config)
    except LabError as exc:
        st.error(f"The clamp set of `{name}` cannot be loaded, so it cannot be recovered here: {exc}")

form_cfg = None
if n_valid == 0:
    st.warning("This run has no valid flips, so there is nothing to recover. Pick another run or make a stronger clamp.")
elif specs is not None:
    with st.expander(f"Recover the {n_valid} valid flips of `{name}`", expanded=active is None and not info.has_recovery):
        cfg, limit, delta_layer = recovery_form.settings_form(n_valid, specs, lm.n_layers, name)
        form_cfg = cfg
        if st.button("Start recovery", type="primary", key="start_recovery", disabled=cfg is None or active is not None):
            run_dir = info.path
            total = limit * cfg.steps

            def work(j: jobs.Job, cfg=cfg, limit=limit, run_dir=run_dir, total=total):
                def on_event(ev) -> None:
                    j.log(ev)
                    j.set_progress(min(j.n_events, total), total, f"· prompt #{ev.prompt_id}, step {ev.step}")

                j.set_progress(0, total, "preparing")
                return run_recovery(run_dir, cfg, lm=lm, on_event=on_event, cancel=j.cancel, limit=limit)

            job = jobs.start_job("recovery", work, meta={"run": name, "delta_layer": delta_layer})
            state.remember_job("recovery_job", job)
            st.rerun()

ticking = active is not None
if ticking:
    st.subheader(f"Live: {active.kind} of `{name}`")
render.live_job(active, f"cancel_{active.kind}" if active else "cancel", "Stops within one optimisation step; finished prompts are kept.",
                body=lambda j: rv.live_charts(j.events(), delta_layer=j.meta.get("delta_layer")))

for job in (rec_job, sweep_job):
    if job is not None and job.status == "failed" and not ticking:
        st.error(f"The last {job.kind} failed: {job.error}")

if info.has_recovery and not (rec_job is not None and rec_job.running):
    st.subheader("Results")
    try:
        records = catalogue.read_records(name, "recovery.jsonl")
    except LabError as exc:
        st.error(str(exc))
        records = []
    if info.recovery_summary:
        cfg_used = info.recovery_summary.get("config") or {}
        st.caption(
            f"projection **{cfg_used.get('projection')}** · budget {cfg_used.get('budget')} "
            f"({'per position' if cfg_used.get('budget_kind') == 'per_position' else 'whole matrix'}"
            f"{', relative to the median residual norm' if cfg_used.get('budget_relative') else ', absolute'}) · "
            f"{cfg_used.get('steps')} steps · lr {cfg_used.get('lr')} · δ at layer {cfg_used.get('delta_layer')}"
            + (f" · drift penalty λ {cfg_used.get('effective_drift_penalty')} · basis {cfg_used.get('jacobian_basis')} "
               f"({cfg_used.get('n_probes')} probes) · {cfg_used.get('correction_steps')} correction step(s)"
               f" · later drift held over {cfg_used.get('constraint_positions', 'all')} positions"
               + (" · δ ⟂ the later encoder rows" if cfg_used.get("later_encoder_prior") else "")
               if cfg_used.get("projection") == "jacobian" else "")
        )
        rv.summary_metrics(info.recovery_summary)
    if records:
        if not ticking:
            rv.live_charts(rv.history_events(records))
            if len(rv.layer_rows(info.recovery_summary or {})) > 1 and not any(r.get("drift_per_layer_history") for r in records):
                st.caption("This run was recovered before the per-layer drift of every step was saved: the table above and "
                           "the columns below give each prompt's final drift per layer.")
        rv.results_table(records)
        ids = [r["id"] for r in records]
        pick = st.selectbox("Texts of prompt", ids, format_func=lambda i: f"#{i}", key="rec_pick")
        flips = {f["id"]: f for f in catalogue.read_records(name, "flips.jsonl")}
        rv.texts_side_by_side(next(r for r in records if r["id"] == pick), flips.get(pick, {}))

st.subheader("Budget sweep")
st.caption(
    "Recovery rates at several budgets (0 = the defended model with no δ), with Wilson 95 % intervals. "
    "Every other setting is taken from the recovery settings above."
)
c1, c2 = st.columns([3, 1])
relative = bool(form_cfg.budget_relative) if form_cfg is not None else False
budgets_text = c1.text_input(
    "Budgets" + (" (fractions of the median residual norm)" if relative else " (absolute norms)"),
    "0, 0.05, 0.1, 0.25, 0.5" if relative else "0, 2, 5, 10, 20, 40", key="sweep_budgets_rel" if relative else "sweep_budgets",
    persist_state="session",
)
budgets = validate.budgets(c1, budgets_text, validate.Form(), "sweep_budgets")  # the engine's check_budgets; None: refused
c2.write("")
if c2.button("Start sweep", key="start_sweep", disabled=active is not None or form_cfg is None or budgets is None):
    run_dir, total = info.path, len(budgets) * n_valid * form_cfg.steps

    def sweep_work(j: jobs.Job, budgets=budgets, cfg=form_cfg, run_dir=run_dir, total=total):
        def on_event(ev) -> None:
            j.log(ev)
            j.set_progress(min(j.n_events, total), total)

        j.set_progress(0, total, "sweeping")
        return run_sweep(run_dir, budgets, cfg, lm=lm, on_event=on_event, cancel=j.cancel)

    job = jobs.start_job("sweep", sweep_work, meta={"run": name, "delta_layer": form_cfg.delta_layer})
    state.remember_job("sweep_job", job)
    st.rerun()
if info.sweeps:
    try:
        sweep = catalogue.read_sweep(name, info.sweeps[0])
        st.altair_chart(charts.sweep_chart(rv.sweep_rows(sweep)), width="stretch")
    except LabError as exc:
        st.error(str(exc))
