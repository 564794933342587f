"""Feature cards: what one feature does, from a local corpus and its decoder. No streamlit import.

A card holds the feature's top-activating token contexts in a local corpus, its top and bottom direct logit effects
(``W_dec[i] @ W_U``, as tokens), its activation frequency and, when the SAE has a Neuronpedia id in the sae_lens
registry, its Neuronpedia URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.errors import LabError
from engine.features.search import check_feature, sae_activations
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE, check_fits


@dataclass(frozen=True)
class Context:
    """A token where a feature is strongly active, with the text around it."""

    before: str
    token: str
    after: str
    activation: float
    text_index: int
    """Which corpus text."""
    position: int


@dataclass(frozen=True)
class LogitEffect:
    token: str
    token_id: int
    value: float


@dataclass(frozen=True)
class FeatureCard:
    """What one feature does (see module docstring)."""

    feature: int
    top_contexts: list[Context]
    top_logits: list[LogitEffect]
    """Tokens whose logits its decoder direction raises most."""
    bottom_logits: list[LogitEffect]
    """Tokens whose logits it lowers most."""
    frequency: float
    """Fraction of corpus tokens (position 0 excluded) on which it fires."""
    mean_when_active: float
    max_activation: float
    n_tokens: int
    neuronpedia_url: str | None


def logit_effects(lm: LoadedModel, sae: LoadedSAE, feature: int, n: int = 10) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """Top and bottom ``n`` tokens of ``W_dec[feature] @ W_U`` (the direct effect on the logits)."""
    feature = check_feature(sae, feature)
    check_fits(sae, lm)
    with torch.no_grad():
        direction = sae.W_dec[feature].float().to(lm.device)
        effect = (direction @ lm.model.W_U.float()).cpu()
    top = torch.topk(effect, n)
    bottom = torch.topk(-effect, n)
    fmt = lambda idx, vals, sign: [LogitEffect(lm.decode([int(i)]), int(i), sign * float(v)) for i, v in zip(idx, vals)]  # noqa: E731
    return fmt(top.indices, top.values, 1.0), fmt(bottom.indices, bottom.values, -1.0)


def feature_card(
    lm: LoadedModel, sae: LoadedSAE, feature: int, corpus: Sequence[str], n_contexts: int = 10, n_logits: int = 10, window: int = 8, batch_size: int = 16
) -> FeatureCard:
    """A feature card from ``corpus`` (texts tokenized as they are; see :func:`default_corpus` for the default's)."""
    feature = check_feature(sae, feature)
    texts = [t for t in corpus if t and t.strip()]
    if not texts:
        raise LabError("the corpus is empty: a feature card needs at least one text")
    seqs = [lm.encode(t) for t in texts]
    acts = sae_activations(lm, sae, seqs, batch_size)
    found: list[tuple[float, int, int]] = []
    n_tokens = n_active = 0
    total = peak = 0.0
    for ti, z in enumerate(acts):
        col = z[1:, feature]  # position 0 is the attention sink
        n_tokens += col.numel()
        on = col > 0
        n_active += int(on.sum())
        total += float(col[on].sum())
        if col.numel():
            peak = max(peak, float(col.max()))
        k = min(n_contexts, col.numel())
        vals, pos = torch.topk(col, k)
        found.extend((float(v), ti, int(p) + 1) for v, p in zip(vals, pos) if v > 0)
    found.sort(key=lambda r: -r[0])
    contexts = []
    for value, ti, pos in found[:n_contexts]:
        ids = seqs[ti]
        contexts.append(Context(lm.decode(ids[max(0, pos - window) : pos]), lm.decode([ids[pos]]), lm.decode(ids[pos + 1 : pos + 1 + window // 2]), value, ti, pos))
    top, bottom = logit_effects(lm, sae, feature, n_logits)
    return FeatureCard(
        feature, contexts, top, bottom, n_active / n_tokens if n_tokens else 0.0, total / n_active if n_active else 0.0, peak, n_tokens,
        sae.neuronpedia_url(feature),
    )


def default_corpus(lm: LoadedModel, limit: int | None = 400) -> list[str]:
    """A local corpus for feature cards: chats of our training prompts with the answers shipped beside the default
    SAE (``engine/default_sae/answers.json``) and forced refusals. Works for any chat model (the texts are
    formatted with its template)."""
    import json
    import random

    from engine.paths import DEFAULT_SAE_DIR
    from engine.sae_recipe.train_prompts import HARMFUL_TRAIN, HARMLESS_TRAIN, REFUSALS, TOPICS

    path = DEFAULT_SAE_DIR / "answers.json"
    answers: dict[str, str] = json.loads(path.read_text())["answers"] if path.is_file() else {}
    rng = random.Random(0)
    texts = []
    for prompt in HARMLESS_TRAIN + HARMFUL_TRAIN:
        reply = answers.get(prompt) if rng.random() < 0.6 else None
        reply = reply or rng.choice(REFUSALS).replace("{topic}", rng.choice(TOPICS))
        texts.append(lm.chat_prompt(prompt) + reply)
    rng.shuffle(texts)
    return texts[:limit] if limit else texts
