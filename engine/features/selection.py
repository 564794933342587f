"""Turning a direction ranking (``engine.features.direction``) into a clamp set: the top K features per SAE, or the
top K (SAE, feature) pairs overall (the paper keeps 20), in mode ``set`` (α × the feature's mean activation on
refusal-answer tokens) or ``multiply`` (factor m), with a warning where a multiply clamp would act on features that
are off."""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from typing import Literal

from engine.errors import LabError
from engine.features.direction import DirectionResult, FeatureRank
from engine.method.clamp import ClampSpec

logger = logging.getLogger(__name__)

SelectPer = Literal["sae", "overall"]
SelectMode = Literal["set", "multiply"]

DEFAULT_VALUES: dict[str, float] = {"set": 5.0, "multiply": 3.0}
"""``--value`` when none is given: α = 5 (the shipped layer-15 preset's) for set, m = 3 (the paper's) for multiply."""


@dataclass
class SelectionConfig:
    """Which ranked features become the clamp set, and how they are clamped."""

    top_k: int = 10
    """Features kept: per SAE (per=sae) or (SAE, feature) pairs over all SAEs (per=overall)."""
    per: SelectPer = "sae"
    """sae: the top K of each SAE; overall: the top K pairs across SAEs (the paper keeps 20)."""
    mode: SelectMode = "set"
    """set: z_i := value × mean activation on refusal-answer tokens; multiply: z_i := value × z_i."""
    value: float | None = None
    """α for set (default 5) or the factor m for multiply (default 3)."""
    inactive_ratio: float = 0.05
    """A feature counts as inactive where its mean activation is below this share of its refusal-token mean."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise LabError(f"--top-k must be at least 1, got {self.top_k}")
        if self.per not in typing.get_args(SelectPer):
            raise LabError(f"unknown selection {self.per!r}; choose sae or overall")
        if self.mode not in typing.get_args(SelectMode):
            raise LabError(f"unknown mode {self.mode!r} for a direction clamp; choose set or multiply")
        if self.value is None:
            self.value = DEFAULT_VALUES[self.mode]

    @property
    def resolved_value(self) -> float:
        return float(self.value if self.value is not None else DEFAULT_VALUES[self.mode])


@dataclass
class ClampSelection:
    """The chosen features as a clamp set, with the warnings that concern it."""

    specs: list[ClampSpec]
    chosen: list[tuple[str, FeatureRank]]
    """``(hook, row)`` of every chosen feature, in rank order."""
    config: SelectionConfig
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"top_k": self.config.top_k, "per": self.config.per, "mode": self.config.mode, "value": self.config.resolved_value,
                "clamps": [{"hook": s.hook_name, "features": s.features, "mode": s.mode, "values": [round(v, 4) for v in s.values]}
                           for s in self.specs],
                "warnings": list(self.warnings)}


def _key(row: FeatureRank) -> float:
    return row.attribution if row.attribution is not None else row.cosine


def inactive(row: FeatureRank, ratio: float = 0.05) -> bool:
    """Whether a feature is off where a multiply clamp would act: on the own answers and on the prompts."""
    floor = max(ratio * row.refusal_mean, 1e-6)
    return row.answer_mean < floor and row.prompt_mean < floor


def select_clamp(result: DirectionResult, cfg: SelectionConfig | None = None) -> ClampSelection:
    """The top-K features (per SAE, or pairs overall) of ``result`` as a clamp set, with warnings (also logged)."""
    cfg = cfg or SelectionConfig()
    value = cfg.resolved_value
    if cfg.per == "sae":
        chosen = [(rk, row) for rk in result.rankings for row in rk.rows[: cfg.top_k]]
    else:
        pool = [(rk, row) for rk in result.rankings for row in rk.rows]
        chosen = sorted(pool, key=lambda pair: _key(pair[1]), reverse=True)[: cfg.top_k]
    if not chosen:
        raise LabError("no features to choose: the ranking is empty")
    warnings: list[str] = []
    specs: list[ClampSpec] = []
    for rk in result.rankings:
        rows = [row for r, row in chosen if r is rk]
        if not rows:
            continue
        if cfg.mode == "set":
            values = [value * row.refusal_mean for row in rows]
            silent = [row.feature for row in rows if row.refusal_mean <= 0]
            if silent:
                warnings.append(f"{rk.hook}: features {silent} never fire on the refusal-answer tokens, so set mode clamps "
                                f"them to 0 (α × mean refusal activation)")
        else:
            values = [value] * len(rows)
            off = [row for row in rows if inactive(row, cfg.inactive_ratio)]
            if off:
                detail = ", ".join(f"{r.feature} (refusal {r.refusal_mean:.3g}, answers {r.answer_mean:.3g}, prompts {r.prompt_mean:.3g})"
                                   for r in off[:5])
                warnings.append(
                    f"{rk.hook}: {len(off)} of {len(rows)} chosen features are not active on the model's own answers or on "
                    f"the prompts (mean activation < {cfg.inactive_ratio:g} × their refusal-token mean), so multiply ×{value:g} "
                    f"leaves them unchanged where it acts; use the set mode (--mode set). E.g. {detail}")
        specs.append(ClampSpec(rk.sae, [row.feature for row in rows], cfg.mode, values))
    if len(specs) < len(result.rankings):
        unused = [rk.hook for rk in result.rankings if not any(s.sae is rk.sae for s in specs)]
        warnings.append(f"no feature of the SAE at {', '.join(unused)} made the top {cfg.top_k} overall")
    for w in warnings:
        logger.warning(w)
    return ClampSelection(specs, [(rk.hook, row) for rk, row in chosen], cfg, warnings)


def write_direction_clamp(path, result: DirectionResult, selection: ClampSelection, extra: dict | None = None):
    """Write the selection as a clamp file (``flips --clamp FILE.json``), with how it was chosen."""
    from engine.method.clamp_sets import write_clamp_file

    cfg = result.config
    note = (f"top {selection.config.top_k} {'per SAE' if selection.config.per == 'sae' else '(SAE, feature) pairs overall'} by "
            f"decoder cosine with the {cfg.source} difference-of-means refusal direction at layer {cfg.layer}"
            f"{', re-ranked by gradient × activation on the refusal log-prob' if cfg.rerank == 'grad-x-act' else ''}; "
            + (f"set to {selection.config.resolved_value:g} × mean refusal-token activation" if selection.config.mode == "set"
               else f"multiplied by {selection.config.resolved_value:g}"))
    meta = {"note": note, "direction": result.direction.to_json(), "selection": selection.to_json(),
            "ranking": result.to_json(top=selection.config.top_k)["saes"], "warnings": selection.warnings, **(extra or {})}
    return write_clamp_file(path, selection.specs, meta)


@dataclass
class DirectionSearch:
    """One direction search end to end: the ranking, the chosen clamp set and how many chats it was found on."""

    result: DirectionResult
    selection: ClampSelection
    refusal_pairs: int
    """(prompt, forced refusal) chats."""
    answer_pairs: int
    """(prompt, own answer) chats."""

    @property
    def warnings(self) -> list[str]:
        return [*self.result.warnings, *self.selection.warnings]


def search_direction_clamp(lm, saes, harmless: list[str], harmful: list[str], cfg=None, select: SelectionConfig | None = None,
                           max_new_tokens: int = 48) -> DirectionSearch:
    """The model answers ``harmless`` itself and refusals are forced (``contrast_pairs``); the direction ranks every SAE
    of ``saes`` (``rank_features``, with ``harmful`` for ``source="prompts"``) and the top K become a clamp set
    (``select_clamp``). What ``features direction`` and the dashboard's direction tab both run."""
    from engine.features.direction import rank_features
    from engine.features.search import contrast_pairs

    refusal_pairs, answer_pairs = contrast_pairs(lm, harmless, max_new_tokens=max_new_tokens)
    if not answer_pairs:
        raise LabError("the model refused (or left empty) every prompt, so there are no own answers to contrast with")
    result = rank_features(lm, list(saes), refusal_pairs, answer_pairs, cfg, harmful=harmful, harmless=harmless)
    return DirectionSearch(result, select_clamp(result, select), len(refusal_pairs), len(answer_pairs))
