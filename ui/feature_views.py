"""Page pieces for the Features page: search tabs, feature cards, the clamp editor and presets."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import state

logger = logging.getLogger(__name__)
_PERSIST = {"persist_state": "session"}


def _add_to_clamp(sae, new: list[int], values: list[float] | None, origin: str) -> None:
    cur = state.clamp_state(sae)
    feats, vals = list(cur["features"]), list(cur["values"])
    default_value = vals[0] if vals else 1.0
    if len(vals) < len(feats):
        vals = vals + [default_value] * (len(feats) - len(vals))
    for i, f in enumerate(new):
        if not 0 <= int(f) < sae.d_sae:
            raise LabError(f"feature {f} is out of range (this SAE has {sae.d_sae} features)")
        value = float(values[i]) if values and i < len(values) else default_value
        if int(f) in feats:
            vals[feats.index(int(f))] = value
        else:
            feats.append(int(f))
            vals.append(value)
    state.set_clamp(sae, feats, cur["mode"], vals, origin if not cur["features"] else f"{cur['origin']} + {origin}")


def _candidates_table(rows: list[dict], key: str, sae, origin: str, value_col: str | None) -> None:
    """A table of candidate features with 'add the top N' to the clamp set."""
    if not rows:
        return
    df = pd.DataFrame(rows)
    st.dataframe(df, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(df)))
    c1, c2, c3 = st.columns([1, 1, 2])
    n = c1.number_input("How many (from the top)", 1, len(rows), min(5, len(rows)), key=f"{key}_n")
    scale = c2.number_input("Value × activation", 0.0, 100.0, 2.0, 0.5, key=f"{key}_scale",
                            help="set-mode value = this × the feature's activation in the search (e.g. 2× its mean on refusals)",
                            disabled=value_col is None)
    c3.write("")
    if c3.button(f"Add the top {int(n)} to the clamp set", key=f"{key}_add"):
        top = rows[: int(n)]
        values = [float(scale) * float(r[value_col]) for r in top] if value_col else None
        try:
            _add_to_clamp(sae, [int(r["feature"]) for r in top], values, origin)
            st.success(f"Added {int(n)} features.")
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

    c1, c2, c3 = st.columns(3)
    n_prompts = c1.number_input("Prompts (built-in harmless)", 2, 50, 12, key="contrast_prompts", **_PERSIST)
    max_new = c2.number_input("Answer tokens", 8, 128, 32, key="contrast_tokens", **_PERSIST)
    top_n = c3.number_input("Show the top", 5, 200, 20, key="contrast_k", **_PERSIST)
    job = state.attach_job("contrast_job", "contrast", sae=sae.source)
    if st.button("Search by contrast", type="primary", key="contrast_go", disabled=job is not None and job.running):
        prompts = load_prompts("builtin:harmless", int(n_prompts))

        def work(j, prompts=prompts, max_new=int(max_new), top_n=int(top_n)):
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
    _job_result_fragment(job, "contrast_rows")
    _candidates_table(st.session_state.get("contrast_rows") or [], "contrast", sae, "contrast", "refusal_mean")


def _job_result_fragment(job, result_key: str) -> None:
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
            st.session_state["prompt_rows"] = [
                {"feature": h.feature, "max_activation": h.max_activation, "mean_activation": h.mean_activation,
                 "tokens_active": h.n_active, "strongest_on": h.top_token} for h in hits
            ]
    _candidates_table(st.session_state.get("prompt_rows") or [], "prompt", sae, "prompt search", "max_activation")


def index_tab(sae) -> None:
    st.markdown("Add features by number, with one value for all of them.")
    c1, c2 = st.columns([2, 1])
    text = c1.text_input("Feature indices", placeholder="e.g. 12, 40, 301", key="index_text")
    value = c2.number_input("Value", value=5.0, step=0.5, key="index_value")
    if st.button("Add to the clamp set", key="index_add"):
        from engine.method.presets import parse_features

        try:
            feats = parse_features(text or "")
            _add_to_clamp(sae, feats, [float(value)] * len(feats), "by index")
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


def neuronpedia_tab(sae) -> None:
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
            _candidates_table(rows, "np", sae, "Neuronpedia search", None)
        else:
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                         column_config={"link": st.column_config.LinkColumn("link")})


# ------------------------------------------------------------------------------------------------ feature card


def feature_card_section(lm, sae) -> None:
    clamp = state.clamp_state(sae)
    c1, c2 = st.columns([1, 3])
    default = clamp["features"][0] if clamp["features"] else 0
    idx = int(c1.number_input("Feature", 0, sae.d_sae - 1, int(default), key="card_feature"))
    url = sae.neuronpedia_url(idx)
    if url:
        c2.markdown(f"[Open feature {idx} on Neuronpedia]({url})")
    from engine.features.cards import feature_card

    local, remote = st.columns(2)
    with local:
        if st.button("Show local card", key="card_go", help="Top contexts from a local corpus, logit effects, frequency"):
            with state.shown_errors("feature card"), st.spinner("Computing the card…"):
                corpus = _corpus(lm.name, lm)
                st.session_state["card"] = (sae.source, idx, feature_card(lm, sae, idx, corpus))
        card = st.session_state.get("card")
        if card and card[:2] == (sae.source, idx):
            render_local_card(card[2])
    with remote:
        if sae.neuronpedia_id:
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


@st.cache_resource(show_spinner=False, max_entries=2)
def _corpus(model_name: str, _lm) -> list[str]:
    from engine.features.cards import default_corpus

    return default_corpus(_lm, limit=160)


def render_local_card(card) -> None:
    """A FeatureCard: numbers, top contexts with the token marked, logit effects."""
    import html

    st.markdown(
        f"**Feature {card.feature}** · fires on {card.frequency:.2%} of {card.n_tokens} corpus tokens · "
        f"mean when active {card.mean_when_active:.2f} · max {card.max_activation:.2f}"
    )
    if card.top_contexts:
        items = "".join(
            f"<li>{html.escape(c.before)}<mark style='background:#ffc9c9'>{html.escape(c.token)}</mark>{html.escape(c.after)}"
            f" <small>({c.activation:.2f})</small></li>" for c in card.top_contexts
        )
        st.html(f"<div class='flip-text'><ol style='margin:0;padding-left:1.2rem'>{items}</ol></div>")
    else:
        st.caption("It never fires on the local corpus.")
    up = ", ".join(f"`{e.token.strip() or repr(e.token)}`" for e in card.top_logits)
    down = ", ".join(f"`{e.token.strip() or repr(e.token)}`" for e in card.bottom_logits)
    st.markdown(f"**Promotes:** {up}  \n**Suppresses:** {down}")


# ------------------------------------------------------------------------------------------------ clamp set


def clamp_editor(sae) -> None:
    from engine.method.clamp import CLAMP_MODES

    cur = state.clamp_state(sae)
    if not cur["features"]:
        st.info("The clamp set is empty: add features from a search above.")
    mode = st.radio("Mode", CLAMP_MODES, index=CLAMP_MODES.index(cur["mode"]), horizontal=True, key=f"clamp_mode:{cur.get('version', 0)}",
                    help="set: z_S := value · multiply: z_S := value × z_S · zero: z_S := 0")
    vals = list(cur["values"]) + [1.0] * (len(cur["features"]) - len(cur["values"]))
    df = pd.DataFrame({"feature": cur["features"], "value": vals[: len(cur["features"])]})
    df["link"] = [sae.neuronpedia_url(f) or "" for f in cur["features"]]
    edited = st.data_editor(
        df, num_rows="dynamic", hide_index=True, width="stretch", key=f"clamp_table:{cur.get('version', 0)}",
        column_config={"feature": st.column_config.NumberColumn("feature", min_value=0, max_value=sae.d_sae - 1, step=1),
                       "value": st.column_config.NumberColumn("value", disabled=mode == "zero"),
                       "link": st.column_config.LinkColumn("Neuronpedia", disabled=True)},
    )
    c1, c2, c3 = st.columns(3)
    if c1.button("Apply changes", key="clamp_apply", type="primary"):
        rows = edited.dropna(subset=["feature"])
        try:
            feats = [int(f) for f in rows["feature"]]
            values = [float(v) if pd.notna(v) else 1.0 for v in rows["value"]]
            from engine.method.clamp import ClampSpec

            if feats:
                ClampSpec(sae, feats, mode, values)  # validates
            state.set_clamp(sae, feats, mode, values, "edited")
            st.rerun()
        except LabError as exc:
            st.error(str(exc))
    if c2.button("Clear the clamp set", key="clamp_clear"):
        state.set_clamp(sae, [], cur["mode"], [], "empty")
        st.rerun()
    st.caption(f"{len(cur['features'])} features · mode **{cur['mode']}** · from: {cur['origin']}")


def presets_section(sae) -> None:
    from engine.method import presets
    from engine.method.presets import load_preset, preset_path, save_preset

    with st.expander("Presets: save and load clamp sets"):
        shipped = preset_path(sae)
        saved = presets.list_presets(sae.hook_name)
        options = ([f"shipped: {shipped.name}"] if shipped else []) + [p.stem for p in saved]
        if options:
            choice = st.selectbox("Preset", options, key="preset_choice")
            if st.button("Load preset", key="preset_load"):
                path = shipped if choice.startswith("shipped:") else presets.presets_dir() / f"{choice}.json"
                try:
                    spec = load_preset(path, sae)
                    origin = "the SAE's shipped preset" if choice.startswith("shipped:") else f"preset '{path.stem}'"
                    state.set_clamp(sae, spec.features, spec.mode, spec.values, origin)
                    st.rerun()
                except LabError as exc:
                    st.error(str(exc))
        else:
            st.caption("No presets for this hook yet.")
        name = st.text_input("Save the current clamp set as", key="preset_name", placeholder="e.g. refusal-top10-x2")
        if st.button("Save preset", key="preset_save"):
            try:
                spec = state.clamp_specs(sae)[0]
                save_preset(presets.preset_file(name or ""), spec, note=f"saved from the dashboard, SAE {sae.source}")
                st.success(f"Saved {presets.preset_file(name).name}.")
            except LabError as exc:
                st.error(str(exc))
