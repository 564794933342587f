r"""Optimising δ under the active clamp (docs/METHOD.md).

    h_rec = h_def + δ,   δ = rows (one per prompt position, sink excluded) [+ one shared row at answer positions]

Each step: forward blocks ℓ+1..L−1 from the cached h_def(ℓ) + δ with later clamps active; loss = answer_weight ×
mean NLL of the base answer (answer stage) or NLL of its first token (boundary stage); backward to δ only
(no parameter gradients); project the gradient (encoder / Jacobian); Adam; project δ (encoder); clip to budget.
Prompts in a batch are independent: the loss is a sum of per-prompt losses and Adam is element-wise, so a
batch equals one-by-one runs. The kept δ is the lowest-loss one whose drift ≤ the threshold.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec, clamped
from engine.recovery import metrics
from engine.recovery.config import RecoveryConfig, StepEvent
from engine.recovery.problem import Problem, delta_hook, run_upper_blocks, split_specs
from engine.recovery.projection import EncoderProjector, clip_budget, orthonormal_basis, remove_span


@dataclass
class Evaluation:
    """One forward at a given δ."""

    logp: Float[Tensor, "batch pos"]
    """Log-probs of the targets (0 where there is none)."""
    z: Float[Tensor, "batch pos n_defended"]
    """Defended features at the pooled positions (0 elsewhere)."""


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


class DeltaObjective:
    """Forward passes of one :class:`Problem` at a given δ, and the defended reference."""

    def __init__(self, lm: LoadedModel, specs: Sequence[ClampSpec], problem: Problem):
        self.lm, self.problem = lm, problem
        prefix, self.suffix_specs = split_specs(specs, problem.delta_layer)
        hook = delta_hook(problem.delta_layer)
        # Clamps whose features δ can move: those at δ's own hook, and every clamp after it.
        self.same_layer = [s for s in prefix if s.hook_name == hook]
        self.defended = self.same_layer + self.suffix_specs
        with torch.no_grad():
            self.z_def = self.evaluate(torch.zeros_like(problem.h_def), None).z

    def perturbation(self, rows: Float[Tensor, "batch pos d_model"], gen: Float[Tensor, "batch d_model"] | None) -> Float[Tensor, "batch pos d_model"]:
        p = self.problem
        full = rows * p.prompt_rows[..., None]
        if gen is not None:
            full = full + gen[:, None, :] * p.answer_rows[..., None]
        return full  # [batch, pos, d_model]

    def evaluate(self, rows: torch.Tensor, gen: torch.Tensor | None) -> Evaluation:
        return self.evaluate_full(self.perturbation(rows, gen))

    def evaluate_full(self, pert: Float[Tensor, "batch pos d_model"]) -> Evaluation:
        """Forward at an arbitrary full perturbation ``[batch, pos, d_model]`` added to h_def."""
        p = self.problem
        resid = p.h_def + pert
        zs = [s.sae.encode(resid)[..., s.features] for s in self.same_layer]
        captured: list[torch.Tensor] = []

        def capture(spec: ClampSpec) -> Callable:
            def fn(act: torch.Tensor, hook) -> None:  # noqa: ARG001
                captured.append(spec.sae.encode(act)[..., spec.features])

            return fn

        probes = [(s.hook_name, capture(s)) for s in self.suffix_specs]
        with clamped(self.lm, self.suffix_specs, probes):
            logp = run_upper_blocks(self.lm, p, resid)
        z = torch.cat(zs + captured, dim=-1) if zs or captured else resid.new_zeros((*resid.shape[:2], 0))
        return Evaluation(logp, z * p.pooled[..., None])

    def losses(self, ev: Evaluation, stage: str, answer_weight: float) -> Float[Tensor, " batch"]:
        """Per-prompt loss ``[batch]``."""
        p = self.problem
        if stage == "boundary":
            return -ev.logp.gather(1, p.first_target[:, None])[:, 0]
        mask = p.target_mask
        nll = -(ev.logp * mask).sum(1) / mask.sum(1)
        return answer_weight * nll


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
    gen_seed = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = torch.zeros((n, width, d), device=p.h_def.device, requires_grad=True)
    gen = torch.zeros((n, d), device=p.h_def.device, requires_grad=True) if cfg.where == "prompt+gen" else None
    params = [rows] + ([gen] if gen is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 1.0 if cfg.lr_schedule == "constant" else 0.5 * (1 + math.cos(math.pi * t / cfg.steps))
    )
    encoder = EncoderProjector(objective.same_layer) if cfg.projection == "encoder" and objective.same_layer else None
    if cfg.projection == "encoder" and encoder is None:
        from engine.errors import LabError

        raise LabError("encoder projection needs a clamp at δ's layer; use --projection jacobian for a lower δ layer")

    best_loss = torch.full((n,), math.inf)
    any_loss = torch.full((n,), math.inf)
    best_rows, best_gen = rows.detach().clone(), gen.detach().clone() if gen is not None else None
    any_rows, any_gen = best_rows.clone(), best_gen.clone() if best_gen is not None else None
    best_step, any_step = [-1] * n, [-1] * n
    loss_hist: list[list[float]] = [[] for _ in range(n)]
    drift_hist: list[list[float]] = [[] for _ in range(n)]
    basis = None
    cancelled = False
    for step in range(cfg.steps + 1):  # the extra pass evaluates the final δ without stepping
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        stage = "boundary" if step < cfg.boundary_steps else "answer"
        if cfg.projection == "jacobian" and step < cfg.steps and step % cfg.probe_every == 0:
            basis = _jacobian_basis(objective, rows, gen, cfg, gen_seed)
        ev = objective.evaluate(rows, gen)
        per_prompt = objective.losses(ev, stage, cfg.answer_weight)
        dr = metrics.drift(ev.z.detach(), objective.z_def)
        fv = metrics.floor_violation(ev.z.detach(), objective.z_def)
        norms = _norms(objective, rows, gen)
        detached = per_prompt.detach()
        for b in range(n):
            loss_b = float(detached[b])
            loss_hist[b].append(loss_b)
            drift_hist[b].append(float(dr[b]))
            if on_event is not None:
                on_event(StepEvent(step, p.ids[b], loss_b, float(dr[b]), float(fv[b]), float(norms[b]), stage))
            eligible = stage == "answer" or cfg.boundary_steps == cfg.steps
            if eligible and loss_b < any_loss[b]:
                any_loss[b], any_step[b] = loss_b, step
                any_rows[b] = rows[b].detach()
                if any_gen is not None:
                    any_gen[b] = gen[b].detach()  # type: ignore[index]
            if eligible and float(dr[b]) <= cfg.effective_drift_threshold and loss_b < best_loss[b]:
                best_loss[b], best_step[b] = loss_b, step
                best_rows[b] = rows[b].detach()
                if best_gen is not None:
                    best_gen[b] = gen[b].detach()  # type: ignore[index]
        if step == cfg.steps:
            break
        opt.zero_grad(set_to_none=True)
        per_prompt.sum().backward()
        with torch.no_grad():
            if encoder is not None:
                for t in params:
                    t.grad.copy_(encoder(t.grad))  # type: ignore[union-attr]
            elif basis is not None:
                flat = _flatten(rows.grad, gen.grad if gen is not None else None)  # type: ignore[arg-type]
                _unflatten(remove_span(flat, basis), rows.grad, gen.grad if gen is not None else None)  # type: ignore[arg-type]
        opt.step()
        sched.step()
        with torch.no_grad():
            if encoder is not None:
                for t in params:
                    t.copy_(encoder(t))
            clip_budget(rows, gen, p.prompt_rows, budget, cfg.budget_kind)

    within = [s >= 0 for s in best_step]
    out_rows = torch.stack([best_rows[b] if within[b] else any_rows[b] for b in range(n)])
    out_gen = None
    if gen is not None:
        out_gen = torch.stack([best_gen[b] if within[b] else any_gen[b] for b in range(n)])  # type: ignore[index]
    steps = [best_step[b] if within[b] else any_step[b] for b in range(n)]
    if cfg.projection == "jacobian" and cfg.correction_steps > 0 and not cancelled:
        out_rows, out_gen = _correct_drift(objective, out_rows, out_gen, cfg, budget)
    return DeltaResult(out_rows, out_gen, steps, within, loss_hist, drift_hist, cancelled)


def _norms(objective: DeltaObjective, rows: torch.Tensor, gen: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        total = (rows * objective.problem.prompt_rows[..., None]).pow(2).sum(dim=(1, 2))
        if gen is not None:
            total = total + gen.pow(2).sum(-1)
        return total.sqrt()


def _flatten(rows: torch.Tensor, gen: torch.Tensor | None) -> torch.Tensor:
    flat = rows.reshape(rows.shape[0], -1)
    return torch.cat([flat, gen], dim=1) if gen is not None else flat


def _unflatten(flat: torch.Tensor, rows: torch.Tensor, gen: torch.Tensor | None) -> None:
    k = rows[0].numel()
    rows.copy_(flat[:, :k].reshape(rows.shape))
    if gen is not None:
        gen.copy_(flat[:, k:])


def _jacobian_basis(objective: DeltaObjective, rows, gen, cfg: RecoveryConfig, generator: torch.Generator) -> torch.Tensor:
    """Orthonormal basis of span{uᵀJ}: random probes u plus the drift direction z_rec − z_def."""
    params = [rows] + ([gen] if gen is not None else [])
    ev = objective.evaluate(rows, gen)
    vecs = []
    probes = [torch.randn(ev.z.shape, generator=generator).to(ev.z.device) for _ in range(cfg.n_probes)]
    probes.append((ev.z - objective.z_def).detach())
    for i, u in enumerate(probes):
        grads = torch.autograd.grad((ev.z * u).sum(), params, retain_graph=i < len(probes) - 1, allow_unused=True)
        g_rows = grads[0] if grads[0] is not None else torch.zeros_like(rows)
        g_gen = None
        if gen is not None:
            g_gen = grads[1] if grads[1] is not None else torch.zeros_like(gen)
        vecs.append(_flatten(g_rows * objective.problem.prompt_rows[..., None], g_gen))
    return orthonormal_basis(torch.stack(vecs, dim=1))


def _correct_drift(objective: DeltaObjective, rows: torch.Tensor, gen: torch.Tensor | None, cfg: RecoveryConfig, budget: torch.Tensor):
    """A few Adam steps on ‖z_rec − z_def‖² alone; keeps each prompt's lowest-drift δ seen."""
    rows = rows.detach().clone().requires_grad_(True)
    gen = gen.detach().clone().requires_grad_(True) if gen is not None else None
    params = [rows] + ([gen] if gen is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    best = (rows.detach().clone(), gen.detach().clone() if gen is not None else None)
    best_drift = torch.full((rows.shape[0],), math.inf)
    for step in range(cfg.correction_steps + 1):
        ev = objective.evaluate(rows, gen)
        sq = (ev.z - objective.z_def).pow(2).flatten(1).sum(1)
        dr = metrics.drift(ev.z.detach(), objective.z_def)
        for b in range(rows.shape[0]):
            if float(dr[b]) < best_drift[b]:
                best_drift[b] = float(dr[b])
                best[0][b] = rows[b].detach()
                if gen is not None and best[1] is not None:
                    best[1][b] = gen[b].detach()
        if step == cfg.correction_steps:
            break
        opt.zero_grad(set_to_none=True)
        sq.sum().backward()
        opt.step()
        clip_budget(rows, gen, objective.problem.prompt_rows, budget, cfg.budget_kind)
    return best
