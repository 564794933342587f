"""Feature cards in the page: read from the precomputed store (milliseconds), or precompute it first as a job.

The store is ``engine.features.card_store``; the job runs ``engine.features.card_precompute.precompute_cards`` with
the job's cancel event and progress. Opening a card when the SAE has no store yet starts the precompute (first use);
a cancelled one is resumed by a button, keeping its finished chunks.
"""

from __future__ import annotations

import html
import logging

import altair as alt
import pandas as pd
import streamlit as st

from engine.errors import LabError
from engine.services import jobs
from ui import render

logger = logging.getLogger(__name__)

JOB_KIND = "feature cards"


@st.cache_resource(show_spinner=False, max_entries=4)
def _corpus(model_name: str, _lm):
    from engine.features.corpus import card_corpus

    return card_corpus(_lm)


@st.cache_resource(show_spinner=False, max_entries=8)
def _open(path: str, mtime: float, key: str):
    from engine.features.card_store import CardStore

    return CardStore(path, expect_key=key)


def store_key(lm, sae) -> tuple[str, object]:
    """(key, path) of ``sae``'s store for ``lm`` and the lab's corpus."""
    from engine.features.card_store import StoreConfig, store_key, store_path

    key = store_key(lm, sae, _corpus(lm.name, lm).version, StoreConfig())
    return key, store_path(sae, key)


def open_store(lm, sae):
    """The store of ``sae``, or None when it is not computed yet (a store of other weights or corpus never matches)."""
    key, path = store_key(lm, sae)
    if not path.is_file():
        return None
    return _open(str(path), path.stat().st_mtime, key)


def start_precompute(lm, sae) -> jobs.Job:
    from engine.features.card_precompute import precompute_cards

    key, path = store_key(lm, sae)
    corpus = _corpus(lm.name, lm)

    def work(j: jobs.Job, lm=lm, sae=sae, corpus=corpus):
        j.set_progress(0, 1, "reading the corpus")
        result = precompute_cards(lm, sae, corpus, cancel=j.cancel, progress=lambda d, n, w: j.set_progress(d, n, w))
        return {"path": str(result.path), "status": result.status, "seconds": result.seconds, "size_bytes": result.size_bytes}

    return jobs.start_job(JOB_KIND, work, meta={"sae": sae.source, "store": str(path)})


def precompute_panel(lm, sae, key: str, auto: bool) -> bool:
    """The store's state and the precompute job (progress, Cancel, Resume). True when the store is ready.

    ``auto``: start the job when none ran yet for this store (opening a card is the first use)."""
    _, path = store_key(lm, sae)
    if path.is_file():
        return True
    job = jobs.latest_job(JOB_KIND, store=str(path))
    if job is None and auto:
        job = start_precompute(lm, sae)
    if job is None or not job.running:
        if job is not None and job.status in ("cancelled", "failed"):
            render.job_status(job)
        label = "Resume the precompute" if job is not None and job.status == "cancelled" else "Precompute this SAE's cards"
        st.caption(f"The cards of `{sae.source}` are not computed yet: one pass over the local corpus "
                   f"({len(_corpus(lm.name, lm).texts)} texts) stores every feature's card; each card then opens in under a second.")
        if st.button(label, key=f"{key}_precompute", type="primary"):
            job = start_precompute(lm, sae)
            st.rerun()
        return False
    ticking = job.running

    @st.fragment(run_every=1.0 if ticking else None)
    def live() -> None:
        cur = jobs.get_job(job.id)
        if cur is None:
            return
        render.job_status(cur)
        if cur.running:
            if st.button("Cancel", key=f"{key}_cancel_cards", help="Stops after the current chunk; finished chunks are kept"):
                cur.request_cancel()
        elif ticking:
            st.rerun()

    live()
    return False


def card_view(lm, sae, feature: int, key: str) -> None:
    """The card of ``feature`` from the store; when there is none yet, the precompute (started on first use)."""
    from ui import clamp_set

    if not precompute_panel(lm, sae, key, auto=True):
        return
    try:
        store = open_store(lm, sae)
        card = store.card(int(feature)) if store is not None else None
    except LabError as exc:
        st.error(str(exc))
        return
    if card is not None:
        render_card(card, sae, clamp_set.row_spec(sae), key)


def _heat(example, peak: float) -> str:
    from engine.features.card_store import visible_token

    spans = []
    for i, (tok, act) in enumerate(zip(example.tokens, example.activations)):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, act / peak))
        style = f"background:rgba(230,60,60,{alpha:.2f});padding:0 1px;border-radius:2px"
        if i == example.center:
            style += ";outline:1.5px solid #333;font-weight:600"
        spans.append(f"<span style='{style}' title='{act:.3f}'>{html.escape(visible_token(tok))}</span>")
    return "".join(spans)


def _examples(title: str, examples, peak: float, label) -> None:
    if not examples:
        return
    items = "".join(f"<li><code style='white-space:pre-wrap;background:none'>{_heat(e, peak)}</code> "
                    f"<small>{html.escape(label(e))}</small></li>" for e in examples)
    st.markdown(f"**{title}**")
    st.html(f"<div class='flip-text'><ol style='margin:0;padding-left:1.4rem;line-height:1.9'>{items}</ol></div>")


def render_card(card, sae, spec: str, key: str) -> None:
    """A stored card: numbers, histogram, examples as graded heat-maps, neighbours (links), logit effects."""
    from engine.features.card_store import visible_token
    from ui import feature_link

    st.markdown(f"**Feature {card.feature}** · fires on {card.density:.3%} of {card.n_tokens} corpus tokens · "
                f"mean when active {card.mean_when_active:.2f} · max {card.max_activation:.2f}")
    url = sae.neuronpedia_url(card.feature)
    if url:
        st.markdown(f"[Open feature {card.feature} on Neuronpedia]({url})")
    left, right = st.columns([3, 2])
    with left:
        if sum(card.hist_counts):
            edges = card.hist_edges
            df = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "tokens": card.hist_counts})
            chart = (alt.Chart(df, title="Activation histogram (where it fires)").mark_bar()
                     .encode(x=alt.X("from:Q", bin="binned", title="activation"), x2="to:Q", y=alt.Y("tokens:Q", title="tokens"),
                             tooltip=[alt.Tooltip("from:Q", format=".2f"), alt.Tooltip("to:Q", format=".2f"), "tokens:Q"])
                     .properties(height=170))
            st.altair_chart(chart, width="stretch")
        else:
            st.caption("It never fires on the local corpus.")
    with right:
        tok = lambda effects: ", ".join(f"`{visible_token(e.token)}` {e.value:+.2f}" for e in effects)  # noqa: E731
        st.markdown(f"**Promotes:** {tok(card.top_logits)}  \n**Suppresses:** {tok(card.bottom_logits)}")
        if card.neighbours:
            st.markdown("**Decoder neighbours** (cosine)")
            cols = st.columns(4)
            for i, n in enumerate(card.neighbours):
                cols[i % 4].button(f"#{n.feature} · {n.cosine:.2f}", key=f"{key}_nb_{card.feature}_{n.feature}",
                                   on_click=feature_link.set_target, args=(spec, n.feature), help=f"Open the card of feature {n.feature}")
    # One outlying token (e.g. 181 where the next is 18) would leave every other example unshaded: shade up to the
    # second-highest example instead, and say so.
    shade_max = card.max_activation
    acts = sorted((e.activation for e in card.top_examples), reverse=True)
    if len(acts) > 1 and acts[1] > 0 and acts[0] > 3 * acts[1]:
        shade_max = acts[1]
        st.caption(f"Outlier: one token reaches {acts[0]:.2f}, the next highest example {acts[1]:.2f}; the histogram's "
                   f"axis is stretched by it, and shading saturates at {acts[1]:.2f}.")
    _examples("Top activations", card.top_examples, shade_max, lambda e: f"{e.activation:.2f} · text {e.text_index}")
    _examples("Sampled across activation quantiles", card.quantile_examples, shade_max,
              lambda e: f"{e.activation:.2f} · percentile {100 * e.quantile:.0f} of where it fires")
    st.caption("Tokens: ␣ is a leading space, ⏎ a newline; shading is the feature's activation on each token "
               "(its maximum = full red); the outlined token is the example.")
