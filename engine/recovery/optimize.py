r"""Optimising δ under the active clamp (docs/METHOD.md).

    h_rec = h_def + δ,   δ = rows (one per prompt position, sink excluded) [+ one shared row at answer positions]

Each step: forward blocks ℓ+1..L−1 from the cached h_def(ℓ) + δ with later clamps active; recovery loss =
answer_weight × mean NLL of the base answer (answer stage) or NLL of its first token (boundary stage); backward to δ
only (no parameter gradients). The recovery gradient is projected: the encoder projection for clamps at δ's layer,
and (``jacobian``) the estimated row space of the later clamps' Jacobian removed. The drift penalty
λ·‖Δz‖²/‖z_def‖² over the later clamps adds its gradient **unprojected**. Then Adam; δ projected (encoder) and
clipped to the budget; then (``jacobian``) a few drift-correction steps. Prompts in a batch are independent: the loss
is a sum of per-prompt losses and Adam is element-wise, so a batch equals one-by-one runs. The kept δ is the
lowest-recovery-loss one whose drift ≤ the threshold (the penalty steers the optimisation; the threshold decides).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.method.clamp import ClampSpec
from engine.recovery import metrics
from engine.recovery.config import RecoveryConfig, StepEvent
from engine.recovery.jacobian import DriftCorrector, jacobian_basis, project_out
from engine.recovery.objective import DeltaObjective
from engine.recovery.problem import delta_hook, split_specs
from engine.recovery.projection import EncoderProjector, hold_constraints
from engine.recovery.restoration import GaussNewtonRestorer


@dataclass
class DeltaResult:
    """The kept δ of each prompt and its history."""

    rows: Float[Tensor, "batch pos d_model"]
    gen: Float[Tensor, "batch d_model"] | None
    best_step: list[int]
    within_threshold: list[bool]
    loss_history: list[list[float]]
    drift_history: list[list[float]]
    cancelled: bool
    probes_used: int = 0
    """Jacobian probes of the last basis estimate (0 without the Jacobian projection)."""
    drift_per_layer_history: list[dict[str, list[float]]] = field(default_factory=list)
    """Per prompt: hook → drift over the answer positions at every step."""


def check_projection_layers(projection: str, specs: Sequence[ClampSpec], delta_layer: int) -> None:
    """Refuse a projection that cannot hold this clamp set with δ at ``delta_layer`` (cheap: no forward pass)."""
    if projection != "encoder":
        return
    prefix, later = split_specs(specs, delta_layer)
    above = sorted({s.hook_name for s in later})
    if above:
        raise LabError(f"the encoder projection only protects the clamps at δ's layer {delta_layer}, but {', '.join(above)} "
                       "lie above it; choose the jacobian projection (encoder at δ's layer + the Jacobian above) or none")
    if not any(s.hook_name == delta_hook(delta_layer) for s in prefix):
        raise LabError(f"the encoder projection needs a clamp at δ's layer {delta_layer}; put δ at a clamped layer or "
                       "choose the jacobian projection")


def check_projection(objective: DeltaObjective, cfg: RecoveryConfig) -> EncoderProjector | None:
    """The encoder projector for the clamps at δ's layer; refuses a projection that cannot hold the clamp set."""
    # clamps below δ's layer cannot move, so the clamps δ can move decide what the projection must hold
    check_projection_layers(cfg.projection, objective.defended, objective.problem.delta_layer)
    held = list(objective.same_layer) if cfg.projection in ("encoder", "jacobian") else []
    if cfg.projection == "jacobian" and cfg.later_encoder_prior:
        held += objective.suffix_specs  # the direct residual path to the later clamps, removed exactly
    return EncoderProjector(held) if held else None


def optimize_delta(
    objective: DeltaObjective,
    cfg: RecoveryConfig,
    budget: Float[Tensor, " batch"],
    on_event: Callable[[StepEvent], None] | None = None,
    cancel: threading.Event | None = None,
) -> DeltaResult:
    """Run the δ optimisation for one batch (see module docstring)."""
    p = objective.problem
    n, width, d = p.h_def.shape
    probe_gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = torch.zeros((n, width, d), device=p.h_def.device, requires_grad=True)
    gen = torch.zeros((n, d), device=p.h_def.device, requires_grad=True) if cfg.where == "prompt+gen" else None
    params = [rows] + ([gen] if gen is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 1.0 if cfg.lr_schedule == "constant" else 0.5 * (1 + math.cos(math.pi * t / cfg.steps))
    )
    encoder = check_projection(objective, cfg)
    jacobian = cfg.projection == "jacobian" and objective.has_later
    penalty = cfg.effective_drift_penalty if objective.has_later else 0.0
    # λ per prompt: fixed, or adapted to each prompt's held drift against the threshold (cfg.penalty_schedule)
    lam = torch.full((n,), penalty, device=p.h_def.device)
    adaptive = cfg.penalty_schedule == "adaptive" and penalty > 0 and math.isfinite(cfg.effective_drift_threshold)
    corrector = None
    if jacobian and cfg.correction_steps > 0:
        corrector = (GaussNewtonRestorer if cfg.correction == "gauss-newton" else DriftCorrector)(objective, params, cfg, encoder, budget)

    best_loss = torch.full((n,), math.inf)
    any_loss = torch.full((n,), math.inf)
    best_rows, best_gen = rows.detach().clone(), gen.detach().clone() if gen is not None else None
    any_rows, any_gen = best_rows.clone(), best_gen.clone() if best_gen is not None else None
    best_step, any_step = [-1] * n, [-1] * n
    loss_hist: list[list[float]] = [[] for _ in range(n)]
    drift_hist: list[list[float]] = [[] for _ in range(n)]
    layer_hist: list[dict[str, list[float]]] = [{h: [] for h in objective.groups} for _ in range(n)]
    basis, probes_used = None, 0
    # with the Gauss–Newton restoration the probe basis is estimated once (see RecoveryConfig.probe_every)
    every = cfg.probe_every if cfg.correction == "adam" else cfg.steps + 1
    cancelled = False
    for step in range(cfg.steps + 1):  # the extra pass evaluates the final δ without stepping
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        stage = "boundary" if step < cfg.boundary_steps else "answer"
        if jacobian and step < cfg.steps and step % every == 0:
            basis, probes_used = jacobian_basis(objective, rows, gen, cfg, probe_gen)
        ev = objective.evaluate(rows, gen)
        recovery = objective.losses(ev, stage, cfg.answer_weight)
        pen = lam * objective.relative_drift_sq(ev.z) if penalty > 0 else None
        with torch.no_grad():
            z = ev.z.detach()
            dr = metrics.drift(z, objective.z_def)
            kept_dr = objective.constrained_drift(z)
            fv = metrics.floor_violation(z, objective.z_def)
            by_layer = objective.drift_by_layer(z, p.answer_rows)
            norms = _norms(objective, rows, gen)
        # Histories, events and keep-best read the recovery loss: the penalty is a training device, and the threshold
        # on drift is what keep-best applies to drift.
        detached = recovery.detach()
        for b in range(n):
            loss_b = float(detached[b])
            loss_hist[b].append(loss_b)
            drift_hist[b].append(float(dr[b]))
            for h, v in by_layer.items():
                layer_hist[b][h].append(float(v[b]))
            if on_event is not None:
                on_event(StepEvent(step, p.ids[b], loss_b, float(dr[b]), float(fv[b]), float(norms[b]), stage,
                                   {h: float(v[b]) for h, v in by_layer.items()}))
            eligible = stage == "answer" or cfg.boundary_steps == cfg.steps
            if eligible and loss_b < any_loss[b]:
                any_loss[b], any_step[b] = loss_b, step
                any_rows[b] = rows[b].detach()
                if any_gen is not None:
                    any_gen[b] = gen[b].detach()  # type: ignore[index]
            if eligible and float(kept_dr[b]) <= cfg.effective_drift_threshold and loss_b < best_loss[b]:
                best_loss[b], best_step[b] = loss_b, step
                best_rows[b] = rows[b].detach()
                if best_gen is not None:
                    best_gen[b] = gen[b].detach()  # type: ignore[index]
        if step == cfg.steps:
            break
        if adaptive:
            over = kept_dr > cfg.effective_drift_threshold
            lam = torch.where(over, lam * cfg.penalty_growth, (lam / cfg.penalty_growth).clamp_min(penalty)).clamp_max(penalty * 1e6)
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(recovery.sum(), params, retain_graph=pen is not None, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, params)]
        if basis is not None:
            project_out(basis, grads[0], grads[1] if gen is not None else None)
        if pen is not None:  # the penalty's gradient is added unprojected: it must be free to undo drift
            pen_grads = torch.autograd.grad(pen.sum(), params, allow_unused=True)
            grads = [g + pg if pg is not None else g for g, pg in zip(grads, pen_grads)]
        with torch.no_grad():
            for t, g in zip(params, grads):
                t.grad = encoder(g) if encoder is not None else g
        opt.step()
        sched.step()
        hold_constraints(params, encoder, p.prompt_rows, budget, cfg.budget_kind)
        if corrector is not None:
            corrector()

    within = [s >= 0 for s in best_step]
    out_rows = torch.stack([best_rows[b] if within[b] else any_rows[b] for b in range(n)])
    out_gen = None
    if gen is not None:
        out_gen = torch.stack([best_gen[b] if within[b] else any_gen[b] for b in range(n)])  # type: ignore[index]
    steps = [best_step[b] if within[b] else any_step[b] for b in range(n)]
    return DeltaResult(out_rows, out_gen, steps, within, loss_hist, drift_hist, cancelled, probes_used, layer_hist)


def _norms(objective: DeltaObjective, rows: Tensor, gen: Tensor | None) -> Tensor:
    total = (rows * objective.problem.prompt_rows[..., None]).pow(2).sum(dim=(1, 2))
    if gen is not None:
        total = total + gen.pow(2).sum(-1)
    return total.sqrt()
