"""Feature search for any model/SAE pair: contrast search and features of a text. No streamlit import.

* :func:`contrast_search` ranks SAE features by their mean activation on **refusal-answer token positions** minus
  their mean on **ordinary-answer positions** (the answer tokens of chat-formatted (prompt, answer) pairs; prompt
  and template tokens are never counted).
* :func:`features_for_text` lists the features most active on one text; :func:`token_activations` gives one
  feature's activation per token (for highlighting).

Feature cards are ``engine.features.cards``. Every user mistake (a feature index out of range, an empty corpus, an
SAE trained for another model) raises :class:`~engine.errors.LabError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE, check_fits, hook_layer

ChatPair = tuple[str, str]
"""``(user prompt, assistant answer)``."""


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ContrastRow:
    """One feature's standing in a contrast search."""

    feature: int
    refusal_mean: float
    """Mean activation over refusal-answer tokens (zeros included)."""
    answer_mean: float
    """Mean activation over ordinary-answer tokens (zeros included)."""
    diff: float
    """``refusal_mean − answer_mean``: the ranking key."""
    refusal_freq: float
    """Fraction of refusal-answer tokens on which the feature fires."""
    answer_freq: float
    """Fraction of ordinary-answer tokens on which the feature fires."""
    refusal_active_mean: float = 0.0
    """Mean activation over the refusal-answer tokens on which it fires."""


@dataclass(frozen=True)
class FeatureHit:
    """A feature active on a text."""

    feature: int
    max_activation: float
    mean_activation: float
    """Mean over the text's tokens (zeros included)."""
    n_active: int
    """Tokens on which it fires."""
    top_token: str
    """The token where it is strongest."""
    top_position: int


# ------------------------------------------------------------------------------------------------- checks


def check_feature(sae: LoadedSAE, feature: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int):
        try:
            feature = int(feature)
        except (TypeError, ValueError):
            raise LabError(f"feature index {feature!r} is not an integer") from None
    if not 0 <= feature < sae.d_sae:
        raise LabError(f"feature index {feature} is out of range: this SAE has features 0..{sae.d_sae - 1}")
    return feature


# ------------------------------------------------------------------------------------------------- activations


def _answer_ids(lm: LoadedModel, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the chat ``prompt`` + ``answer``, and where the answer starts."""
    head = lm.encode(lm.chat_prompt(prompt))
    sep = "" if lm.has_chat_template else " "
    tail = lm.tokenizer(sep + answer, add_special_tokens=False)["input_ids"]
    return head + list(tail), len(head)


@torch.no_grad()
def sae_activations(lm: LoadedModel, sae: LoadedSAE, sequences: Sequence[list[int]], batch_size: int = 16) -> list[Float[Tensor, "pos d_sae"]]:
    """SAE activations at ``sae.hook_name`` for each token sequence (one ``[len, d_sae]`` tensor each, on CPU)."""
    check_fits(sae, lm)
    stop = hook_layer(sae.hook_name) + 1
    out: list[Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = list(sequences[start : start + batch_size])
        batch = lm.batch(chunk)
        seen: list[Tensor] = []
        with lm.lock:
            lm.model.run_with_hooks(
                batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop,
                fwd_hooks=[(sae.hook_name, lambda act, hook, seen=seen: seen.append(act.detach()))],
            )
            z = sae.encode(seen[0]).float().cpu()
        width = batch.tokens.shape[1]
        out.extend(z[i, width - len(seq) :] for i, seq in enumerate(chunk))
    return out


def answer_activations(lm: LoadedModel, sae: LoadedSAE, pairs: Sequence[ChatPair], batch_size: int = 16) -> Float[Tensor, "n_tokens d_sae"]:
    """SAE activations at the answer tokens of chat-formatted (prompt, answer) pairs, stacked."""
    if not pairs:
        raise LabError("no (prompt, answer) pairs given")
    encoded = [_answer_ids(lm, p, a) for p, a in pairs]
    acts = sae_activations(lm, sae, [ids for ids, _ in encoded], batch_size)
    rows = [z[start:] for z, (_, start) in zip(acts, encoded) if z.shape[0] > start]
    if not rows:
        raise LabError("the answers are empty: no answer tokens to read")
    return torch.cat(rows)


# ------------------------------------------------------------------------------------------------- contrast


def contrast_from_activations(
    refusal_acts: Float[Tensor, "n_ref d_sae"], answer_acts: Float[Tensor, "n_ans d_sae"], top_n: int = 20
) -> list[ContrastRow]:
    """Rank features by mean activation on refusal tokens minus on answer tokens (best first)."""
    if refusal_acts.shape[0] == 0 or answer_acts.shape[0] == 0:
        raise LabError("contrast search needs at least one refusal-answer token and one ordinary-answer token")
    if refusal_acts.shape[1] != answer_acts.shape[1]:
        raise LabError("refusal and answer activations come from SAEs of different widths")
    ref_mean, ans_mean = refusal_acts.float().mean(0), answer_acts.float().mean(0)
    ref_freq, ans_freq = (refusal_acts > 0).float().mean(0), (answer_acts > 0).float().mean(0)
    active_mean = refusal_acts.float().sum(0) / (refusal_acts > 0).float().sum(0).clamp(min=1)
    diff = ref_mean - ans_mean
    order = torch.argsort(diff, descending=True)[: max(0, top_n)]
    return [
        ContrastRow(int(i), float(ref_mean[i]), float(ans_mean[i]), float(diff[i]), float(ref_freq[i]), float(ans_freq[i]), float(active_mean[i]))
        for i in order
    ]


def contrast_search(
    lm: LoadedModel, sae: LoadedSAE, refusal_pairs: Sequence[ChatPair], answer_pairs: Sequence[ChatPair], top_n: int = 20, batch_size: int = 16
) -> list[ContrastRow]:
    """Features that separate refusal answers from ordinary answers (see :func:`contrast_from_activations`).

    ``refusal_pairs`` are (prompt, refusal) chats, ``answer_pairs`` (prompt, ordinary answer) chats; only the answer
    tokens are read. :func:`contrast_pairs` builds both for a model.
    """
    if not refusal_pairs or not answer_pairs:
        raise LabError("contrast search needs both refusal pairs and answer pairs (got an empty list)")
    ref = answer_activations(lm, sae, refusal_pairs, batch_size)
    ans = answer_activations(lm, sae, answer_pairs, batch_size)
    return contrast_from_activations(ref, ans, top_n)


def contrast_pairs(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 48, seed: int = 0) -> tuple[list[ChatPair], list[ChatPair]]:
    """(refusal pairs, answer pairs) for ``prompts``: forced refusals in our phrasings, and the model's own answers.

    The model's answers are generated greedily (``engine.method.generation``); answers that the judge already counts as
    refusals are moved to the refusal side.
    """
    import random

    from engine.method.generation import GenerationConfig, generate
    from engine.method.judge import judge
    from engine.sae_recipe.train_prompts import REFUSALS, TOPICS

    if not prompts:
        raise LabError("no prompts given for the contrast search")
    rng = random.Random(seed)
    refusals = [(p, rng.choice(REFUSALS).replace("{topic}", rng.choice(TOPICS))) for p in prompts]
    answers: list[ChatPair] = []
    for g in generate(lm, list(prompts), GenerationConfig(max_new_tokens=max_new_tokens, batch_size=16)):
        if g.text.strip():
            (refusals if judge(g.text).refusal else answers).append((prompts[g.index], g.text))
    return refusals, answers


# ------------------------------------------------------------------------------------------------- by text


def _text_ids(lm: LoadedModel, text: str, chat: bool) -> list[int]:
    ids = lm.encode(lm.chat_prompt(text) if chat else text)
    if not ids:
        raise LabError("the text is empty")
    return ids


def features_for_text(lm: LoadedModel, sae: LoadedSAE, text: str, top_n: int = 20, chat: bool = False, skip_first: bool = True) -> list[FeatureHit]:
    """The ``top_n`` features with the largest activation on ``text`` (position 0, the attention sink, skipped)."""
    if not text.strip():
        raise LabError("the text is empty")
    ids = _text_ids(lm, text, chat)
    z = sae_activations(lm, sae, [ids])[0]
    first = 1 if skip_first and z.shape[0] > 1 else 0
    z = z[first:]
    peak, where = z.max(0)
    order = [int(i) for i in torch.argsort(peak, descending=True)[:top_n] if peak[i] > 0]
    return [
        FeatureHit(i, float(peak[i]), float(z[:, i].mean()), int((z[:, i] > 0).sum()), lm.decode([ids[first + int(where[i])]]), first + int(where[i]))
        for i in order
    ]


def token_activations(lm: LoadedModel, sae: LoadedSAE, text: str, feature: int, chat: bool = False) -> list[tuple[str, float]]:
    """``(token, activation)`` of one feature at every token of ``text``."""
    feature = check_feature(sae, feature)
    ids = _text_ids(lm, text, chat)
    z = sae_activations(lm, sae, [ids])[0][:, feature]
    return [(lm.decode([t]), float(a)) for t, a in zip(ids, z)]
