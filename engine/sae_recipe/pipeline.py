"""The recipe's steps shared by ``train`` (the shipped SAEs) and ``ladder`` (the width ladder in the user cache).

:func:`prepare` builds the corpus and collects (or reads back) the activations once; :func:`build_sae` trains one
TopK SAE on them (or reads its cached checkpoint), serves it as JumpReLU, measures its held-out quality and chooses
its clamp preset. Heavy imports (torch, sae_lens, the model) happen inside the functions, so importing this module
is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import LabError

if TYPE_CHECKING:
    from torch import Tensor

    from engine.lm.models import LoadedModel
    from engine.sae_recipe.corpus import CorpusConfig
    from engine.sae_recipe.preset import PresetConfig
    from engine.sae_recipe.train import Collected, TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_HOOKS = ("blocks.15.hook_resid_post", "blocks.20.hook_resid_post")
"""Hooks of the shipped SAEs; their activations are always collected together."""
PRIMARY = DEFAULT_HOOKS[0]
CALIBRATION_POSITIONS = 60_000
"""Training positions on which the per-latent JumpReLU thresholds are matched."""

FLOORS = {"explained_variance_min": 0.7, "l0_min": 16, "l0_max": 64, "dead_fraction_max": 0.5}
"""Quality floors of a shipped SAE on held-out activations (checked by tests/test_default_sae.py)."""


def meets_floors(q: dict) -> bool:
    return (q["explained_variance"] >= FLOORS["explained_variance_min"] and FLOORS["l0_min"] <= q["l0"] <= FLOORS["l0_max"]
            and q["dead_fraction"] <= FLOORS["dead_fraction_max"])


def collected(lm: LoadedModel, convs, hooks, tcfg: TrainConfig, work: Path, key: str) -> Collected:
    """Activations of ``convs`` at ``hooks``, from the fp16 cache ``work/acts-KEY.pt`` when it exists."""
    import torch

    from engine.sae_recipe.train import Collected, collect

    path = work / f"acts-{key}.pt"
    if path.is_file():
        logger.info("activations from cache %s", path)
        raw = torch.load(path, weights_only=True)
        acts = {h.removeprefix("acts:"): v.float() for h, v in raw.items() if h.startswith("acts:")}
        return Collected(acts, raw["conv"], raw["pos"], raw["label"], raw["heldout"], json.loads(raw["stats"]))
    data = collect(lm, convs, hooks, tcfg)
    data.acts = {h: v.half().float() for h, v in data.acts.items()}  # the cache is fp16: a rerun must see the same data
    raw = {f"acts:{h}": v.half() for h, v in data.acts.items()}
    torch.save({**raw, "conv": data.conv, "pos": data.pos, "label": data.label, "heldout": data.heldout, "stats": json.dumps(data.stats)}, path)
    return data


@dataclass
class Prepared:
    """The corpus' activations and what every SAE trained on them shares."""

    data: Collected
    """Activations at every collected hook, with labels and the held-out mask."""
    key: str
    """Cache key of the activations (corpus settings, outlier factor, hooks)."""
    calib_idx: Tensor
    """Training positions used to match the JumpReLU thresholds."""
    validation: list[str]
    """Held-out harmless training prompts on which presets are measured."""


def prepare(lm: LoadedModel, ccfg: CorpusConfig, tcfg: TrainConfig, collect_hooks: list[str], work: Path, seed: int) -> Prepared:
    """Corpus (own answers cached in ``work/answers.json``), activations (cached) and the calibration sample."""
    import torch

    from engine.sae_recipe.corpus import build_corpus, split_prompts

    work.mkdir(parents=True, exist_ok=True)
    convs = build_corpus(lm, ccfg, answer_cache=work / "answers.json")
    key = hashlib.sha256(json.dumps([ccfg.to_json(), tcfg.outlier_factor, collect_hooks]).encode()).hexdigest()[:12]
    data = collected(lm, convs, collect_hooks, tcfg, work, key)
    gen = torch.Generator().manual_seed(seed)
    train_idx = torch.nonzero(~data.heldout).squeeze(1)
    calib_idx = train_idx[torch.randperm(len(train_idx), generator=gen)[:CALIBRATION_POSITIONS]]
    return Prepared(data, key, calib_idx, split_prompts(ccfg)["heldout"]["harmless"])


def prepare_for(lm: LoadedModel, model: str, hook: str, ccfg: CorpusConfig, tcfg: TrainConfig, work: Path, seed: int) -> Prepared:
    """:func:`prepare` for an SAE at ``hook`` (``ladder`` and ``variants``): a clear error when the model has no such
    hook; the default model always collects its shipped hooks too, so the activation cache is ``train``'s."""
    if hook not in lm.model.hook_dict:
        raise LabError(f"model {lm.name} has no hook {hook!r}")
    collect_hooks = sorted(set(DEFAULT_HOOKS) | {hook}) if model == "default" else [hook]
    return prepare(lm, ccfg, tcfg, collect_hooks, work, seed)


@dataclass
class BuiltSAE:
    """One trained, served and measured SAE."""

    served: Any
    """The sae_lens ``JumpReLUSAE`` to write."""
    quality: dict
    """``quality.json``: held-out quality of the served SAE, the serving report, floors, timings."""
    preset: dict
    """``preset.json``: the clamp chosen by ``preset.choose_preset``."""


def build_sae(lm: LoadedModel, prep: Prepared, hook: str, tcfg: TrainConfig, pcfg: PresetConfig, work: Path) -> BuiltSAE:
    """Train (or read the cached TopK checkpoint), serve as JumpReLU, measure, choose the preset."""
    from sae_lens.saes.topk_sae import TopKSAE

    from engine.lm.saes import LoadedSAE
    from engine.sae_recipe.corpus import ANSWER, REFUSAL
    from engine.sae_recipe.preset import choose_preset
    from engine.sae_recipe.serve import serve_as_jumprelu
    from engine.sae_recipe.train import train_topk

    t0 = time.time()
    data, x = prep.data, prep.data.acts[hook]
    ckpt = work / f"topk-{prep.key}-{hashlib.sha256(json.dumps([hook, tcfg.to_json()]).encode()).hexdigest()[:12]}"
    train_seconds = None
    if not (ckpt / "cfg.json").is_file():
        t_train = time.time()
        train_topk(x[~data.heldout], hook, tcfg, model_name=lm.name).save_model(str(ckpt))
        train_seconds = round(time.time() - t_train, 1)
    else:
        logger.info("trained TopK SAE from cache %s", ckpt)
    topk = TopKSAE.load_from_disk(str(ckpt))  # the same object whether just trained or cached
    served, report = serve_as_jumprelu(topk, x[prep.calib_idx], x[data.heldout], tcfg.k)
    if tcfg.refit_decoder:  # recipe v2: the decoder refit to the served codes (same gates, so zero drift still holds)
        from engine.sae_recipe.serve import quality, refit_decoder

        report["refit"] = refit_decoder(served, x[~data.heldout])
        report["refit_heldout"] = quality(served, x[data.heldout])
    loaded = LoadedSAE(served, f"default:{hook}", hook)
    mask = ~data.heldout
    preset = choose_preset(lm, loaded, x[mask & (data.label == REFUSAL)], x[mask & (data.label == ANSWER)], prep.validation, pcfg)
    q = report.get("refit_heldout") or report[f"jumprelu_{report['served']}_heldout"]
    quality = {"heldout": q, **report, "floors": FLOORS, "meets_floors": meets_floors(q), "train_seconds": round(time.time() - t0, 1)}
    if train_seconds is not None:
        quality["topk_train_seconds"] = train_seconds
    return BuiltSAE(served, quality, preset)
