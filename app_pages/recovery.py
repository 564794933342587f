"""Step 4: optimise a per-prompt δ under the clamp (background job), watch loss and drift live, read the results."""

import streamlit as st

from engine.errors import LabError
from engine.method.judge import JudgeConfig
from engine.recovery.config import RecoveryConfig
from engine.recovery.driver import run_recovery
from engine.recovery.sweep import run_sweep
from engine.services import jobs
from engine.store import catalogue
from ui import charts, clamp_set, records, recovery_form, render, state, validate, verdict_views
from ui import recovery_views as rv

st.title("Recovery: is the behaviour really gone?")
st.caption(
    "With the clamp active, optimise a small perturbation δ of the residual stream so the model gives its own "
    "base answer again. The encoder projection keeps the pre-activations of the clamped features at δ's layer fixed "
    "(the jacobian projection also those of later layers), so a recovery cannot come from simply turning the "
    "clamped features back down."
)

if state.presenter():  # replay from files only: no model, no network; opens on the newest run with something to replay
    from ui import replay

    replay.presenter_page()
    st.stop()
info = state.require_run("Run (its valid flips are recovered)", "rec_run", "flips.jsonl",
                         "No flips runs yet: make one on the Flips page first.", "app_pages/flips.py", "3 · Flips and labels →")
name = info.name
lm, sae = state.try_model()  # without the run's model, results stay readable but nothing new can start
can_run = lm is not None and state.run_model_matches(info, lm)
run_judge = JudgeConfig.from_json(info.config.get("judge"))
n_judged = int((info.summary or {}).get("n_valid", 0))

rec_job = state.attach_job("recovery_job", "recovery", run=name)
sweep_job = state.attach_job("sweep_job", "sweep", run=name)
active = next((j for j in (rec_job, sweep_job) if j is not None and j.running), None)

specs = None
if can_run:
    try:
        specs = clamp_set.run_specs(lm, info.config)
    except LabError as exc:
        st.error(f"The clamp set of `{name}` cannot be loaded, so it cannot be recovered here: {exc}")


def start_recovery(cfg: RecoveryConfig, limit: int | None, valid: str, rec_name: str | None, resume: bool, n: int) -> None:
    """A background recovery job (new record, or resuming ``rec_name``); the page polls it."""
    run_dir, total = info.path, n * cfg.steps
    exe = state.executor_or_stop()

    def work(j: jobs.Job):
        j.set_progress(0, total, "resuming" if resume else "loading")  # the engine reports steps and its phase from here on
        return run_recovery(run_dir, cfg, lm=lm, on_event=j.log, cancel=j.cancel, limit=limit, name=rec_name,
                            resume=resume, valid=valid, exe=exe, on_progress=j.report)

    job = jobs.start_job("recovery", work, meta={"run": name, "delta_layer": cfg.delta_layer, "record": rec_name})
    state.remember_job("recovery_job", job)
    st.session_state.pop("rec_name", None)  # the name is taken now; the next recovery gets a fresh box
    st.rerun()


form_cfg, valid, n_valid = None, "judge", n_judged
if n_judged == 0 and not info.path.joinpath("labels.jsonl").is_file():
    st.warning("This run has no valid flips, so there is nothing to recover. Pick another run or make a stronger clamp.")
elif specs is not None:
    with st.expander(f"Recover the valid flips of `{name}` (a new recovery; earlier ones are kept)",
                     expanded=active is None and not info.has_recovery):
        valid, n_valid = records.valid_choice(info, "rec_valid")
        rec_name, name_error = records.record_name(info, "rec_name")
        if n_valid == 0:
            st.warning(f"The valid set '{valid}' is empty for this run: pick another, or label flips on the Flips page.")
        else:
            cfg, limit, delta_layer = recovery_form.settings_form(n_valid, specs, lm.n_layers, name)
            form_cfg = cfg
            if st.button("Start recovery", type="primary", key="start_recovery",
                         disabled=cfg is None or active is not None or name_error is not None):
                start_recovery(cfg, limit, valid, rec_name, False, limit)

ticking = active is not None
if ticking:
    st.subheader(f"Live: {active.kind} of `{name}`")
render.live_job(active, f"cancel_{active.kind}" if active else "cancel", "Stops within one optimisation step; finished prompts are kept.",
                body=lambda j: rv.live_charts(j.events(), delta_layer=j.meta.get("delta_layer")))

if rec_job is not None and rec_job.status == "failed" and not ticking:
    st.error(f"The last recovery failed: {render.ui_words(rec_job.error or '')}")  # (a failed sweep is said under its button)

record = records.pick(info, "recovery", "rec_record") if not (rec_job is not None and rec_job.running) else None
if record is not None:
    st.subheader("Results")
    if record.status != "complete" and active is None and can_run and specs is not None:
        st.info(f"`{record.name}` was stopped before it finished ({records.STATUS_WORDS[record.status]}). Resuming keeps every "
                "finished prompt and continues with the same settings.")
        if st.button(f"Resume `{record.name}`", key="resume_recovery", type="primary"):
            saved = record.config
            start_recovery(RecoveryConfig.from_json(saved), saved.get("limit"), saved.get("valid", "judge"), record.name,
                           True, len(saved.get("flip_ids", [])))
    records.delete_button(info, record, "rec_delete")
    try:
        rows = catalogue.read_records(name, "recovery.jsonl", record.name)
    except LabError as exc:
        st.error(render.ui_words(str(exc)))
        rows = []
    if record.summary:
        cfg_used = record.summary.get("config") or {}
        st.caption(
            f"projection **{cfg_used.get('projection')}** · budget {cfg_used.get('budget')} "
            f"({'per position' if cfg_used.get('budget_kind') == 'per_position' else 'whole matrix'}"
            f"{', relative to the median residual norm' if cfg_used.get('budget_relative') else ', absolute'}) · "
            f"{cfg_used.get('steps')} steps · lr {cfg_used.get('lr')} · δ at layer {cfg_used.get('delta_layer')} · "
            f"valid set: {record.config.get('valid', 'judge')}"
            + (f" · drift penalty λ {cfg_used.get('effective_drift_penalty')} · basis {cfg_used.get('jacobian_basis')} "
               f"({cfg_used.get('n_probes')} probes) · {cfg_used.get('correction_steps')} correction step(s) "
               f"({'Gauss–Newton' if cfg_used.get('correction', 'adam') == 'gauss-newton' else 'Adam'})"
               f" · later drift held over {cfg_used.get('constraint_positions', 'all')} positions"
               + (" · δ ⟂ the later encoder rows" if cfg_used.get("later_encoder_prior") else "")
               if cfg_used.get("projection") == "jacobian" else "")
        )
        rv.summary_metrics(record.summary)
    if rows:
        if not ticking:
            rv.live_charts(rv.history_events(rows))
            if len(rv.layer_rows(record.summary or {})) > 1 and not any(r.get("drift_per_layer_history") for r in rows):
                st.caption("This run was recovered before the per-layer drift of every step was saved: the table above and "
                           "the columns below give each prompt's final drift per layer.")
        rv.results_table(rows)
        ids = [r["id"] for r in rows]
        pick = st.selectbox("Texts of prompt", ids, format_func=lambda i: f"#{i}", key="rec_pick")
        flips = {f["id"]: f for f in catalogue.read_records(name, "flips.jsonl")}
        rv.texts_side_by_side(next(r for r in rows if r["id"] == pick), flips.get(pick, {}), run_judge)
verdict_views.judge_lists(run_judge, "The judge's lists and thresholds of this run (recovered texts are judged with them)")

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

def start_sweep(budgets: list[float], cfg: RecoveryConfig, valid: str, limit: int | None, sweep_name: str | None,
                resume: bool, n: int) -> None:
    run_dir, total = info.path, len(budgets) * n * cfg.steps
    exe = state.executor_or_stop()

    def sweep_work(j: jobs.Job):
        def on_event(ev) -> None:
            j.log(ev)
            j.set_progress(min(j.n_events, total), total)

        j.set_progress(0, total, "resuming" if resume else "sweeping")
        return run_sweep(run_dir, budgets, cfg, lm=lm, on_event=on_event, cancel=j.cancel, limit=limit, name=sweep_name,
                         resume=resume, valid=valid, exe=exe)

    job = jobs.start_job("sweep", sweep_work, meta={"run": name, "delta_layer": cfg.delta_layer})
    state.remember_job("sweep_job", job)
    st.rerun()


if c2.button("Start sweep", key="start_sweep", disabled=active is not None or form_cfg is None or budgets is None):
    start_sweep(budgets, form_cfg, valid, None, None, False, n_valid)
if sweep_job is not None and sweep_job.status == "failed" and not ticking:
    st.error(f"The last sweep failed: {render.ui_words(sweep_job.error or '')}")  # next to the button that started it
sweep_record = records.pick(info, "sweep", "sweep_record") if not (sweep_job is not None and sweep_job.running) else None
if sweep_record is not None:
    if sweep_record.status != "complete" and active is None and can_run and specs is not None:
        if st.button(f"Resume sweep `{sweep_record.name}`", key="resume_sweep"):
            saved = sweep_record.config
            start_sweep(saved.get("budgets", []), RecoveryConfig.from_json(saved), saved.get("valid", "judge"), saved.get("limit"),
                        sweep_record.name, True, len(saved.get("flip_ids", [])))
    if sweep_record.summary:
        st.altair_chart(charts.sweep_chart(rv.sweep_rows(sweep_record.summary)), width="stretch")
    records.delete_button(info, sweep_record, "sweep_delete")
