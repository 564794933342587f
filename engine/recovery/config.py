"""Settings, per-step events and per-prompt results of recovery."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field
from typing import Literal

from engine.errors import FieldError
from engine.method.judge import JudgeConfig, base_likeness, judge

Projection = Literal["encoder", "none", "jacobian"]
Method = Literal["delta", "soft-suffix"]
Where = Literal["prompt", "prompt+gen"]
BudgetKind = Literal["per_position", "matrix"]
JacobianBasis = Literal["probes", "adaptive", "exact"]
Correction = Literal["adam", "gauss-newton"]


@dataclass
class RecoveryConfig:
    """How δ is optimised. Defaults are the ones documented in docs/RECOVERY.md."""

    projection: Projection = "encoder"
    """``encoder``: δ ⟂ W_enc[:, S] of the clamps at δ's layer (refused when clamps lie above it); ``jacobian``: that,
    plus the later clamps' Jacobian row space removed from the recovery gradient, an unprojected drift penalty and
    drift-correction steps (the paper's cross-layer scheme); ``none``: the unconstrained baseline."""
    method: Method = "delta"
    """``delta``: a residual perturbation; ``soft-suffix``: optimise k appended soft-token embeddings instead."""
    where: Where = "prompt+gen"
    """``prompt``: one row per prompt position; ``prompt+gen``: plus one shared row at every answer position."""
    budget: float = 40.0
    """Norm bound of δ (see ``budget_kind``/``budget_relative``); the paper's main refusal runs use 40."""
    budget_kind: BudgetKind = "per_position"
    """``per_position``: every row ‖δ_t‖ ≤ B; ``matrix``: ‖δ‖_F ≤ B over all rows."""
    budget_relative: bool = field(default=False, metadata={"aliases": ("--relative",)})
    """True: B is a fraction of the median residual norm at the δ layer (position 0 excluded); False: absolute."""
    steps: int = 60
    """Optimisation steps in total (boundary + answer stage)."""
    boundary_steps: int = 0
    """Steps of the boundary stage (reward a non-refusal first token) before the answer stage."""
    lr: float = 0.1
    """Adam learning rate (the paper uses 0.03–0.1)."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """Learning-rate schedule over the steps."""
    answer_weight: float = 5.0
    """Weight of the answer log-likelihood term in the answer stage."""
    answer_tokens: int = 48
    """How many tokens of the base model's answer are teacher-forced."""
    drift_threshold: float | None = None
    """The kept δ is the lowest-loss one among steps whose drift is at most this. None: 0.05 for the constrained
    methods, no threshold for the unconstrained baseline (``none``), whose drift is what it reports."""
    delta_layer: int | None = None
    """Layer whose resid_post carries δ (default: the lowest clamped layer, so attribution has an SAE there)."""
    drift_penalty: float | None = None
    """λ of the drift penalty λ·‖Δz‖²/‖z_def‖² over the clamps above δ, added to the loss with its gradient
    unprojected. None: 200 (the paper's λ_act) with ``jacobian``, 0 otherwise."""
    penalty_schedule: Literal["fixed", "adaptive"] = "fixed"
    """With clamps above δ and a drift penalty > 0 (by default only ``jacobian`` has one): ``fixed`` λ (the paper's),
    or ``adaptive``: each prompt's λ is multiplied by penalty_growth after
    a step whose held drift exceeds the drift threshold and divided by it (never below the drift penalty) after one
    within it — a per-prompt multiplier that finds the λ the threshold needs (a stronger variant than the paper's)."""
    penalty_growth: float = 2.0
    """``adaptive``: the factor (> 1) by which a prompt's λ grows or shrinks per step."""
    constraint_positions: Literal["all", "answer"] = "answer"
    """Positions whose drift the constraint holds (the penalty, the Jacobian basis, the corrections and keep-best's
    threshold): ``all`` non-sink positions, prompt and answer (stricter), or ``answer`` positions only (the paper's
    pooling). Every drift is reported both ways whatever this is."""
    later_encoder_prior: bool = False
    """``jacobian``: also keep δ orthogonal to the later clamps' encoder columns W_enc(ℓ₂)[:, S₂]. The residual stream
    carries δ to their layer unchanged, so this removes the direct path exactly; the probes, the penalty and the
    corrections handle what the blocks in between add (a stronger variant than the paper's)."""
    jacobian_basis: JacobianBasis = "probes"
    """``jacobian``: ``probes``: n_probes random probes + the drift probe (the paper's 8 + 1); ``adaptive``: add blocks
    of n_probes until a new block adds less than probe_tol of its energy outside the basis (up to max_probes);
    ``exact``: every row of the Jacobian from batched VJPs (|S|·T of them per estimate)."""
    n_probes: int = 8
    """``jacobian``: random probes per estimate (per block, for ``adaptive``) of the row space of ∂z_S(later)/∂δ."""
    max_probes: int = 64
    """``jacobian`` + ``adaptive``: the most probes one estimate may use."""
    probe_tol: float = 0.1
    """``jacobian`` + ``adaptive``: stop adding probes when a new block's energy outside the basis is below this share."""
    probe_every: int = 5
    """``jacobian`` + ``adam`` corrections: re-estimate the row space every this many steps (the paper: 1; 5 with 2
    corrections keeps a step at 2.0× the encoder step, the paper's cadence costs 4.3×: bench/recovery_step.py). With
    ``gauss-newton`` the row space is estimated once, at δ = 0: the restoration holds the constraint every step, and
    re-estimating the probes would only add their VJPs to each step."""
    correction_steps: int = 6
    """``jacobian``: drift corrections after every step: at most this many Gauss–Newton restorations (fewer when the
    held drift is already under ``restore_below`` × the threshold; 6: at 3 the hardest AdvBench flip of the first 24
    was never held past step 2, at 6 it was held and recovered, docs/CROSS_LAYER_LOG.md), or this many Adam steps on the
    relative drift alone (the paper: 5 Adam steps)."""
    correction_lr: float = 0.05
    """``jacobian``: learning rate of the drift-correction steps (the paper: 0.05)."""
    correction: Correction = "gauss-newton"
    """``jacobian``: how the drift is corrected after each step: ``adam`` steps on the relative drift (the paper's), or
    ``gauss-newton``: correction_steps iterations of the smallest δ change that cancels the later clamps' drift to
    first order, c = Aᵀ(AAᵀ + μI)⁻¹r solved by conjugate gradients (a stronger variant: engine/recovery/restoration.py)."""
    cg_iters: int = 8
    """``jacobian`` + ``gauss-newton``: conjugate-gradient iterations per Gauss–Newton iteration."""
    restore_below: float = 0.5
    """``jacobian`` + ``gauss-newton``: restore a prompt only while its held drift is above this fraction of the drift
    threshold, and stop the iterations when no prompt's is (0: always run correction_steps iterations)."""
    gn_damping: float = 1e-3
    """``jacobian`` + ``gauss-newton``: damping μ as a fraction of the Rayleigh quotient rᵀAAᵀr/rᵀr. 1e-3 (nearly plain
    Gauss–Newton): with ≤ 6 iterations it held and recovered the two harmless flips that ≤ 3 never held, and 0.1 (the
    default of stops 21–22) lost AdvBench flips 2, 6 and 12 that 1e-3 recovered (docs/CROSS_LAYER_LOG.md, stop 22)."""
    gn_damping_decay: float = 1.0
    """``jacobian`` + ``gauss-newton``: each further restoration within a step multiplies the damping by this
    (Levenberg–Marquardt: a prompt still not held after a damped iteration gets a step nearer plain Gauss–Newton);
    1 keeps it constant: 0.1 lost the flip that 6 constant iterations recovered (docs/CROSS_LAYER_LOG.md)."""
    suffix_tokens: int = 8
    """``soft-suffix``: number of soft tokens appended to the instruction."""
    batch_size: int = 4
    """Prompts optimised together (results equal one-by-one runs)."""
    max_new_tokens: int = 64
    """Length of the recovered generation."""
    seed: int = 0
    """Seed of δ's initialisation and of the Jacobian probes."""
    extra: dict = field(default_factory=dict)
    """Free-form notes saved with the run (not a command-line option)."""

    def __post_init__(self) -> None:
        self.check()

    @staticmethod
    def check_field(name: str, value):
        """``value`` if it is allowed for the number field ``name``, else a :class:`~engine.errors.FieldError` whose
        message names the field in words (:data:`FIELD_LABELS`); the command line prefixes its option."""
        return check_field(name, value)

    def check(self) -> None:
        """Every field on its own (:func:`check_field`), then the rules that tie two fields together. Raises a
        :class:`~engine.errors.FieldError` naming the first bad field."""
        if self.projection not in typing.get_args(Projection):
            raise FieldError("projection", f"unknown projection {self.projection!r}; choose encoder, none or jacobian")
        if self.method not in typing.get_args(Method):
            raise FieldError("method", f"unknown method {self.method!r}; choose delta or soft-suffix")
        if self.where not in typing.get_args(Where):
            raise FieldError("where", f"unknown --where {self.where!r}; choose prompt or prompt+gen")
        if self.budget_kind not in typing.get_args(BudgetKind):
            raise FieldError("budget_kind", f"unknown budget kind {self.budget_kind!r}; choose per_position or matrix")
        if self.jacobian_basis not in typing.get_args(JacobianBasis):
            raise FieldError("jacobian_basis", f"unknown Jacobian basis {self.jacobian_basis!r}; choose probes, adaptive or exact")
        if self.penalty_schedule not in ("fixed", "adaptive"):
            raise FieldError("penalty_schedule", f"unknown penalty schedule {self.penalty_schedule!r}; choose fixed or adaptive")
        if self.correction not in typing.get_args(Correction):
            raise FieldError("correction", f"unknown correction {self.correction!r}; choose adam or gauss-newton")
        if self.constraint_positions not in ("all", "answer"):
            raise FieldError("constraint_positions", f"unknown constraint positions {self.constraint_positions!r}; choose all or answer")
        for name in FIELD_RULES:
            setattr(self, name, check_field(name, getattr(self, name)))  # 3.0 steps → 3, a budget of 40 → 40.0
        if self.penalty_growth <= 1:
            raise FieldError("penalty_growth", f"the penalty growth factor must be greater than 1, got {self.penalty_growth}")
        if self.boundary_steps > self.steps:
            raise FieldError("boundary_steps", f"boundary steps must be between 0 and steps ({self.steps}), got {self.boundary_steps}")

    @property
    def effective_drift_threshold(self) -> float:
        if self.drift_threshold is not None:
            return self.drift_threshold
        return math.inf if self.projection == "none" else 0.05

    @property
    def effective_drift_penalty(self) -> float:
        if self.drift_penalty is not None:
            return self.drift_penalty
        return 200.0 if self.projection == "jacobian" else 0.0

    def to_json(self) -> dict:
        eff = self.effective_drift_threshold
        return {**asdict(self), "effective_drift_threshold": eff if math.isfinite(eff) else None,
                "effective_drift_penalty": self.effective_drift_penalty}

    def unused_fields(self) -> frozenset[str]:
        """Settings this configuration never reads, so a resume need not match them: the Jacobian scheme's without
        ``jacobian``, and the other correction's with it (``engine/recovery/optimize.py``)."""
        if self.projection != "jacobian":
            return JACOBIAN_ONLY
        return ADAM_ONLY if self.correction == "gauss-newton" else GAUSS_NEWTON_ONLY

    @classmethod
    def from_json(cls, data: dict) -> RecoveryConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


ADDED_FIELDS: dict[str, object] = {"gn_damping_decay": 1.0}
"""Fields added after recovery records were written, each with the value that reproduces a record saved without it
(a resume compares such a record's settings with these filled in)."""

GAUSS_NEWTON_ONLY = frozenset({"cg_iters", "restore_below", "gn_damping", "gn_damping_decay"})
"""Read only by the Gauss–Newton restoration (``correction="gauss-newton"``)."""
ADAM_ONLY = frozenset({"correction_lr", "probe_every"})
"""Read only with Adam corrections (the Gauss–Newton restoration estimates the probe basis once)."""
JACOBIAN_ONLY = GAUSS_NEWTON_ONLY | ADAM_ONLY | frozenset({
    "correction", "correction_steps", "later_encoder_prior", "jacobian_basis", "n_probes", "max_probes", "probe_tol"})
"""Read only by the ``jacobian`` projection."""

SEED_MAX = 2**32 - 1
"""The largest seed (what numpy and torch both accept, with room for the per-batch offsets added to it)."""

FIELD_LABELS: dict[str, str] = {
    "budget": "budget B", "steps": "steps", "boundary_steps": "boundary steps", "lr": "learning rate",
    "answer_weight": "answer weight", "answer_tokens": "answer tokens", "drift_threshold": "drift threshold",
    "delta_layer": "δ layer", "drift_penalty": "drift penalty λ", "n_probes": "probes", "max_probes": "most probes",
    "probe_tol": "probe tolerance", "probe_every": "probe interval (steps between re-estimates)",
    "correction_steps": "correction steps", "correction_lr": "correction learning rate", "penalty_growth": "penalty growth factor",
    "cg_iters": "conjugate-gradient iterations", "gn_damping": "Gauss–Newton damping",
    "gn_damping_decay": "Gauss–Newton damping decay",
    "restore_below": "restore-below share of the drift threshold",
    "suffix_tokens": "soft-suffix tokens", "batch_size": "batch size", "max_new_tokens": "recovered answer length",
    "seed": "seed",
}
"""Each number field of :class:`RecoveryConfig` in words, as messages name it (the dashboard's labels start with it)."""

FIELD_RULES: dict[str, tuple] = {
    # name: (kind, rule, may be None); a layer's range needs the model and the clamps: driver.resolve_delta_layer
    "budget": (float, "positive", False), "lr": (float, "positive", False), "correction_lr": (float, "positive", False),
    "answer_weight": (float, "non-negative", False), "drift_penalty": (float, "non-negative", True),
    "penalty_growth": (float, "positive", False), "gn_damping": (float, "positive", False),
    "gn_damping_decay": (float, "decay", False),
    "cg_iters": (int, "count", False), "restore_below": (float, "unit", False),
    "drift_threshold": (float, "threshold", True), "probe_tol": (float, "fraction", False),
    "steps": (int, "count", False), "answer_tokens": (int, "count", False), "batch_size": (int, "count", False),
    "max_new_tokens": (int, "count", False), "n_probes": (int, "count", False), "max_probes": (int, "count", False),
    "probe_every": (int, "count", False), "suffix_tokens": (int, "count", False),
    "boundary_steps": (int, "zero or more", False), "correction_steps": (int, "zero or more", False),
    "delta_layer": (int, "layer", True), "seed": (int, "seed", False),
}


def check_field(name: str, value):
    """``value`` if it is allowed for the number field ``name`` of :class:`RecoveryConfig` (ints stay ints, floats
    become floats), else a :class:`~engine.errors.FieldError` naming the field in words."""
    kind, rule, optional = FIELD_RULES[name]
    label = FIELD_LABELS[name]
    if value is None:
        if optional:
            return None
        raise FieldError(name, f"{label} needs a value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(name, f"{label} must be a number, got {value!r}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise FieldError(name, f"{label} must be a whole number, got {value}")
            value = int(value)
        if rule == "count" and value < 1:
            raise FieldError(name, f"{label} must be at least 1, got {value}")
        if rule == "zero or more" and value < 0:
            raise FieldError(name, f"{label} must be ≥ 0, got {value}")
        if rule == "seed" and not 0 <= value <= SEED_MAX:
            raise FieldError(name, f"{label} must be a whole number from 0 to {SEED_MAX}, got {value}")
        return value
    value = float(value)
    if rule == "positive" and not (math.isfinite(value) and value > 0):
        raise FieldError(name, f"{label} must be a positive finite number, got {value:g}")
    if rule == "non-negative" and not (math.isfinite(value) and value >= 0):
        raise FieldError(name, f"{label} must be a finite number ≥ 0, got {value:g}")
    if rule == "threshold" and not value >= 0:  # inf is allowed: no threshold
        raise FieldError(name, f"{label} must be ≥ 0, got {value:g}")
    if rule == "fraction" and not 0 < value < 1:
        raise FieldError(name, f"{label} must be between 0 and 1, got {value:g}")
    if rule == "decay" and not 0 < value <= 1:
        raise FieldError(name, f"{label} must be above 0 and at most 1 (1 keeps the damping constant), got {value:g}")
    if rule == "unit" and not 0 <= value <= 1:
        raise FieldError(name, f"{label} must be between 0 and 1 (0 turns it off), got {value:g}")
    return value


@dataclass
class StepEvent:
    """One optimisation step of one prompt (for live charts)."""

    step: int
    prompt_id: int
    loss: float
    drift: float
    floor_violation: float
    delta_norm: float
    stage: str
    drift_per_layer: dict[str, float] = field(default_factory=dict)
    """Hook → drift of that layer's clamped features over the answer positions (the live chart's one line per layer)."""


@dataclass
class PromptResult:
    """Recovery of one valid flip (``recovery.jsonl``, docs/CLI.md)."""

    id: int
    prompt: str
    base_text: str
    clamped_text: str
    recovered_text: str
    non_refusal: bool
    base_like: bool
    strict_base_like: bool
    degenerate: bool
    drift: float
    floor_violation: float
    delta_rel_norm: float
    delta_norm: float
    budget_abs: float
    best_step: int
    base_logprob_def: float
    base_logprob_rec: float
    loss_history: list[float]
    drift_history: list[float]
    reasons: list
    drift_per_layer: dict[str, float] = field(default_factory=dict)
    """Hook → drift of that layer's clamped features over the answer positions (the paper's pooling)."""
    drift_per_layer_all_positions: dict[str, float] = field(default_factory=dict)
    """Hook → drift over every non-sink position, prompt and answer (the pooling of ``drift``)."""
    floor_violation_per_layer: dict[str, float] = field(default_factory=dict)
    """Hook → floor violation over the answer positions."""
    drift_per_layer_history: dict[str, list[float]] = field(default_factory=dict)
    """Hook → drift over the answer positions at every optimisation step (the saved per-layer chart)."""
    within_threshold: bool | None = None
    """True: the kept δ's step held its drift within the drift threshold; False: no step did, so the lowest-loss δ
    over it was kept (``best_step`` names it; a soft suffix keeps its last step, ``best_step`` -1); None: a record
    written before this was saved."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def judged(cls, flip: dict, text: str, judge_cfg: JudgeConfig, **measured) -> PromptResult:
        """The result of one flip: the recovered ``text`` judged against the flip's base text, plus ``measured``
        (drift, norms, log-probs, histories). Every recovery method builds its results here."""
        verdict = judge(text, judge_cfg)
        like = base_likeness(text, flip["base_text"], judge_cfg, verdict)
        return cls(
            id=int(flip["id"]), prompt=flip["prompt"], base_text=flip["base_text"], clamped_text=flip["clamped_text"],
            recovered_text=text, non_refusal=like.non_refusal, base_like=like.base_like, strict_base_like=like.strict_base_like,
            degenerate=verdict.degenerate, reasons=verdict.to_json()["reasons"], **measured,
        )
