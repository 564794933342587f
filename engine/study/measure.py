"""Per-SAE measurements of the study: a clamp preset and the SAE's quality (docs/STUDY.md).

* :func:`choose_study_preset`: the SAE's own ``preset.json`` (``preset="auto"``, when it has one) or the recipe's search
  (``engine.sae_recipe.preset.choose_preset``) on the recipe's held-out harmless prompts, with the refusal / ordinary
  answer activations of ``engine.features.search.contrast_pairs`` (forced refusals in our phrasings, the model's own
  answers) in place of the training corpus' labelled tokens.
* :func:`sae_quality`: the SAE's ``quality.json`` when it has one, else explained variance, L0 and dead fraction
  measured on held-out activations: the run's prompts with their base answers, position 0 (the attention sink) left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE, hook_layer
from engine.method.presets import sae_folder
from engine.study.config import StudyConfig

logger = logging.getLogger(__name__)


@dataclass
class Quality:
    """Quality numbers of one SAE and where they come from."""

    explained_variance: float
    l0: float
    dead_fraction: float
    source: str
    """``quality.json`` or ``measured``."""
    n_tokens: int | None = None
    """Tokens they were measured on (None: not recorded)."""

    def to_json(self) -> dict:
        return {"explained_variance": self.explained_variance, "l0": self.l0, "dead_fraction": self.dead_fraction,
                "quality_source": self.source, "quality_tokens": self.n_tokens}


def quality_from_report(report: dict | None) -> Quality | None:
    """A quality report (``quality.json``: flat, or with the recipe's ``heldout`` block) as :class:`Quality`."""
    if not isinstance(report, dict):
        return None
    block = report.get("heldout") if isinstance(report.get("heldout"), dict) else report
    try:
        return Quality(float(block["explained_variance"]), float(block["l0"]), float(block["dead_fraction"]),
                       "quality.json", int(block["n_tokens"]) if block.get("n_tokens") is not None else None)
    except (KeyError, TypeError, ValueError):
        return None


def shipped_quality(sae: LoadedSAE) -> Quality | None:
    folder = sae_folder(sae)
    path = folder / "quality.json" if folder else None
    if path is None or not path.is_file():
        return None
    try:
        return quality_from_report(json.loads(path.read_text()))
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; measuring quality instead", path)
        return None


@torch.no_grad()
def hook_residuals(lm: LoadedModel, hook: str, sequences: Sequence[list[int]], starts: Sequence[int],
                   batch_size: int = 16) -> Float[Tensor, "n_tokens d_model"]:
    """Activations at ``hook`` of the tokens ``sequence[start:]`` of each sequence, stacked (float32, on CPU)."""
    stop = hook_layer(hook) + 1
    rows: list[Tensor] = []
    for first in range(0, len(sequences), batch_size):
        chunk = [list(s) for s in sequences[first : first + batch_size]]
        batch = lm.batch(chunk)
        seen: list[Tensor] = []
        with lm.lock:
            lm.model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop,
                                    fwd_hooks=[(hook, lambda act, hook, seen=seen: seen.append(act.detach()))])
        width = batch.tokens.shape[1]
        for i, seq in enumerate(chunk):
            start = max(1, int(starts[first + i]))  # never position 0: the attention sink
            if len(seq) > start:
                rows.append(seen[0][i, width - len(seq) + start :].float().cpu())
    if not rows:
        raise LabError(f"no tokens to read at {hook}")
    return torch.cat(rows)


def chat_ids(lm: LoadedModel, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the chat ``prompt`` followed by ``answer``, and where the answer starts."""
    head = lm.encode(lm.chat_prompt(prompt))
    sep = "" if lm.has_chat_template else " "
    return head + lm.encode_answer(sep + answer), len(head)


def answer_residuals(lm: LoadedModel, hook: str, pairs: Sequence[tuple[str, str]]) -> Float[Tensor, "n_tokens d_model"]:
    """Activations at ``hook`` on the answer tokens of (prompt, answer) chats."""
    if not pairs:
        raise LabError("no (prompt, answer) pairs to read activations from")
    encoded = [chat_ids(lm, p, a) for p, a in pairs]
    return hook_residuals(lm, hook, [ids for ids, _ in encoded], [s for _, s in encoded])


@torch.no_grad()
def measure_quality(sae: LoadedSAE, x: Float[Tensor, "n_tokens d_model"], chunk: int = 4096) -> Quality:
    """Explained variance (1 − SSE/SST), mean L0 and dead fraction of ``sae`` on the activations ``x`` (the recipe's
    own definitions: :func:`engine.sae_recipe.serve.quality`)."""
    from engine.sae_recipe.serve import quality

    if x.shape[0] < 2:
        raise LabError("measuring an SAE's quality needs at least two tokens")
    q = quality(sae.sae, x.to(sae.W_dec.device, sae.W_dec.dtype), chunk)
    return Quality(q["explained_variance"], q["l0"], q["dead_fraction"], "measured", q["n_tokens"])


def sae_quality(lm: LoadedModel, sae: LoadedSAE, flips: Sequence[dict], given: dict | None = None) -> Quality:
    """``given`` (a ladder entry's report), else the SAE's ``quality.json``, else measured on ``flips``' prompts and
    base answers (the run's records)."""
    known = quality_from_report(given) or shipped_quality(sae)
    if known is not None:
        return known
    pairs = [(r["prompt"], r["base_text"]) for r in flips]
    encoded = [chat_ids(lm, p, a) for p, a in pairs]
    x = hook_residuals(lm, sae.hook_name, [ids for ids, _ in encoded], [1] * len(encoded))
    return measure_quality(sae, x)


def validation_prompts(cfg: StudyConfig) -> list[str]:
    """The recipe's held-out harmless prompts (never a test set), the first ``cfg.preset_prompts`` of them."""
    from engine.sae_recipe.corpus import CorpusConfig, split_prompts

    prompts = split_prompts(CorpusConfig())["heldout"]["harmless"]
    return prompts[: cfg.preset_prompts] if cfg.preset_prompts else prompts


@dataclass
class ContrastData:
    """Residuals at one hook on refusal-answer and ordinary-answer tokens, shared by every SAE at that hook."""

    refusal_x: Float[Tensor, "n_ref d_model"]
    answer_x: Float[Tensor, "n_ans d_model"]


def contrast_data(lm: LoadedModel, hook: str, prompts: Sequence[str]) -> ContrastData:
    from engine.features.search import contrast_pairs

    refusal_pairs, answer_pairs = contrast_pairs(lm, list(prompts))
    if not answer_pairs:
        raise LabError("the model refused every validation prompt, so the preset search has no ordinary answers to contrast")
    return ContrastData(answer_residuals(lm, hook, refusal_pairs), answer_residuals(lm, hook, answer_pairs))


def choose_study_preset(lm: LoadedModel, sae: LoadedSAE, cfg: StudyConfig, contrast: dict[str, ContrastData]) -> dict:
    """The preset dict for ``sae`` (``features``, ``mode``, ``values``, ``k``, ``alpha``, ``preset_source``).

    ``contrast``: per-hook cache of :class:`ContrastData`, filled on first use.
    """
    from engine.method.presets import load_preset
    from engine.sae_recipe.preset import PresetConfig, choose_preset

    folder = sae_folder(sae) if cfg.preset == "auto" else None
    path = folder / "preset.json" if folder is not None else None
    if path is not None and path.is_file():
        spec = load_preset(path, sae)
        data = json.loads(path.read_text())
        return {"features": spec.features, "mode": spec.mode, "values": spec.values, "hook": sae.hook_name,
                "k": len(spec.features), "alpha": data.get("alpha"), "preset_source": "preset.json", "path": str(path)}
    prompts = validation_prompts(cfg)
    if sae.hook_name not in contrast:
        contrast[sae.hook_name] = contrast_data(lm, sae.hook_name, prompts)
    data = contrast[sae.hook_name]
    pcfg = PresetConfig(ks=tuple(int(k) for k in cfg.preset_ks), alphas=tuple(float(a) for a in cfg.preset_alphas),
                        max_new_tokens=cfg.preset_max_new_tokens)
    if max(pcfg.ks) > sae.d_sae:
        raise LabError(f"the preset search's K = {max(pcfg.ks)} exceeds the SAE's {sae.d_sae} latents ({sae.source})")
    preset = choose_preset(lm, sae, data.refusal_x, data.answer_x, prompts, pcfg)
    return {**preset, "preset_source": "search"}
