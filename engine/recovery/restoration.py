r"""Gauss–Newton restoration of the later clamps: a null-space solve of the linearised cross-layer constraint.

The paper's correction steps descend the relative drift with Adam; on the default model they leave the layer-20
drift at 0.12–0.24 for the flips that need a large δ (docs/CROSS_LAYER_LOG.md). This stronger variant
(``--correction gauss-newton``) instead moves δ, after every recovery step, by the **smallest** change that cancels
the later clamps' drift to first order:

    r = a_S(δ) − a_S,def                 (later clamps' pre-activations, constrained positions)  [batch, pos, |S|]
    A = J · M · P                        J = ∂z_S/∂δ, M = δ's free rows, P = the encoder projection at δ's layer
    c = Aᵀ (A Aᵀ + μ I)⁻¹ r,   δ ← δ − c

Pre-activations, not activations: a JumpReLU activation is gated, and a feature δ switched off has no gradient to
bring it back; the activation is a function of its own pre-activation, so holding the latter holds the former.
c lies in the free rows and keeps the clamps at δ's layer exactly still (MP is a projector, so
(JMP)(JMP)ᵀ = J M P Jᵀ). The system is solved by conjugate gradients per prompt, never forming J: Aᵀx is a
vector–Jacobian product, and Av a Jacobian–vector product obtained by differentiating the VJP with respect to its
(linear) cotangent — the double-backward trick, so no forward-mode support is needed from the blocks.
Up to ``correction_steps`` Gauss–Newton iterations are run per recovery step (the constraint is nonlinear), each
``cg_iters`` CG iterations; μ = ``gn_damping`` × the Rayleigh quotient rᵀAAᵀr / rᵀr, a scale-free damping.
The i-th iteration within a step multiplies it by ``gn_damping_decay``^i (Levenberg–Marquardt: a prompt a damped
step left unheld gets a step nearer plain Gauss–Newton next). Default 1: on the default model the later iterations'
residual lies in the constraint's weak directions, where a smaller μ left CG unconverged and the prompt unheld;
more iterations at the same μ held it (docs/CROSS_LAYER_LOG.md, stop 22).

**Restore until held** (``restore_below``): a prompt is restored only while its held drift — the later clamps'
activation drift that keep-best reads — is above ``restore_below`` × the drift threshold, and the iterations stop
when no prompt is. The drift is a JumpReLU reading: a pre-activation the inexact solve leaves a little off can
cross its threshold θ, and one such gate flip costs θ/‖z_def‖ (≈ 0.1 on the default model) however small the
pre-activation residual. Measured on the default model, first 4 harmless flips: one iteration of 8 CG steps
left the drift on plateaus of 0.11–0.26 for most steps (gate flips); 16 CG steps per iteration held it under 0.01.
Repeating until held spends the iterations where a flip happened and none where the drift is already held.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from jaxtyping import Float
from torch import Tensor

from engine.recovery.config import RecoveryConfig
from engine.recovery.objective import DeltaObjective
from engine.recovery.projection import EncoderProjector, hold_constraints

logger = logging.getLogger(__name__)

def _split(params: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """δ's parameters as ``(rows, gen)``; gen is None when δ has no shared answer row."""
    return params[0], params[1] if len(params) > 1 else None


def _dot(a: Tensor, b: Tensor) -> Float[Tensor, " batch"]:
    return (a * b).flatten(1).sum(1)


class GaussNewtonRestorer:
    """After each recovery step: δ ← δ − Aᵀ(AAᵀ + μI)⁻¹ r (see module docstring), then the budget."""

    def __init__(self, objective: DeltaObjective, params: list[Tensor], cfg: RecoveryConfig, encoder: EncoderProjector | None,
                 budget: Tensor):
        self.objective, self.params, self.cfg, self.encoder, self.budget = objective, params, cfg, encoder, budget
        with torch.no_grad():
            self.pre_def = objective.evaluate_z(*_split([torch.zeros_like(t) for t in params]), pre=True).z[..., objective.later_cols]
            """The later clamps' pre-activations at δ = 0 (the target of the restoration)."""

    def _pre(self, params: list[Tensor]) -> Tensor:
        mask = self.objective.constrained[..., None]
        z = self.objective.evaluate_z(*_split(params), pre=True).z
        return z[..., self.objective.later_cols] * mask

    def _free(self, grads: tuple[Tensor | None, ...], like: list[Tensor]) -> list[Tensor]:
        """M·P applied to a gradient w.r.t. δ's parameters (rows [+ gen])."""
        out = []
        for i, (g, t) in enumerate(zip(grads, like)):
            g = torch.zeros_like(t) if g is None else g
            if i == 0:
                g = g * self.objective.problem.prompt_rows[..., None]
            out.append(self.encoder(g) if self.encoder is not None else g)
        return out

    def restore_once(self, active: Tensor | None = None, damping: float | None = None) -> Float[Tensor, " batch"]:
        """One Gauss–Newton iteration of the ``active`` prompts (default: all; the others keep their δ exactly) at
        ``damping`` (default: ``gn_damping``); returns
        ‖r‖ per prompt before it (0 for a prompt not restored). Only the active rows are solved: the systems are
        independent per prompt, and with restore-until-held most prompt-iterations have nothing to restore."""
        damping = self.cfg.gn_damping if damping is None else damping
        if active is None or bool(active.all()):
            return self._solve(damping)
        norms = torch.zeros(active.shape, device=active.device)
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            return norms
        sub = copy.copy(self)
        sub.objective, sub.pre_def, sub.budget = self.objective.subset(idx), self.pre_def[idx], self.budget[idx]
        sub.params = [t.detach()[idx].clone() for t in self.params]
        norms[idx] = sub._solve(damping).to(norms.dtype)
        with torch.no_grad():
            for t, s in zip(self.params, sub.params):
                t[idx] = s
        return norms

    def _solve(self, damping: float) -> Float[Tensor, " batch"]:
        """One Gauss–Newton iteration of every prompt of this restorer's batch at damping ``damping``."""
        obj, cfg = self.objective, self.cfg
        params = [t.detach().requires_grad_(True) for t in self.params]
        mask = obj.constrained[..., None]
        zl = self._pre(params)  # [batch, pos, |S_later|] pre-activations
        r = (zl - self.pre_def * mask).detach()
        u = torch.zeros_like(zl, requires_grad=True)
        vjp_u = torch.autograd.grad((zl * u).sum(), params, create_graph=True, allow_unused=True)

        def a_t(x: Tensor) -> list[Tensor]:  # output space → δ's free directions
            return self._free(torch.autograd.grad((zl * x).sum(), params, retain_graph=True, allow_unused=True), params)

        def a(v: list[Tensor]) -> Tensor:  # δ's free directions → output space, d/du of ⟨Jᵀu, v⟩
            s = sum((g * vi).sum() for g, vi in zip(vjp_u, v) if g is not None)
            (jv,) = torch.autograd.grad(s, u, retain_graph=True)
            return jv * mask

        rr = _dot(r, r)
        live = rr > 0
        # AAᵀr serves twice: the Rayleigh quotient of μ and CG's first product (p = r), so it is computed once
        at_p = a_t(r)  # Aᵀp, kept: the step Aᵀx = Σ αᵢ Aᵀpᵢ is accumulated from them, with no VJP at the end
        aat_p = a(at_p)
        mu = damping * _dot(r, aat_p) / rr.clamp_min(1e-30)  # [batch]
        # CG on (AAᵀ + μI) x = r, one system per prompt, vectorised over the batch
        step = [torch.zeros_like(t) for t in at_p]  # Aᵀx
        res, p = r.clone(), r.clone()
        rs = rr.clone()
        for i in range(cfg.cg_iters):
            if i > 0:
                at_p = a_t(p)
                aat_p = a(at_p)
            ap = aat_p + mu[:, None, None] * p
            alpha = torch.where(live, rs / _dot(p, ap).clamp_min(1e-30), torch.zeros_like(rs))
            for acc, g in zip(step, at_p):
                acc.add_(alpha.view(-1, *([1] * (g.dim() - 1))) * g)
            res = res - alpha[:, None, None] * ap
            rs_new = _dot(res, res)
            beta = torch.where(live, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
            p = res + beta[:, None, None] * p
            rs = rs_new
            if logger.isEnabledFor(logging.DEBUG):  # .tolist() syncs the device: only when asked for
                logger.debug("CG residual ratio %s", (rs / rr.clamp_min(1e-30)).sqrt().tolist())
        self._line_search(step, rr)
        return rr.sqrt()

    def _residual_sq(self) -> Float[Tensor, " batch"]:
        with torch.no_grad():
            return (self._pre(self.params) - self.pre_def * self.objective.constrained[..., None]).flatten(1).pow(2).sum(1)

    def _line_search(self, step: list[Tensor], rr: Tensor, halvings: int = 4) -> None:
        """Take δ − α·c with the largest α ∈ {1, ½, ¼, …} that lowers each prompt's ‖r‖ (the constraint is nonlinear:
        JumpReLU gates switch, so a full Gauss–Newton step can overshoot); a prompt no α helps, or with nothing to
        restore (r = 0), keeps its δ exactly."""
        start = [t.detach().clone() for t in self.params]
        todo = rr > 0
        skip = ~todo
        alpha = torch.ones_like(rr)
        for _ in range(halvings + 1):
            with torch.no_grad():
                for t, t0, c in zip(self.params, start, step):
                    a = alpha.view(-1, *([1] * (c.dim() - 1)))
                    t.copy_(t0 - a * c)
            hold_constraints(self.params, self.encoder, self.objective.problem.prompt_rows, self.budget, self.cfg.budget_kind)
            after = self._residual_sq()
            better = after < rr
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("line search alpha %s: |r| %s -> %s", alpha.tolist(), rr.sqrt().tolist(), after.sqrt().tolist())
            todo = todo & ~better
            if not bool(todo.any()):
                break
            alpha = torch.where(todo, alpha / 2, alpha)
        with torch.no_grad():  # prompts that no step size helped, or that had nothing to restore, keep their δ
            for t, t0 in zip(self.params, start):
                keep = (todo | skip).view(-1, *([1] * (t.dim() - 1)))
                t.copy_(torch.where(keep, t0, t))

    def held_drift(self) -> Float[Tensor, " batch"]:
        """The drift keep-best reads (the later clamps' activations at the constrained positions)."""
        with torch.no_grad():
            return self.objective.constrained_drift(self.objective.evaluate_z(*_split(self.params)).z)

    def __call__(self) -> int:
        """Up to ``correction_steps`` iterations, each on the prompts whose held drift is above ``restore_below`` × the
        drift threshold (all prompts when either is 0 or infinite); returns the iterations run."""
        thr = self.cfg.effective_drift_threshold
        target = self.cfg.restore_below * thr if math.isfinite(thr) and self.cfg.restore_below > 0 else None
        for i in range(self.cfg.correction_steps):
            active = None if target is None else self.held_drift() > target
            if active is not None and not bool(active.any()):
                logger.debug("restoration: %d iteration(s)", i)
                return i
            self.restore_once(active, self.cfg.gn_damping * self.cfg.gn_damping_decay**i)
        return self.cfg.correction_steps
