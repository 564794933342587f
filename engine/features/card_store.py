"""The feature-card store: one safetensors file per (SAE, its weights, model, corpus, settings). No streamlit import.

Opening a card reads one row of each array of the store (``safetensors.safe_open`` slices), so it takes
milliseconds whatever the SAE's width. The store is written by :mod:`engine.features.card_precompute`.

Where: ``cache_dir()/feature_cards/<hook>-<key>.safetensors``. The key hashes the SAE's hook and a hash of its
weights (not its source string: ``default`` and ``default:HOOK`` are one SAE), the model name, the corpus version
(a hash of its texts) and the :class:`StoreConfig`, so a store made for other weights or another corpus is never
found for this one (and the key is checked again on open). The SAE's source is kept in the store's metadata.

Arrays (``d`` = d_sae, ``E`` = top + quantile examples, ``W`` = window length):

=================  ==================  ==================================================================
``corpus_ids``     int32 [n]           every corpus token, texts concatenated
``text_offsets``   int64 [texts + 1]   where each text starts in ``corpus_ids``
``density``        float32 [d]         fraction of corpus tokens (position 0 of each text not read) it fires on
``mean_active``    float32 [d]         mean activation where it fires
``max_act``        float32 [d]         its largest activation (the histogram's upper edge)
``hist``           int32 [d, bins]     counts of its non-zero activations in equal bins over [0, max_act]
``ex_token``       int64 [d, E]        global token index of each example (−1: none); top examples first
``ex_value``       float32 [d, E]      the activation there
``ex_quantile``    float32 [d, E]      the example's rank among the feature's activations (1 = its largest)
``ex_window``      float16 [d, E, W]   its activation on the tokens around the example (NaN: outside the text)
``nb_index``       int32 [d, K]        decoder-cosine neighbours
``nb_cos``         float32 [d, K]      their cosines
``up_ids/up_val``  [d, L]              tokens whose logits ``W_dec[i] @ W_U`` raises most, and by how much
``down_ids/…val``  [d, L]              … lowers most (values negative)
=================  ==================  ==================================================================

Metadata: ``meta`` (JSON: key, SAE, model, weights hash, corpus version and counts, settings, timings) and
``vocab`` (JSON: the string of every token id the arrays name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.errors import LabError
from engine.features.cards import LogitEffect
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE
from engine.paths import cache_dir

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
"""Bumped whenever the arrays change meaning; part of the key."""


@dataclass(frozen=True)
class StoreConfig:
    """What a store holds per feature, and how the precompute walks the corpus."""

    n_top: int = 10
    """Top-activating examples."""
    n_quantile: int = 10
    """Examples sampled across activation quantiles: one drawn at random from each of this many equal rank bands."""
    before: int = 10
    """Tokens shown before an example's token."""
    after: int = 5
    """Tokens shown after it."""
    n_bins: int = 20
    """Histogram bins."""
    n_neighbours: int = 8
    """Decoder-cosine neighbours."""
    n_logits: int = 10
    """Top and bottom logit-effect tokens."""
    chunk_texts: int = 32
    """Texts per resumable chunk of the activation pass (a multiple of ``batch_size`` keeps batches identical)."""
    batch_size: int = 16
    """Texts per forward pass."""
    chunk_features: int = 1024
    """Features per resumable chunk of the decoder pass (neighbours and logit effects)."""
    seed: int = 0
    """Which example each quantile band gives."""

    @property
    def n_examples(self) -> int:
        return self.n_top + self.n_quantile

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def check(self) -> StoreConfig:
        for name in ("n_top", "n_bins", "n_logits", "chunk_texts", "batch_size", "chunk_features"):
            if getattr(self, name) < 1:
                raise LabError(f"feature-card setting {name} must be at least 1 (got {getattr(self, name)})")
        for name in ("n_quantile", "before", "after", "n_neighbours"):
            if getattr(self, name) < 0:
                raise LabError(f"feature-card setting {name} must be 0 or more (got {getattr(self, name)})")
        return self


# ------------------------------------------------------------------------------------------------ key and paths

_HASHES: dict[int, tuple[tuple, str]] = {}
_HASH_LOCK = threading.Lock()


def weights_hash(sae: LoadedSAE) -> str:
    """sha256 of the SAE's parameters (names, shapes and bytes); remembered until a tensor changes in place."""
    params = sorted(sae.sae.state_dict().items())
    stamp = tuple((k, v.data_ptr(), v._version, tuple(v.shape)) for k, v in params)
    with _HASH_LOCK:
        seen = _HASHES.get(id(sae.sae))
        if seen and seen[0] == stamp:
            return seen[1]
    h = hashlib.sha256()
    for k, v in params:
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[:16]
    with _HASH_LOCK:
        _HASHES[id(sae.sae)] = (stamp, digest)
    return digest


def store_key(lm: LoadedModel, sae: LoadedSAE, corpus_version: str, cfg: StoreConfig) -> str:
    """The hash that names a store (see the module docstring)."""
    # The source string is left out on purpose: aliases ("tiny" and "tiny:HOOK", "default" and "default:HOOK") load
    # the same SAE, and the hook + the weights' hash identify it exactly.
    ident = {"format": STORE_FORMAT, "hook": sae.hook_name, "weights": weights_hash(sae),
             "model": lm.name, "corpus": corpus_version, "cfg": asdict(cfg)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def store_dir() -> Path:
    path = cache_dir() / "feature_cards"
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_path(sae: LoadedSAE, key: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", sae.hook_name)[-80:].strip("._") or "sae"
    return store_dir() / f"{slug}-{key}.safetensors"


# ------------------------------------------------------------------------------------------------ cards


def visible_token(token: str) -> str:
    """A token as shown in a card: leading spaces as ``␣``, newlines as ``⏎``, tabs as ``⇥`` (empty: ``∅``)."""
    stripped = token.lstrip(" ")
    out = "␣" * (len(token) - len(stripped)) + stripped
    out = out.replace("\n", "⏎").replace("\t", "⇥")
    return out or "∅"


@dataclass(frozen=True)
class Example:
    """A corpus token where the feature fires, with its window of tokens and the feature's activation on each."""

    tokens: list[str]
    """Window tokens as decoded (not yet made visible: see :func:`visible_token`)."""
    activations: list[float]
    """The feature's activation on each window token."""
    center: int
    """Index of the example's token in ``tokens``."""
    activation: float
    text_index: int
    position: int
    """Token position in its text."""
    quantile: float
    """Rank among the feature's non-zero activations in the corpus (1 = its largest)."""


@dataclass(frozen=True)
class Neighbour:
    feature: int
    cosine: float


@dataclass(frozen=True)
class StoredCard:
    """One feature's card as read from the store."""

    feature: int
    density: float
    """Fraction of corpus tokens on which it fires."""
    mean_when_active: float
    max_activation: float
    n_tokens: int
    """Corpus tokens read (position 0 of each text excluded)."""
    hist_edges: list[float]
    """``n_bins + 1`` edges over [0, max_activation]."""
    hist_counts: list[int]
    top_examples: list[Example]
    quantile_examples: list[Example]
    """Sampled across activation quantiles, highest band first."""
    neighbours: list[Neighbour]
    top_logits: list[LogitEffect]
    bottom_logits: list[LogitEffect]


class CardStore:
    """A store opened for reading (the file stays closed between cards: one ``safe_open`` per card)."""

    def __init__(self, path: Path, expect_key: str | None = None) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                md = f.metadata() or {}
                self.meta = json.loads(md["meta"])
                vocab = json.loads(md["vocab"])
                self.corpus_ids = f.get_tensor("corpus_ids")
                self.text_offsets = f.get_tensor("text_offsets")
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise LabError(f"the feature-card store {self.path.name} cannot be read ({exc}); delete it to rebuild it") from None
        if self.meta.get("format") != STORE_FORMAT or (expect_key is not None and self.meta.get("key") != expect_key):
            raise LabError(f"the feature-card store {self.path.name} was made for other SAE weights, corpus or settings")
        self.vocab = {int(k): v for k, v in vocab.items()}
        self.d_sae = int(self.meta["d_sae"])
        self.cfg = StoreConfig(**self.meta["cfg"])

    def _token(self, i: int) -> str:
        return self.vocab.get(int(i), f"<{int(i)}>")

    def _example(self, g: int, value: float, quantile: float, window: list[float]) -> Example:
        offs = self.text_offsets
        t = int(torch.searchsorted(offs, torch.tensor([g]), right=True)[0]) - 1
        start, end = int(offs[t]), int(offs[t + 1])
        lo = g - self.cfg.before
        idx = [lo + j for j in range(self.cfg.window) if start <= lo + j < end]
        acts = [0.0 if window[i - lo] != window[i - lo] else float(window[i - lo]) for i in idx]
        return Example([self._token(self.corpus_ids[i]) for i in idx], acts, g - idx[0], value, t, g - start, quantile)

    def card(self, feature: int) -> StoredCard:
        """The card of ``feature``, read from the store only."""
        from safetensors import safe_open

        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < self.d_sae:
            raise LabError(f"feature index {feature!r} is out of range: this SAE has features 0..{self.d_sae - 1}")
        with safe_open(str(self.path), framework="pt") as f:
            row = {name: f.get_slice(name)[feature : feature + 1][0] for name in (
                "density", "mean_active", "max_act", "hist", "ex_token", "ex_value", "ex_quantile", "ex_window",
                "nb_index", "nb_cos", "up_ids", "up_val", "down_ids", "down_val")}
        examples = []
        for e in range(self.cfg.n_examples):
            g = int(row["ex_token"][e])
            examples.append(None if g < 0 else self._example(g, float(row["ex_value"][e]), float(row["ex_quantile"][e]),
                                                             row["ex_window"][e].float().tolist()))
        top = [x for x in examples[: self.cfg.n_top] if x is not None]
        quant = [x for x in examples[self.cfg.n_top :] if x is not None]
        peak = float(row["max_act"])
        bins = self.cfg.n_bins
        logits = lambda ids, vals: [LogitEffect(self._token(i), int(i), float(v)) for i, v in zip(ids, vals)]  # noqa: E731
        return StoredCard(
            feature, float(row["density"]), float(row["mean_active"]), peak, int(self.meta["n_tokens"]),
            [peak * b / bins for b in range(bins + 1)], [int(c) for c in row["hist"]], top, quant,
            [Neighbour(int(i), float(c)) for i, c in zip(row["nb_index"], row["nb_cos"]) if int(i) >= 0],
            logits(row["up_ids"], row["up_val"]), logits(row["down_ids"], row["down_val"]),
        )


def find_store(lm: LoadedModel, sae: LoadedSAE, corpus_version: str, cfg: StoreConfig | None = None) -> CardStore | None:
    """The store for exactly this SAE (weights), model, corpus and settings, or None when it is not computed yet."""
    cfg = (cfg or StoreConfig()).check()
    key = store_key(lm, sae, corpus_version, cfg)
    path = store_path(sae, key)
    if not path.is_file():
        return None
    return CardStore(path, expect_key=key)
