"""Feature search for any model/SAE pair: contrast search, features of a text, feature cards. No streamlit import.

* :func:`contrast_search` ranks SAE features by their mean activation on **refusal-answer token positions** minus
  their mean on **ordinary-answer positions** (the answer tokens of chat-formatted (prompt, answer) pairs; prompt
  and template tokens are never counted).
* :func:`features_for_text` lists the features most active on one text; :func:`token_activations` gives one
  feature's activation per token (for highlighting).
* :func:`feature_card` describes one feature: its top-activating token contexts in a local corpus, its top and
  bottom direct logit effects (``W_dec[i] @ W_U``, as tokens), its activation frequency and, when the SAE has a
  Neuronpedia id in the sae_lens registry, its Neuronpedia URL.

Every user mistake (a feature index out of range, an empty corpus, an SAE trained for another model) raises
:class:`~engine.errors.LabError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.models import LoadedModel
from engine.saes import LoadedSAE, validate_sae

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


# ------------------------------------------------------------------------------------------------- checks


def check_pair(lm: LoadedModel, sae: LoadedSAE) -> None:
    """The SAE was made for this model: same model name (when recorded), an existing hook and the right width."""
    recorded = getattr(getattr(sae.sae, "cfg", None), "metadata", None)
    model_name = getattr(recorded, "model_name", None) if recorded is not None else None
    if model_name and lm.name != "tiny":
        from engine.saes import _same_model

        if not _same_model(model_name, lm.name):
            raise LabError(f"the SAE {sae.source} was trained on {model_name}, not on the loaded model {lm.name}")
    validate_sae(sae, lm)


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
    tail = lm.tokenizer(sep + answer, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return head + list(tail), len(head)


@torch.no_grad()
def sae_activations(lm: LoadedModel, sae: LoadedSAE, sequences: Sequence[list[int]], batch_size: int = 16) -> list[Float[Tensor, "pos d_sae"]]:
    """SAE activations at ``sae.hook_name`` for each token sequence (one ``[len, d_sae]`` tensor each, on CPU)."""
    check_pair(lm, sae)
    from engine.saes import hook_layer

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

    The model's answers are generated greedily (``engine.generation``); answers that the judge already counts as
    refusals are moved to the refusal side.
    """
    import random

    from engine.default.train_prompts import REFUSALS, TOPICS
    from engine.generation import GenerationConfig, generate
    from engine.judge import judge

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


# ------------------------------------------------------------------------------------------------- cards


def logit_effects(lm: LoadedModel, sae: LoadedSAE, feature: int, n: int = 10) -> tuple[list[LogitEffect], list[LogitEffect]]:
    """Top and bottom ``n`` tokens of ``W_dec[feature] @ W_U`` (the direct effect on the logits)."""
    feature = check_feature(sae, feature)
    check_pair(lm, sae)
    with torch.no_grad():
        direction = sae.sae.W_dec[feature].float().to(lm.device)  # type: ignore[attr-defined]
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

    from engine.default.train_prompts import HARMFUL_TRAIN, HARMLESS_TRAIN, REFUSALS, TOPICS
    from engine.saes import DEFAULT_SAE_DIR

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
