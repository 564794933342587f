"""Charts of a saved run, with PNG/SVG downloads (vl-convert, offline) for slides."""

from __future__ import annotations

import time

import streamlit as st

from engine.errors import LabError
from engine.store import catalogue
from ui import charts
from ui import recovery_views as rv


def run_row(info) -> dict:
    """One line of the runs table, read from the run's config and summaries (short values: see :data:`RUN_COLUMNS`)."""
    s, r = info.summary or {}, info.recovery_summary or {}
    clamps = info.config.get("clamps") or []
    nr = (r.get("ci") or {}).get("non_refusal")
    sae = str(info.config.get("sae") or "")
    return {
        "run": info.name, "created": time.strftime("%m-%d %H:%M", time.localtime(info.created)),
        "model": info.config.get("model_id") or info.config.get("model"), "sae": sae.removeprefix("default:"),
        "clamp": f"{sum(len(c.get('features', [])) for c in clamps)} · {', '.join(sorted({str(c.get('mode')) for c in clamps}))}"
        if clamps else None,
        "prompts": s.get("n_prompts"), "valid flips": s.get("n_valid"),
        "non-refusal recovery": f"{nr['k']}/{nr['n']}" if nr else None, "mean drift": r.get("mean_drift"),
        "recoveries": len(info.recoveries), "attribution": bool(info.attribution_summary), "sweeps": len(info.sweeps),
    }


RUN_COLUMNS = {
    "run": st.column_config.TextColumn("run", width="medium", pinned=True),
    "created": st.column_config.TextColumn("created", width=88),
    "model": st.column_config.TextColumn("model", width="small"),
    "sae": st.column_config.TextColumn("SAE", width="small", help="The run's first SAE (hook); `default:` shipped SAEs without the prefix"),
    "clamp": st.column_config.TextColumn("clamp", width=70, help="Clamped features · modes, over every clamped layer"),
    "prompts": st.column_config.NumberColumn("prompts", width=62),
    "valid flips": st.column_config.NumberColumn("valid", width=50, help="Valid flips (the judge's)"),
    "non-refusal recovery": st.column_config.TextColumn("recovered", width=76, help="Non-refusal recovery of the newest recovery (k/n)"),
    "mean drift": st.column_config.NumberColumn("drift", width=70, format="%.1e", help="Mean drift of the clamped features, newest recovery"),
    "recoveries": st.column_config.NumberColumn("recov.", width=56, help="Recovery records of the run"),
    "attribution": st.column_config.CheckboxColumn("attr.", width=44, help="Whether a recovery has an attribution"),
    "sweeps": st.column_config.NumberColumn("sweeps", width=56),
}
"""The runs table's columns: short headers (the full words in the tooltips) and widths that fit the page."""


def readable_table(data: dict, key: str) -> None:
    """A config or summary as a two-column table of readable values (``engine.store.compare.readable``), not JSON."""
    import pandas as pd

    from engine.store.compare import readable

    rows = [{"setting": k.replace("_", " "), "value": readable(v)} for k, v in (data or {}).items()]
    st.dataframe(pd.DataFrame(rows, columns=["setting", "value"]), hide_index=True, width="stretch", key=key,
                 column_config={"setting": st.column_config.TextColumn("setting", width="medium"),
                                "value": st.column_config.TextColumn("value", width="large")})


def run_charts(info, record=None) -> list[tuple[str, object]]:
    """``(slug, chart)`` for every chart a run's files support (recovery and attribution: of ``record``, else the newest)."""
    out: list[tuple[str, object]] = []
    record = record or info.record()
    try:
        if record is not None and (record.path / "recovery.jsonl").is_file():
            records = catalogue.read_records(info.name, "recovery.jsonl", record.name)
            df = charts.step_frame(rv.history_events(records))
            out.append((f"{record.name}-loss", charts.metric_chart(df, "loss", f"Loss per step · {info.name} · {record.name}")))
            out.append((f"{record.name}-drift", charts.metric_chart(df, "drift", f"Defended-feature drift per step · {info.name} · {record.name}")))
        for sweep in info.sweeps:
            if sweep.summary:
                out.append((sweep.name, charts.sweep_chart(rv.sweep_rows(sweep.summary))))
        if record is not None and record.has_attribution:
            from ui import attribution_views as av

            records = catalogue.read_records(info.name, "attribution.jsonl", record.name)
            out.append((f"{record.name}-attribution", charts.attribution_aggregate_chart(av.aggregate_rows(records))))
    except LabError as exc:
        st.error(str(exc))
    return out


def chart_downloads(info, record=None) -> None:
    found = run_charts(info, record)
    if not found:
        st.caption("This run has no recovery, sweep or attribution results to chart yet.")
        return
    for slug, chart in found:
        st.altair_chart(chart, width="stretch", height=charts.chart_height(chart))
        c1, c2, _ = st.columns([1, 1, 4])
        c1.download_button("PNG", data=lambda chart=chart: charts.to_png(chart), file_name=f"{info.name}-{slug}.png",
                           mime="image/png", key=f"png:{slug}")
        c2.download_button("SVG", data=lambda chart=chart: charts.to_svg(chart), file_name=f"{info.name}-{slug}.svg",
                           mime="image/svg+xml", key=f"svg:{slug}")


# ------------------------------------------------------------------------------------------------ delete and trash

FLASH_KEY = "runs_flash"


def flash(message: str) -> None:
    """A success line shown once, at the top of the Runs page, after the rerun that follows an action."""
    st.session_state[FLASH_KEY] = message


def show_flash() -> None:
    message = st.session_state.pop(FLASH_KEY, None)
    if message:
        st.success(message)


def _disarm(*keys: str) -> None:
    """Untick a confirmation (and clear a picker): run as a picker's on_change, and after every action, so a
    confirmation given for one run never carries over to the next."""
    for key in keys:
        st.session_state.pop(key, None)


def delete_section(names: list[str]) -> None:
    """Pick a run, confirm, move it to the trash. Nothing is picked at first, and the confirmation is unticked again
    after each delete and whenever the picked run changes."""
    from ui import state

    name = st.selectbox("Run to delete", names, index=None, placeholder="Choose a run", key="delete_run",
                        on_change=_disarm, args=("delete_sure",))
    sure = st.checkbox(f"Yes, move `{name}` to the trash" if name else "Yes, move this run to the trash", key="delete_sure",
                       disabled=name is None, help="A trashed run can be restored from Trash below until it is purged.")
    if st.button("Delete run", disabled=not (name and sure), key="delete_go"):
        try:
            entry = catalogue.delete_run(name)
        except LabError as exc:
            st.error(str(exc))
            return
        if state.current_run() == name:
            state.set_current_run(None)
        _disarm("delete_sure", "delete_run")
        flash(f"Deleted run `{name}`: it was moved to the trash (`{entry.path}`). Restore it under **Trash** at the "
              "bottom of this page; nothing is removed for good until you purge it there.")
        st.rerun()


def trash_section() -> None:
    """Trashed runs and records, newest first, each with Restore; purging (for good) has its own confirmation."""
    from engine.store import trash

    st.subheader("Trash")
    entries = trash.list_trash()
    if not entries:
        st.caption("The trash is empty. Deleted runs (and recovery records) land here and can be restored until purged.")
        return
    st.caption(f"Deleted runs and records, kept in `{trash.trash_root().resolve()}` until purged. **Restore** puts one back "
               "where it was (refused, with the entry kept, when that place is taken).")
    for e in entries:
        c1, c2 = st.columns([6, 1], vertical_alignment="center")
        c1.markdown(f"**{e.what}** `{e.name}` · was `{e.original}` · deleted "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.trashed_at))}")
        if c2.button("Restore", key=f"trash_restore:{e.id}"):
            try:
                path = trash.restore(e.id)
            except LabError as exc:
                st.error(f"Not restored: {exc}")
            else:
                flash(f"Restored {e.what} `{e.name}` to `{path}`.")
                st.rerun()
    with st.expander("Delete from the trash for good"):
        labels = {e.id: f"{e.what} {e.name} (deleted {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.trashed_at))})"
                  for e in entries}
        pick = st.selectbox("Trash entry", list(labels), index=None, format_func=labels.get, placeholder="Choose an entry",
                            key="purge_pick", on_change=_disarm, args=("purge_sure",))
        sure = st.checkbox("Yes, delete it for good: this cannot be undone", key="purge_sure", disabled=pick is None)
        if st.button("Delete for good", key="purge_go", disabled=not (pick and sure)):
            try:
                trash.purge(pick)
            except LabError as exc:
                st.error(str(exc))
                return
            _disarm("purge_sure", "purge_pick")
            flash(f"Deleted {labels[pick]} for good.")
            st.rerun()
