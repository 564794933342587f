"""Settings of the SAE-quality study and the columns of its table (docs/STUDY.md).

The study runs, for each SAE: a clamp preset (the recipe's search, or the SAE's own ``preset.json``), flips on the
prompts of one existing flips run, encoder recovery with δ at the SAE's layer, and attribution. Each row of the table
is one SAE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.attribution.components import COMPONENTS
from engine.errors import LabError

PresetChoice = Literal["auto", "search"]


@dataclass
class StudyConfig:
    """What every SAE of one study is run with (saved in ``study_config.json``; a resume must match it)."""

    preset: PresetChoice = "auto"
    """auto: the SAE's own preset.json when it has one, else the recipe's search; search: always search."""
    preset_ks: tuple[int, ...] = (10, 15)
    """Preset search grid: numbers of top contrast features K (engine.sae_recipe.preset)."""
    preset_alphas: tuple[float, ...] = (3.0, 5.0)
    """Preset search grid: value multipliers α (each feature set to α × its mean refusal activation)."""
    preset_prompts: int | None = None
    """Validation prompts of the search (the recipe's held-out harmless prompts; None: all of them)."""
    preset_max_new_tokens: int = 64
    """Answer length of the search's validation generations."""
    limit: int | None = None
    """Use the first N prompts of the flips run (None: all)."""
    top_k: int = 10
    """k of the attribution's top-k component."""
    recovery: dict = field(default_factory=dict)
    """The recovery settings (RecoveryConfig.to_json(); projection and δ layer are set per SAE)."""

    def check(self) -> StudyConfig:
        if self.preset not in ("auto", "search"):
            raise LabError(f"the preset choice must be auto or search, got {self.preset!r}")
        if not self.preset_ks or any(int(k) < 1 for k in self.preset_ks):
            raise LabError(f"the preset search needs numbers of features K ≥ 1, got {list(self.preset_ks)}")
        if not self.preset_alphas or any(not a > 0 for a in self.preset_alphas):
            raise LabError(f"the preset search needs value multipliers α > 0, got {list(self.preset_alphas)}")
        if self.preset_prompts is not None and self.preset_prompts < 1:
            raise LabError(f"the preset search needs at least 1 validation prompt, got {self.preset_prompts}")
        if self.limit is not None and self.limit < 1:
            raise LabError(f"the prompt limit must be at least 1, got {self.limit}")
        if self.top_k < 0:
            raise LabError(f"top-k must be ≥ 0, got {self.top_k}")
        return self

    @classmethod
    def from_json(cls, data: dict) -> StudyConfig:
        """The settings saved in ``study_config.json`` (lists back to tuples)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("preset_ks", "preset_alphas"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_json(self) -> dict:
        return {"preset": self.preset, "preset_ks": [int(k) for k in self.preset_ks],
                "preset_alphas": [float(a) for a in self.preset_alphas], "preset_prompts": self.preset_prompts,
                "preset_max_new_tokens": self.preset_max_new_tokens, "limit": self.limit, "top_k": self.top_k,
                "recovery": self.recovery}


PARTS = tuple(c for c in COMPONENTS if c != "full")
"""The parts of δ replayed alone (engine.attribution.components), besides the full δ."""

COLUMNS: dict[str, str] = {
    "sae": "the SAE's spec (what --sae takes)",
    "name": "a short name (the ladder's name, or the spec)",
    "hook": "the hook it reads",
    "d_sae": "number of latents",
    "k": "TopK k the SAE was trained with, when known (else empty)",
    "explained_variance": "held-out explained variance 1 − SSE/SST",
    "l0": "mean number of active latents per token",
    "dead_fraction": "share of latents that never fire on the held-out tokens",
    "quality_source": "quality.json (the SAE's own report) or measured (on the run's prompts + base answers)",
    "quality_tokens": "tokens the quality numbers are measured on",
    "preset_source": "preset.json (the SAE's own) or search (the recipe's search, run by the study)",
    "clamp_k": "features clamped",
    "clamp_alpha": "α of the chosen preset (× mean refusal activation), when known",
    "run": "the flips run of this SAE (in the run store)",
    "recovery": "its recovery record",
    "n_prompts": "prompts flipped",
    "n_valid_flips": "valid flips (base answers, clamped refuses)",
    "recovered": "non-refusal recovery rate of the encoder recovery (of the valid flips)",
    "mean_drift": "mean defended-feature drift of the recovery",
    **{f"share_{p}": f"share of valid flips restored (non-refusal) by replaying the {p.replace('_', '-')} part alone"
       for p in ("full", *PARTS)},
    **{f"gain_{p}": f"mean base-answer log-prob gain of the {p.replace('_', '-')} part replayed alone"
       for p in ("full", *PARTS)},
    "status": "done; no valid flips (nothing to recover); cancelled (stopped during its steps); not started",
    "wall_seconds": "wall time of this SAE's steps (preset, quality, flips, recovery, attribution), summed over resumes",
}
"""Every column of ``study.json`` / ``study.csv``, in order, with its meaning (docs/STUDY.md)."""
