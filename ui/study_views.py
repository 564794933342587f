"""Page pieces for the SAE-quality study: the table with its column meanings, the two plots, the downloads.

The engine builds the table (``engine.study.table``) and the charts (``engine.study.plots``); this module only renders.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import streamlit as st

from engine.errors import LabError
from engine.store.files import read_json
from engine.study import plots
from engine.study.config import COLUMNS
from engine.study.quality_study import FINISHED
from engine.study.table import read_study, table_frame
from ui import render, state

_PERCENT = tuple(c for c in COLUMNS if c.startswith("share_")) + ("recovered",)


def _column_config() -> dict:
    config = {}
    for col, doc in COLUMNS.items():
        if col in _PERCENT:
            config[col] = st.column_config.NumberColumn(col, help=doc, format="percent")
        elif col.startswith("gain_") or col in ("explained_variance", "dead_fraction", "mean_drift"):
            config[col] = st.column_config.NumberColumn(col, help=doc, format="%.3f")
        else:
            config[col] = st.column_config.Column(col, help=doc)
    return config


def show_study(folder: Path) -> bool:
    """The table and plots of one study folder (what ``study sae-quality`` wrote); whether every SAE finished."""
    if not (folder / "study.json").is_file():
        st.info("This study has no finished SAE yet. It fills in as each SAE finishes; a stopped study can be resumed.")
        return False
    try:
        data = read_study(folder)
    except LabError as exc:
        st.error(str(exc))
        return False
    table = table_frame(data.get("rows", []))
    n_done = int(table["status"].isin(FINISHED).sum()) if not table.empty else 0
    st.caption(f"Prompts from the flips run `{data.get('run')}` · {len(table)} SAE(s), {n_done} finished. "
               "Hover a column header for its meaning; each SAE's flips run is on the Runs page under the name in "
               "the *run* column.")
    if n_done < len(table):
        st.warning("This study was stopped before every SAE finished (see *status*); resume it below, or from the "
                   "command line (docs/STUDY.md).")
    if (table["status"] == "no valid flips").any():
        st.info("An SAE with no valid flips has nothing to recover or attribute: its clamp flipped none of the prompts.")
    st.dataframe(table, hide_index=True, width="stretch", column_config=_column_config(), key="study_table")
    st.subheader("SAE quality against the part that restores the answer")
    chart = plots.quality_chart(table)
    if chart is None:
        st.info("No SAE of this study has attribution results yet, so there is nothing to plot.")
    else:
        st.altair_chart(chart, key="study_quality_chart")
        st.caption("Share of valid flips whose answer comes back (not a refusal) when only that part of δ is replayed "
                   "under the clamp, against each quality measure of the SAE.")
    gains = plots.gain_chart(table)
    if gains is not None:
        st.subheader("Mean base-answer log-prob gain of each part")
        st.altair_chart(gains, key="study_gain_chart")
    c1, c2 = st.columns(2)
    c1.download_button("Download study.csv", data=(folder / "study.csv").read_bytes() if (folder / "study.csv").is_file() else b"",
                       file_name=f"{folder.name}.csv", mime="text/csv", key="study_csv")
    if (folder / "study.html").is_file():
        c2.download_button("Download the plots (study.html, works offline)", data=(folder / "study.html").read_bytes(),
                           file_name=f"{folder.name}.html", mime="text/html", key="study_html")
    return n_done == len(table) and not table.empty


# ------------------------------------------------------------------------------------------------ starting a study

JOB_KIND, JOB_SLOT = "study", "study_job"
CANCEL_HELP = "Stops inside the current step after its batch; finished steps are kept and the study can be resumed."


def _start_job(run, specs, cfg, name: str | None, resume: bool) -> None:
    """Check the inputs with the engine's checks, then run the study as a background job (cancellable)."""
    from engine.services import jobs
    from engine.study.quality_study import load_study_saes, resolve_run, resolve_saes, run_study

    lm, _ = state.require_model()
    try:
        run_dir = resolve_run(run)
        if not state.run_model_matches(SimpleNamespace(name=run_dir.name, config=read_json(run_dir / "config.json")), lm):
            st.stop()
        if specs:
            load_study_saes(lm, resolve_saes(specs, lm.name))  # an SAE for another model is refused here, not in the job
        cfg.check()
    except LabError as exc:
        st.error(render.ui_words(str(exc)))
        st.stop()
    exe = state.executor_or_stop()

    def work(job: jobs.Job):
        job.set_progress(0, 1, "starting")
        return run_study(run_dir, specs, cfg, name=name, resume=resume, lm=lm, exe=exe, cancel=job.cancel,
                         on_progress=job.report, on_row=job.log).to_json()

    job = jobs.start_job(JOB_KIND, work, meta={"run": run_dir.name})
    state.remember_job(JOB_SLOT, job)
    st.rerun()


def start_form(busy: bool) -> None:
    """Pick a flips run and the SAEs, a few settings, and start a study (``busy``: a study job is running)."""
    from engine.recovery.config import RecoveryConfig
    from engine.store import catalogue
    from engine.study.config import StudyConfig
    from engine.study.quality_study import available_ladder

    run = state.run_picker("Flips run (its prompts are used for every SAE)", key="study_run")
    if run is None:
        st.info("No flips run yet: make one on the Flips page first.")
        return
    model = str(catalogue.get_run(run).config.get("model", ""))
    ladder = available_ladder(model)
    picked = st.multiselect("SAEs of the width ladder", [s.spec for s in ladder], default=[s.spec for s in ladder],
                            key="study_ladder", help="Every SAE of the ladder built for this run's model.")
    other = st.text_area("Other SAEs (one per line, as on the Pick page: a folder, default:HOOK, RELEASE/SAE_ID)",
                         key="study_other", height=80)
    specs = list(dict.fromkeys(picked + [line.strip() for line in other.splitlines() if line.strip()]))
    c1, c2, c3 = st.columns(3)
    own = c1.radio("Clamp preset", ["the SAE's own preset, else search", "always search"], key="study_preset")
    steps = c2.number_input("Recovery steps", 1, 2000, RecoveryConfig.steps, key="study_steps")
    budget = c3.number_input("Budget B (per position)", 0.0, 1e4, float(RecoveryConfig.budget), key="study_budget")
    limit = c2.number_input("Use the first N prompts (0: all)", 0, 100_000, 0, key="study_limit")
    name = c3.text_input("Study name (empty: generated)", key="study_name").strip() or None
    if not specs:
        st.caption("Pick or name at least one SAE.")
    recovery = {k: v for k, v in RecoveryConfig(steps=int(steps), budget=float(budget)).to_json().items()
                if k not in ("projection", "delta_layer", "method")}
    cfg = StudyConfig(preset="auto" if own.startswith("the SAE") else "search", limit=int(limit) or None, recovery=recovery)
    if st.button("Start the study", type="primary", key="study_start", disabled=busy or not specs):
        _start_job(run, specs, cfg, name, resume=False)


def resume_button(folder: Path, busy: bool) -> None:
    """Continue a stopped study with the settings it was started with."""
    from engine.study.quality_study import saved_study

    saved, cfg = saved_study(folder)
    if st.button("Resume this study", key="study_resume", disabled=busy,
                 help="Finished steps are skipped; the interrupted one continues where it stopped."):
        _start_job(saved["run"], None, cfg, folder.name, resume=True)
