"""Features page, "By refusal direction" tab: the paper's feature selection in one click.

A difference-of-means refusal direction at one layer, every chosen SAE's features ranked by decoder cosine with it
(optionally re-ranked by attribution to the refusal log-prob), and the top K turned into a multi-layer clamp set —
the same engine calls as ``python -m engine features direction`` (``engine.features.direction`` /
``engine.features.selection``), run as a background job.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import clamp_set, feature_views, state, validate

RESULT = "direction_result"


def direction_tab(lm, sidebar_sae, sae) -> None:
    from engine.features.direction import DirectionConfig
    from engine.features.selection import DEFAULT_VALUES, SelectionConfig
    from engine.method.prompts import load_prompts

    st.markdown(
        "The paper's selection: a **refusal direction** (difference of means at one layer) and, for each SAE, the "
        "features whose decoder rows point along it. The top K become a clamp set over every SAE picked — one click to a "
        "multi-layer set."
    )
    n_builtin = len(load_prompts("builtin:harmless"))
    form = validate.Form()
    c1, c2, c3, c4 = st.columns(4)
    layer = form.number(c1, "Direction layer", "dir_layer", sae.layer, says="Direction layer",
                        check=validate.between(0, lm.n_layers - 1, "Direction layer", f"the model has {lm.n_layers} layers"))
    source = c2.selectbox("Direction from", validate.field_choices(DirectionConfig, "source"), key="dir_source",
                          format_func={"answers": "refusal vs own answers (tokens)",
                                       "prompts": "harmful vs harmless prompts (last token)"}.get)
    rerank = c3.selectbox("Re-rank", validate.field_choices(DirectionConfig, "rerank"), key="dir_rerank",
                          format_func={"none": "decoder cosine only", "grad-x-act": "by attribution (grad × act)"}.get)
    n_prompts = form.number(c4, "Prompts (built-in)", "dir_prompts", 12, says="Prompts",
                            check=validate.between(2, n_builtin, "Prompts", f"the built-in harmless set has {n_builtin}"))
    c1, c2, c3, c4 = st.columns(4)
    top_k = form.number(c1, "Top K", "dir_k", 10, says="Top K", check=validate.at_least_one("Top K"))
    per = c2.selectbox("K per", validate.field_choices(SelectionConfig, "per"), key="dir_per",
                       format_func={"sae": "SAE (K from each)", "overall": "all SAEs together (the paper: 20 pairs)"}.get)
    mode = c3.selectbox("Clamp mode", validate.field_choices(SelectionConfig, "mode"), key="dir_mode",
                        format_func={"set": "set: α × refusal mean", "multiply": "multiply: × m (the paper: 3)"}.get)
    value = form.number(c4, "α (set) or m (multiply)", f"dir_value:{mode}", DEFAULT_VALUES[mode], kind=float, says="Value",
                        check=validate.clamp_value_check)
    options = clamp_set.sae_options(lm, sidebar_sae)
    default = [o for o in options if o.startswith("default:")] or [clamp_set.row_spec(sae)]
    picked = st.multiselect("SAEs to rank", options, default=default, key="dir_saes", format_func=clamp_set.sae_label,
                            help="Each picked SAE's features are ranked against the one direction; the clamp set has a row per SAE.")
    if not picked:
        st.error("Pick at least one SAE to rank")
    job = state.attach_job("direction_job", "direction", model=lm.name)
    busy = job is not None and job.running
    if st.button("Find features by direction", type="primary", key="dir_go", disabled=busy or not form.ok or not picked):
        try:
            cfg = DirectionConfig(layer=int(layer), source=source, rerank=rerank)
            select = SelectionConfig(top_k=int(top_k), per=per, mode=mode, value=float(value))
            saes = {spec: state.load_sae_spec(spec) for spec in picked}
        except LabError as exc:
            st.error(validate.page_message(exc, "Direction search"))
        else:
            from engine.services import jobs

            job = jobs.start_job("direction", _work(lm, saes, cfg, select, int(n_prompts)), meta={"model": lm.name, "layer": int(layer)})
            state.remember_job("direction_job", job)
            st.session_state.pop(RESULT, None)  # the table shown is always this search's
            st.rerun()
    feature_views.job_result_fragment(job, RESULT)
    _show_result(lm, sidebar_sae)


def _work(lm, saes: dict, cfg, select, n_prompts: int):
    """The job: own answers and forced refusals, the ranking, the selection; returns plain data for the page."""

    def work(j):
        from engine.features.selection import search_direction_clamp
        from engine.method.prompts import load_prompts

        harmless = load_prompts("builtin:harmless", n_prompts)
        harmful = load_prompts("builtin:harmful", n_prompts) if cfg.source == "prompts" else []
        j.set_progress(0, 1, "the model answers the prompts, then the features are ranked")
        found = search_direction_clamp(lm, list(saes.values()), harmless, harmful, cfg, select)
        spec_of = {id(sae): spec for spec, sae in saes.items()}
        j.set_progress(1, 1, "")
        return {
            "rows": [{"sae": spec_of[id(s.sae)], "features": s.features, "mode": s.mode, "values": s.values}
                     for s in found.selection.specs],
            "chosen": [{"layer": int(hook.split(".")[1]), "feature": r.feature, "cosine": r.cosine, "attribution": r.attribution,
                        "refusal mean": r.refusal_mean, "answer mean": r.answer_mean, "prompt mean": r.prompt_mean}
                       for hook, r in found.selection.chosen],
            "warnings": found.warnings,
            "what": f"direction at layer {cfg.layer} ({cfg.source}), top {select.top_k} per {select.per}, {select.mode}",
            "model": lm.name,
        }

    return work


def _show_result(lm, sidebar_sae) -> None:
    result = st.session_state.get(RESULT)
    if not result or result.get("model") not in (None, lm.name):  # another model's features mean nothing here
        return
    st.caption(f"Chosen features: {result['what']}.")
    for w in result["warnings"]:
        st.warning(validate.without_flags(w))
    table = pd.DataFrame(result["chosen"])
    if "attribution" in table and table["attribution"].isna().all():  # no re-ranking: the column would be all None
        table = table.drop(columns="attribution")
    st.dataframe(table, hide_index=True)
    c1, c2, _ = st.columns([1, 1, 3])
    replace, add = c1.button("Use as the clamp set", key="dir_use"), c2.button("Add to the clamp set", key="dir_add")
    if replace or add:
        try:
            clamp_set.apply_rows(lm, sidebar_sae, result["rows"], "direction search", add)
        except LabError as exc:
            st.error(f"Not applied: {exc}")
            return
        st.rerun()
