"""Choosing the default clamp preset of a trained SAE by measurement.

1. Contrast search (``engine.features.search.contrast_from_activations``) on the corpus' answer tokens: refusal-answer
   positions against ordinary-answer positions.
2. For each (K, α) in a small grid, clamp the top-K features in ``set`` mode to α × their mean activation on
   refusal-answer tokens, generate greedy answers (64 tokens, as ``flips`` does) to *validation* prompts — the
   held-out part of our own harmless list, never the built-in test sets — and judge them with the careful judge.
3. Keep the setting with the most fluent refusals (ties: fewer degenerate answers, then the weaker clamp).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import Tensor

from engine.features.search import ContrastRow, contrast_from_activations
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import judge

logger = logging.getLogger(__name__)


@dataclass
class PresetConfig:
    """Grid and validation settings (recorded in the manifest)."""

    ks: tuple[int, ...] = (10, 15)
    alphas: tuple[float, ...] = (3.0, 5.0)
    max_new_tokens: int = 64
    batch_size: int = 32
    candidates: int = 40
    """Contrast rows kept in preset.json for reference."""

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def encode_all(sae: LoadedSAE, x: Tensor, chunk: int = 4096) -> Tensor:
    import torch

    with torch.no_grad():
        return torch.cat([sae.encode(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])


def measure(lm: LoadedModel, spec: ClampSpec | Sequence[ClampSpec], prompts: Sequence[str], cfg: PresetConfig) -> dict:
    """Fluent / degenerate refusals of the clamped model on ``prompts`` (one clamp or a clamp set across layers), with
    two example texts and every text (``texts``)."""
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    specs = [spec] if isinstance(spec, ClampSpec) else list(spec)
    texts = [g.text for g in generate(lm, list(prompts), gen, specs=specs)]
    verdicts = [judge(t) for t in texts]
    return {
        "refusals": sum(v.refusal for v in verdicts),
        "fluent_refusals": sum(v.fluent_refusal for v in verdicts),
        "degenerate": sum(v.degenerate for v in verdicts),
        "n": len(texts),
        "examples": texts[:2],
        "texts": texts,
    }


def choose_preset(
    lm: LoadedModel, sae: LoadedSAE, refusal_x: Tensor, answer_x: Tensor, validation: Sequence[str], cfg: PresetConfig | None = None
) -> dict:
    """The preset dict written to ``preset.json`` (features, mode, values, hook, note, and how it was chosen)."""
    cfg = cfg or PresetConfig()
    ref_z, ans_z = encode_all(sae, refusal_x), encode_all(sae, answer_x)
    rows: list[ContrastRow] = contrast_from_activations(ref_z, ans_z, top_n=max(cfg.candidates, max(cfg.ks)))
    logger.info("contrast top 5: %s", [(r.feature, round(r.refusal_mean, 2), round(r.answer_mean, 2)) for r in rows[:5]])
    base = [g.text for g in generate(lm, list(validation), GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size))]
    base_refusals = sum(judge(t).refusal for t in base)
    grid = []
    for k in cfg.ks:
        feats = [r.feature for r in rows[:k]]
        for alpha in cfg.alphas:
            t0 = time.time()
            spec = ClampSpec(sae, feats, "set", [alpha * rows[i].refusal_mean for i in range(k)])
            measured = measure(lm, spec, validation, cfg)
            result = {"k": k, "alpha": alpha, **{key: v for key, v in measured.items() if key != "texts"}}
            grid.append(result)
            logger.info("preset grid K=%d α=%.1f: %d fluent refusals, %d degenerate of %d (%.0f s)", k, alpha,
                        result["fluent_refusals"], result["degenerate"], result["n"], time.time() - t0)
    best = max(grid, key=lambda r: (r["fluent_refusals"], -r["degenerate"], -r["alpha"] * r["k"]))
    k, alpha = best["k"], best["alpha"]
    return {
        "features": [r.feature for r in rows[:k]],
        "mode": "set",
        "values": [round(alpha * r.refusal_mean, 4) for r in rows[:k]],
        "hook": sae.hook_name,
        "note": (f"top {k} refusal features by contrast search (refusal-answer minus ordinary-answer tokens), set to "
                 f"{alpha}× their mean refusal activation; chosen on {len(validation)} held-out training prompts"),
        "k": k,
        "alpha": alpha,
        "selection": {"validation_prompts": list(validation), "base_refusals": base_refusals, "grid": grid, "config": cfg.to_json()},
        "contrast": [asdict(r) for r in rows[: cfg.candidates]],
    }
