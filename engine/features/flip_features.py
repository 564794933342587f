"""Which clamped features fire on which tokens of one flip, base versus clamped answer. No streamlit import.

For a flip (prompt, base answer, clamped answer) and the run's clamp set, :func:`flip_feature_activations` reads the
activation of every clamped feature at every answer token of both texts, each text teacher-forced after the chat
prompt. The activations are read **without the clamp**: they are what the model's own residual stream gives those
features (what the clamp overrides), so the two texts can be compared feature by feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.features.search import _answer_ids, sae_activations
from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec


@dataclass(frozen=True)
class FeatureRef:
    """One clamped feature."""

    sae: str
    """The SAE's source (``LoadedSAE.source``)."""
    hook: str
    feature: int


@dataclass(frozen=True)
class TextFeatures:
    """The clamped features' activations on one answer."""

    tokens: list[str]
    """The answer's tokens, decoded one by one."""
    values: Float[Tensor, "n_features n_tokens"]


@dataclass(frozen=True)
class FlipFeatures:
    """Both answers of a flip, feature by feature (rows of ``values`` follow ``features``)."""

    features: list[FeatureRef]
    base: TextFeatures
    clamped: TextFeatures


def flip_feature_activations(lm: LoadedModel, specs: Sequence[ClampSpec], prompt: str, base_text: str, clamped_text: str) -> FlipFeatures:
    """The activation of each clamped feature of ``specs`` at each answer token of ``base_text`` and ``clamped_text``."""
    if not specs:
        raise LabError("the run has no clamped features to show")
    for name, text in (("base", base_text), ("clamped", clamped_text)):
        if not isinstance(text, str) or not text.strip():
            raise LabError(f"the {name} answer is empty: there are no tokens to show features on")
    encoded = [_answer_ids(lm, prompt, t) for t in (base_text, clamped_text)]
    refs: list[FeatureRef] = []
    rows: list[list[Tensor]] = [[], []]
    for spec in specs:
        acts = sae_activations(lm, spec.sae, [ids for ids, _ in encoded], batch_size=2)
        for side, (z, (_, start)) in enumerate(zip(acts, encoded)):
            rows[side].append(z[start:, spec.features].T)
        refs.extend(FeatureRef(spec.sae.source, spec.hook_name, f) for f in spec.features)
    texts = []
    for side, (ids, start) in enumerate(encoded):
        tokens = [lm.tokenizer.decode([t], skip_special_tokens=False) for t in ids[start:]]
        texts.append(TextFeatures(tokens, torch.cat(rows[side]).float()))
    return FlipFeatures(refs, texts[0], texts[1])
