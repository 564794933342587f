"""Page pieces for the Features page: search tabs and feature cards (the clamp editor and presets: ``ui.clamp_views``)."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import clamp_set, state, validate

logger = logging.getLogger(__name__)
_PERSIST = {"persist_state": "session"}


def _candidates_table(rows: list[dict], key: str, lm, sae, origin: str, value_col: str | None) -> None:
    """A table of candidate features with 'add the top N' to the clamp set (to the row of ``sae``)."""
    if not rows:
        return
    from ui import feature_link

    df = pd.DataFrame(rows)
    spec = clamp_set.row_spec(sae)
    event = st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)), key=f"{key}_table",
                         on_select="rerun", selection_mode="single-row")
    feature_link.table_selection(rows, event, spec, f"{key}_table")
    feature_link.picker([int(r["feature"]) for r in rows], spec, f"{key}_card")
    c1, c2, c3 = st.columns([1, 1, 2])
    form = validate.Form()
    n = form.number(c1, "How many (from the top)", f"{key}_n", min(5, len(rows)), persist=False,
                    check=validate.between(1, len(rows), "How many", f"{len(rows)} rows are listed"))
    scale = 2.0
    if value_col is not None:
        scale = form.number(c2, "Value × activation", f"{key}_scale", 2.0, kind=float, check=validate.clamp_value_check, persist=False,
                            help="set-mode value = this × the feature's activation in the search (e.g. 2× its mean on refusals)")
    c3.write("")
    if c3.button(f"Add the top {n if n is not None else 'N'} to the clamp set", key=f"{key}_add", disabled=not form.ok,
                 help=f"Added to the row of {clamp_set.row_spec(sae)}"):
        top = rows[:n]
        values = [scale * float(r[value_col]) for r in top] if value_col else None
        try:
            clamp_set.add_features(lm, sae, [int(r["feature"]) for r in top], values, origin)
            st.success(f"Added {n} features.")
        except LabError as exc:
            st.error(str(exc))


# ------------------------------------------------------------------------------------------------ search tabs


def contrast_tab(lm, sae) -> None:
    st.markdown(
        "Rank features by their mean activation on **refusal answers** minus on **ordinary answers** "
        "(answer tokens only). The model answers the prompts itself; the refusals are forced, in many phrasings."
    )
    from engine.features import search
    from engine.method.prompts import load_prompts
    from engine.services import jobs

    n_builtin = len(load_prompts("builtin:harmless"))
    form = validate.Form()
    c1, c2, c3 = st.columns(3)
    n_prompts = form.number(c1, "Prompts (built-in harmless)", "contrast_prompts", 12, says="Prompts",
                            check=validate.between(2, n_builtin, "Prompts", f"the built-in harmless set has {n_builtin}"))
    max_new = form.number(c2, "Answer tokens", "contrast_tokens", 32,
                          check=validate.chain(validate.generation_check("max_new_tokens", "Answer tokens"),
                                               validate.context_check(lm, "Answer tokens")))
    top_n = form.number(c3, "Show the top", "contrast_k", 20, says="Show the top",
                        check=validate.between(1, sae.d_sae, "Show the top", f"this SAE has {sae.d_sae} features"))
    job = state.attach_job("contrast_job", "contrast", sae=sae.source)
    if st.button("Search by contrast", type="primary", key="contrast_go", disabled=(job is not None and job.running) or not form.ok):
        prompts = load_prompts("builtin:harmless", n_prompts)

        def work(j, prompts=prompts, max_new=max_new, top_n=top_n):
            j.set_progress(0, 2, "the model answers the prompts")
            refusal_pairs, answer_pairs = search.contrast_pairs(lm, prompts, max_new_tokens=max_new)
            j.set_progress(1, 2, "reading SAE activations")
            rows = search.contrast_search(lm, sae, refusal_pairs, answer_pairs, top_n=top_n)
            j.set_progress(2, 2, "")
            return [{"feature": r.feature, "diff": r.diff, "refusal_mean": r.refusal_mean, "answer_mean": r.answer_mean,
                     "refusal_freq": r.refusal_freq, "answer_freq": r.answer_freq} for r in rows]

        job = jobs.start_job("contrast", work, meta={"sae": sae.source})
        state.remember_job("contrast_job", job)
        st.rerun()
    job_result_fragment(job, f"contrast_rows:{sae.source}")  # per SAE: indices of one SAE mean nothing in another
    _candidates_table(st.session_state.get(f"contrast_rows:{sae.source}") or [], "contrast", lm, sae, "contrast", "refusal_mean")


def job_result_fragment(job, result_key: str) -> None:
    """While ``job`` runs, a progress line that refreshes every second; its result lands in session state."""
    from ui import render

    if job is None:
        return
    ticking = job.running

    @st.fragment(run_every=1.0 if ticking else None)
    def show() -> None:
        if job.running:
            render.job_status(job)
        elif ticking:
            st.rerun()

    show()
    if job.status == "done" and st.session_state.get(f"{result_key}_job") != job.id:
        st.session_state[result_key] = job.result
        st.session_state[f"{result_key}_job"] = job.id
    elif job.status in ("failed", "cancelled") and st.session_state.get(f"{result_key}_job") != job.id:
        render.job_status(job)


def prompt_tab(lm, sae) -> None:
    st.markdown("The features most active on a text (position 0, the attention sink, is skipped).")
    from engine.features.search import features_for_text

    text = st.text_area("Text", "I'm sorry, but I can't help with that request.", key="prompt_text", **_PERSIST)
    chat = st.toggle("Read it as a user turn in the chat template", value=False, key="prompt_chat", **_PERSIST)
    if st.button("Find active features", key="prompt_go"):
        with state.shown_errors("search by prompt"), st.spinner("Reading SAE activations…"):
            hits = features_for_text(lm, sae, text, top_n=20, chat=chat)
            st.session_state[f"prompt_rows:{sae.source}"] = [
                {"feature": h.feature, "max_activation": h.max_activation, "mean_activation": h.mean_activation,
                 "tokens_active": h.n_active, "strongest_on": h.top_token} for h in hits
            ]
    _candidates_table(st.session_state.get(f"prompt_rows:{sae.source}") or [], "prompt", lm, sae, "prompt search", "max_activation")


def index_tab(lm, sae) -> None:
    st.markdown("Add features by number, with one value for all of them.")
    form = validate.Form()
    c1, c2 = st.columns([2, 1])
    text = c1.text_input("Feature indices", placeholder="e.g. 12, 40, 301", key="index_text",
                         help=f"Whole numbers from 0 to {sae.d_sae - 1} (this SAE has {sae.d_sae} features), separated by commas.")
    feats = validate.feature_list(c1, text, sae, form, "index_text") if (text or "").strip() else None
    value = form.number(c2, "Value", "index_value", 5.0, kind=float, check=validate.clamp_value_check, persist=False,
                        help="Any finite number: set-mode activation or multiply factor (negative values push against the "
                             "feature's direction).")
    if st.button("Add to the clamp set", key="index_add", disabled=not form.ok):
        if not feats:
            st.error("Type feature indices first, e.g. 12, 40, 301.")
        else:
            try:
                clamp_set.add_features(lm, sae, feats, [value] * len(feats), "by index")
                st.success(f"Added {len(feats)} features.")
            except LabError as exc:
                st.error(str(exc))


def _np_client():
    from engine.services.neuronpedia import NeuronpediaClient

    key = None
    try:
        key = st.secrets.get("NEURONPEDIA_API_KEY")
    except Exception:  # noqa: BLE001 - no secrets file is the normal case
        key = None
    return NeuronpediaClient(api_key=key)


def neuronpedia_tab(lm, sae) -> None:
    from engine.services.neuronpedia import split_neuronpedia_id

    st.markdown("Search feature explanations on [Neuronpedia](https://www.neuronpedia.org) by text (needs the internet).")
    np_id = st.text_input("Neuronpedia SAE id (MODEL/LAYER)", value=sae.neuronpedia_id or "", key="np_id",
                          placeholder="e.g. gpt2-small/6-res-jb",
                          help="Filled in when the chosen SAE is on Neuronpedia. The lab's own default SAE is not.")
    query = st.text_input("Search explanations for", placeholder="e.g. refusal, apology, harmful request", key="np_query")
    if not sae.neuronpedia_id:
        st.caption("The chosen SAE has no Neuronpedia id: results describe another SAE and cannot be added to this clamp.")
    if st.button("Search Neuronpedia", key="np_go", disabled=not (np_id and query)):
        try:
            model_id, layer = split_neuronpedia_id(np_id)
            with st.spinner("Asking Neuronpedia…"):
                hits = _np_client().search(model_id, [layer], query)
            st.session_state["np_rows"] = [{"feature": h.index, "description": h.description, "layer": h.layer,
                                            "score": h.score, "link": h.url} for h in hits]
            if not hits:
                st.info("No explanations matched.")
        except LabError as exc:
            st.error(str(exc))
    rows = st.session_state.get("np_rows") or []
    if rows:
        if sae.neuronpedia_id and np_id == sae.neuronpedia_id:
            _candidates_table(rows, "np", lm, sae, "Neuronpedia search", None)
        else:
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                         column_config={"link": st.column_config.LinkColumn("link")})


# ------------------------------------------------------------------------------------------------ feature card


def feature_card_section(lm, sae) -> None:
    """The card of a typed feature (or of the link that opened it), read from the precomputed store
    (``ui.card_views``), beside the Neuronpedia card when the SAE has a Neuronpedia id. A fragment: Show card and
    the neighbour links rerun only this section, not the whole page."""
    _card_fragment(lm, sae)


@st.fragment
def _card_fragment(lm, sae) -> None:
    from ui import card_views, feature_link

    spec = clamp_set.row_spec(sae)
    tgt = feature_link.target()
    mine = tgt if tgt and tgt.get("sae") in (spec, None) and 0 <= tgt["feature"] < sae.d_sae else None
    row = next((r for r in clamp_set.clamp_state(lm, sae)["rows"] if r["sae"] == spec and r["features"]), None)
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    default = mine["feature"] if mine else (row["features"][0] if row else 0)
    idx = validate.Form().number(c1, "Feature", "card_feature", int(default), check=validate.feature_check(sae), persist=False,
                                 help=f"0 to {sae.d_sae - 1} (this SAE has {sae.d_sae} features)")
    if idx is None:
        return
    if c2.button("Show card", key="card_go", help="Density, histogram, examples across quantiles with per-token activations, "
                                                  "decoder neighbours and logit effects, from this SAE's precomputed card store"):
        feature_link.set_target(spec, idx)
        mine = {"sae": spec, "feature": idx}
    local, remote = st.columns([3, 1]) if sae.neuronpedia_id else (st.container(), None)
    with local:
        if mine:
            card_views.card_view(lm, sae, mine["feature"], key="card")
        elif card_views.precompute_panel(lm, sae, "card", auto=False):
            st.caption("This SAE's cards are precomputed: type a feature and press Show card, or open one from any "
                       "feature id on these pages.")
    if remote is None:
        return
    with remote:
        url = sae.neuronpedia_url(idx)
        if url:
            st.markdown(f"[Open feature {idx} on Neuronpedia]({url})")
        if st.button("Fetch from Neuronpedia", key="card_np"):
            from engine.services.neuronpedia import split_neuronpedia_id

            try:
                model_id, layer = split_neuronpedia_id(sae.neuronpedia_id)
                with st.spinner("Asking Neuronpedia…"):
                    st.session_state["np_card"] = (idx, _np_client().feature(model_id, layer, idx))
            except LabError as exc:
                st.error(str(exc))
        card = st.session_state.get("np_card")
        if card and card[0] == idx:
            info = card[1]
            st.markdown("**Neuronpedia:** " + ("; ".join(info.explanations[:3]) or "no explanation"))
            if info.pos_tokens:
                st.markdown("Promotes: " + ", ".join(f"`{t}`" for t in info.pos_tokens[:10]))
            if info.neg_tokens:
                st.markdown("Suppresses: " + ", ".join(f"`{t}`" for t in info.neg_tokens[:10]))
            for ex in info.examples[:3]:
                st.caption("".join(ex["tokens"])[:300])
