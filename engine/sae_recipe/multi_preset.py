"""The shipped multi-layer clamp preset ``preset:default-multi``: part of the clamp at layer 15, part at layer 20.

Chosen with the same care as the layer-15 preset (``engine.sae_recipe.preset``):

1. **Candidates** per layer, best first, each with its mean activation on refusal-answer tokens:

   * ``contrast`` (default): the contrast rows that ``train`` recorded in each shipped SAE's ``preset.json`` (mean
     activation on refusal-answer minus ordinary-answer tokens of the training corpus, top 40);
   * ``direction``: the paper's selection (``engine.features.direction``): decoder cosine with the layer-15
     difference-of-means refusal direction, from forced refusals against the model's own answers (shipped in
     ``answers.json``) to the *training* harmless prompts.

2. **Grid** over (K₁₅, α₁₅, K₂₀, α₂₀), plus optional extra settings around its best: the top K of each layer clamped in ``set`` mode to α × their mean
   refusal-token activation, both layers at once. Each setting is measured on the 26 held-out validation prompts
   (``split_prompts(CorpusConfig())["heldout"]["harmless"]``, never the built-in or benchmark prompts), greedy, 64
   tokens, judged with the careful judge.

3. **Choice**: the most fluent refusals (refusal and not degenerate); ties: fewer degenerate texts, then the weaker
   clamp. The chosen setting is measured again with each layer's part alone (the ablation), which shows whether both
   layers carry part of the clamp.

Measurements are cached in ``--work`` (one JSON per setting), so a rerun or a larger grid skips what was measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE
from engine.method.clamp import ClampSpec
from engine.paths import DEFAULT_SAE_DIR
from engine.sae_recipe.preset import PresetConfig, measure

logger = logging.getLogger(__name__)

Candidates = Literal["contrast", "direction"]
LOW, HIGH = "blocks.15.hook_resid_post", "blocks.20.hook_resid_post"
"""The two shipped hooks the preset spans."""
NAME = "default-multi"
"""The preset's name (``preset:default-multi``)."""


@dataclass
class MultiPresetConfig:
    """The grid of the multi-layer preset and how each setting is measured (recorded in the preset)."""

    ks_15: tuple[int, ...] = (10, 15)
    """Numbers of layer-15 features K₁₅."""
    alphas_15: tuple[float, ...] = (3.0, 4.0)
    """Layer-15 value multipliers α₁₅ (× mean refusal-token activation)."""
    ks_20: tuple[int, ...] = (10, 20)
    """Numbers of layer-20 features K₂₀."""
    alphas_20: tuple[float, ...] = (2.0, 3.0)
    """Layer-20 value multipliers α₂₀."""
    extra: tuple[tuple[int, float, int, float], ...] = ()
    """Settings (K₁₅, α₁₅, K₂₀, α₂₀) measured besides the product grid (a refinement around its best)."""
    candidates: Candidates = "contrast"
    """contrast: the training-corpus contrast rows in each preset.json; direction: the layer-15 direction search."""
    max_new_tokens: int = 64
    """Answer length of each validation generation."""
    batch_size: int = 32
    """Prompts per generation batch."""

    def __post_init__(self) -> None:
        if self.candidates not in typing.get_args(Candidates):
            raise LabError(f"unknown candidates {self.candidates!r}; choose contrast or direction")
        for name in ("ks_15", "ks_20"):
            values = getattr(self, name)
            if not values or any(k < 1 for k in values):
                raise LabError(f"--{name.replace('_', '-')} needs positive feature counts, got {values}")
        for name in ("alphas_15", "alphas_20"):
            if not getattr(self, name) or any(a <= 0 for a in getattr(self, name)):
                raise LabError(f"--{name.replace('_', '-')} needs positive multipliers, got {getattr(self, name)}")
        for setting in self.extra:
            if len(setting) != 4 or setting[0] < 1 or setting[2] < 1 or setting[1] <= 0 or setting[3] <= 0:
                raise LabError(f"--extra settings are K15:A15:K20:A20 with positive numbers, got {setting}")

    def settings(self) -> list[dict]:
        """Every setting to measure: the product grid, then the extra ones not already in it."""
        out = [{"k_15": k15, "alpha_15": a15, "k_20": k20, "alpha_20": a20, "stage": "grid"}
               for k15 in self.ks_15 for a15 in self.alphas_15 for k20 in self.ks_20 for a20 in self.alphas_20]
        seen = {(s["k_15"], s["alpha_15"], s["k_20"], s["alpha_20"]) for s in out}
        for k15, a15, k20, a20 in self.extra:
            if (k15, a15, k20, a20) not in seen:
                seen.add((k15, a15, k20, a20))
                out.append({"k_15": int(k15), "alpha_15": float(a15), "k_20": int(k20), "alpha_20": float(a20), "stage": "extra"})
        return out

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Candidate:
    """A candidate feature of one layer and its mean activation on refusal-answer tokens."""

    feature: int
    refusal_mean: float


def contrast_candidates(hook: str, folder: Path = DEFAULT_SAE_DIR) -> list[Candidate]:
    """The contrast rows ``train`` recorded in ``HOOK/preset.json`` (training corpus), best first."""
    path = folder / hook / "preset.json"
    if not path.is_file():
        raise LabError(f"no {path}: the contrast candidates come from the shipped single-layer preset")
    rows = json.loads(path.read_text()).get("contrast") or []
    if not rows:
        raise LabError(f"{path} records no contrast rows")
    return [Candidate(int(r["feature"]), float(r["refusal_mean"])) for r in rows]


def direction_candidates(lm: LoadedModel, saes: Sequence[LoadedSAE], top: int = 40, seed: int = 0) -> list[list[Candidate]]:
    """Per SAE, the top features by decoder cosine with the layer-15 refusal direction (training prompts only)."""
    import random

    from engine.features.direction import DirectionConfig, rank_features
    from engine.sae_recipe.corpus import CorpusConfig, refusal_text, split_prompts

    answers = json.loads((DEFAULT_SAE_DIR / "answers.json").read_text())["answers"]
    prompts = [p for p in split_prompts(CorpusConfig())["train"]["harmless"] if answers.get(p)]
    rng = random.Random(seed)
    refusal_pairs = [(p, refusal_text(rng)) for p in prompts]
    answer_pairs = [(p, answers[p]) for p in prompts]
    result = rank_features(lm, saes, refusal_pairs, answer_pairs, DirectionConfig(layer=15, candidates=top))
    return [[Candidate(r.feature, r.refusal_mean) for r in rk.rows] for rk in result.rankings]


def specs_for(saes: dict[str, LoadedSAE], cands: dict[str, list[Candidate]], setting: dict) -> list[ClampSpec]:
    """The clamp of one grid setting: the top K of each layer, set to α × mean refusal activation."""
    out = []
    for hook, k_key, a_key in ((LOW, "k_15", "alpha_15"), (HIGH, "k_20", "alpha_20")):
        k, alpha = setting[k_key], setting[a_key]
        if k > len(cands[hook]):
            raise LabError(f"K={k} is more than the {len(cands[hook])} candidates at {hook}")
        rows = cands[hook][:k]
        out.append(ClampSpec(saes[hook], [c.feature for c in rows], "set", [round(alpha * c.refusal_mean, 4) for c in rows]))
    return out


def _measure_cached(lm: LoadedModel, specs: Sequence[ClampSpec], prompts: Sequence[str], pcfg: PresetConfig, work: Path | None) -> dict:
    key = hashlib.sha256(json.dumps([[s.to_json() for s in specs], list(prompts), pcfg.max_new_tokens]).encode()).hexdigest()[:16]
    path = work / f"multi-{key}.json" if work is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    t0 = time.time()
    result = {**measure(lm, specs, prompts, pcfg), "seconds": round(time.time() - t0, 1)}
    if path is not None:
        path.write_text(json.dumps(result))
    return result


def choose_multi_preset(lm: LoadedModel, saes: dict[str, LoadedSAE], validation: Sequence[str], cfg: MultiPresetConfig | None = None,
                        work: Path | None = None) -> dict:
    """The preset written to ``presets/default-multi.json``: the clamp rows and how they were chosen."""
    from engine.method.generation import GenerationConfig, generate
    from engine.method.judge import judge

    cfg = cfg or MultiPresetConfig()
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    if cfg.candidates == "contrast":
        cands = {hook: contrast_candidates(hook) for hook in (LOW, HIGH)}
    else:
        low, high = direction_candidates(lm, [saes[LOW], saes[HIGH]])
        cands = {LOW: low, HIGH: high}
    pcfg = PresetConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    base = [g.text for g in generate(lm, list(validation), GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size))]
    base_refusals = sum(judge(t).refusal for t in base)
    grid = []
    for setting in cfg.settings():
        result = _measure_cached(lm, specs_for(saes, cands, setting), validation, pcfg, work)
        grid.append({**setting, **{k: result[k] for k in ("refusals", "fluent_refusals", "degenerate", "n", "seconds")},
                     "examples": result["texts"][:2]})
        logger.info("multi %s K15=%d α15=%.1f K20=%d α20=%.1f: %d refusals, %d fluent, %d degenerate of %d (%.0f s)", setting["stage"],
                    setting["k_15"], setting["alpha_15"], setting["k_20"], setting["alpha_20"], result["refusals"],
                    result["fluent_refusals"], result["degenerate"], result["n"], result["seconds"])
    best = max(grid, key=lambda r: (r["fluent_refusals"], -r["degenerate"], -(r["alpha_15"] * r["k_15"] + r["alpha_20"] * r["k_20"])))
    setting = {k: best[k] for k in ("k_15", "alpha_15", "k_20", "alpha_20")}
    specs = specs_for(saes, cands, setting)
    chosen = _measure_cached(lm, specs, validation, pcfg, work)
    ablation = {}
    for i, hook in enumerate((LOW, HIGH)):
        alone = _measure_cached(lm, specs[i : i + 1], validation, pcfg, work)
        ablation[f"{hook} alone"] = {k: alone[k] for k in ("refusals", "fluent_refusals", "degenerate", "n")}
        logger.info("ablation %s alone: %d refusals, %d fluent, %d degenerate", hook, alone["refusals"], alone["fluent_refusals"],
                    alone["degenerate"])
    verdicts = [judge(t) for t in chosen["texts"]]
    examples = [{"prompt": p, "text": t, "fluent_refusal": v.fluent_refusal, "degenerate": v.degenerate}
                for p, t, v in zip(validation, chosen["texts"], verdicts)]
    note = (f"both shipped SAEs at once: the top {setting['k_15']} layer-15 and top {setting['k_20']} layer-20 {cfg.candidates} "
            f"features, set to {setting['alpha_15']}× / {setting['alpha_20']}× their mean refusal-token activation; "
            f"chosen on {len(validation)} held-out training prompts ({best['fluent_refusals']} fluent refusals, "
            f"{best['degenerate']} degenerate); see docs/DEFAULT_SAE.md")
    return {
        "clamps": [{"sae": f"default:{s.hook_name}", "hook": s.hook_name, "features": s.features, "mode": s.mode, "values": s.values}
                   for s in specs],
        "note": note,
        **setting,
        "candidates": cfg.candidates,
        "selection": {"validation_prompts": list(validation), "base_refusals": base_refusals, "grid": grid, "ablation": ablation,
                      "config": cfg.to_json(), "rule": "most fluent refusals; ties: fewer degenerate, then the weaker clamp",
                      "examples": examples},
    }
