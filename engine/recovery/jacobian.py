r"""The cross-layer constraint: δ at ℓ₁ must not move the clamped features at later layers ℓ₂ > ℓ₁.

The directions of δ that move z_S(ℓ₂) span the row space of J = ∂z_S(ℓ₂)/∂δ. Following the paper's code we
estimate it with vector–Jacobian products uᵀJ for random probes u plus the current drift direction
u = z_rec − z_def, orthonormalise them into a basis, and remove that span from the recovery gradient. The drift
penalty's gradient is added **unprojected** (it must be free to undo drift), and after each step a few
drift-correction steps descend the relative drift alone.

Two ways to choose the probes (``RecoveryConfig.jacobian_basis``):

* ``probes``: ``n_probes`` random probes + the drift probe, as the paper does (8 + 1);
* ``adaptive``: blocks of ``n_probes`` random probes are added until a new block adds little, i.e. the share of its
  VJPs' energy outside the current basis falls below ``probe_tol``, or ``max_probes`` is reached. This spans the
  constraint's effective rank instead of a fixed low-rank stand-in for P⊥ = I − Jᵀ(JJᵀ)†J;
* ``exact``: every row of J (one per later clamped feature and pooled position), from batched VJPs
  (``is_grads_batched``, in chunks), so P⊥ is exact to first order. Costly: one estimate is |S|·T VJPs.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from engine.recovery.config import RecoveryConfig
from engine.recovery.objective import DeltaObjective
from engine.recovery.projection import EncoderProjector, hold_constraints, orthonormal_basis, remove_span


def flatten(rows: Tensor, gen: Tensor | None) -> Float[Tensor, "batch dim"]:
    flat = rows.reshape(rows.shape[0], -1)
    return torch.cat([flat, gen], dim=1) if gen is not None else flat


def unflatten_into(flat: Tensor, rows: Tensor, gen: Tensor | None) -> None:
    k = rows[0].numel()
    rows.copy_(flat[:, :k].reshape(rows.shape))
    if gen is not None:
        gen.copy_(flat[:, k:])


def _vjps(objective: DeltaObjective, rows: Tensor, gen: Tensor | None, probes: list[Tensor], z: Tensor,
          keep_graph: bool) -> Float[Tensor, "batch n dim"]:
    """uᵀJ for each probe u (over the later clamps' columns of ``z``), w.r.t. δ's free rows."""
    params = [rows] + ([gen] if gen is not None else [])
    cols = objective.later_cols
    out = []
    for i, u in enumerate(probes):
        retain = keep_graph or i < len(probes) - 1
        grads = torch.autograd.grad((z[..., cols] * u).sum(), params, retain_graph=retain, allow_unused=True)
        g_rows = grads[0] if grads[0] is not None else torch.zeros_like(rows)
        g_gen = None
        if gen is not None:
            g_gen = grads[1] if grads[1] is not None else torch.zeros_like(gen)
        out.append(flatten(g_rows * objective.problem.prompt_rows[..., None], g_gen))
    return torch.stack(out, dim=1)


def jacobian_basis(objective: DeltaObjective, rows: Tensor, gen: Tensor | None, cfg: RecoveryConfig,
                   generator: torch.Generator) -> tuple[Float[Tensor, "batch dim k"], int]:
    """An orthonormal basis of (an estimate of) the row space of J, and the number of probes it took."""
    rows_ = rows.detach().requires_grad_(True)
    gen_ = gen.detach().requires_grad_(True) if gen is not None else None
    z = objective.evaluate_z(rows_, gen_).z * objective.constrained[..., None]
    cols = objective.later_cols
    shape = z[..., cols].shape
    drift_probe = (z[..., cols] - objective.z_def[..., cols]).detach()

    def random_probes(n: int) -> list[Tensor]:
        return [torch.randn(shape, generator=generator).to(z.device) for _ in range(n)]

    if cfg.jacobian_basis == "exact":
        return exact_rows(objective, rows_, gen_, z)
    adaptive = cfg.jacobian_basis == "adaptive"
    collected = _vjps(objective, rows_, gen_, [drift_probe, *random_probes(cfg.n_probes)], z, keep_graph=adaptive)
    used = cfg.n_probes + 1
    while adaptive and used < cfg.max_probes:
        basis = orthonormal_basis(collected)
        n = min(cfg.n_probes, cfg.max_probes - used)
        block = _vjps(objective, rows_, gen_, random_probes(n), z, keep_graph=used + n < cfg.max_probes)
        used += n
        outside = torch.stack([remove_span(block[:, j], basis) for j in range(n)], dim=1)
        share = outside.pow(2).sum(dim=(1, 2)) / block.pow(2).sum(dim=(1, 2)).clamp_min(1e-30)  # [batch]
        collected = torch.cat([collected, block], dim=1)
        if float(share.max()) < cfg.probe_tol:
            break
    return orthonormal_basis(collected), used


def exact_rows(objective: DeltaObjective, rows: Tensor, gen: Tensor | None, z: Tensor,
               chunk: int = 64) -> tuple[Float[Tensor, "batch dim k"], int]:
    """An orthonormal basis of J's full row space: one VJP per (later feature, pooled position), batched.

    Prompts in a batch are independent, so the k-th one-hot output of every prompt is asked for at once: row k of each
    prompt's J comes out of one batched backward.
    """
    params = [rows] + ([gen] if gen is not None else [])
    cols = objective.later_cols
    zl = z[..., cols]  # [batch, pos, n_later]
    pooled = objective.constrained
    n, width, m = zl.shape
    # the k-th output entry of prompt b: its k-th (position, feature) pair among its constrained positions
    index = [[(int(t), c) for t in torch.nonzero(pooled[b]).flatten() for c in range(m)] for b in range(n)]
    total = max(len(ix) for ix in index)
    vecs: list[Tensor] = []
    for start in range(0, total, chunk):
        ks = range(start, min(start + chunk, total))
        outs = torch.zeros((len(ks), n, width, m), device=zl.device, dtype=zl.dtype)
        for j, k in enumerate(ks):
            for b in range(n):
                if k < len(index[b]):
                    t, c = index[b][k]
                    outs[j, b, t, c] = 1.0
        retain = start + chunk < total
        grads = torch.autograd.grad(zl, params, grad_outputs=outs, is_grads_batched=True, retain_graph=retain, allow_unused=True)
        g_rows = grads[0] * objective.problem.prompt_rows[None, ..., None]  # [chunk, batch, pos, d]
        g_gen = grads[1] if gen is not None else None
        flat = g_rows.reshape(len(ks), n, -1)
        if g_gen is not None:
            flat = torch.cat([flat, g_gen], dim=-1)
        vecs.append(flat.transpose(0, 1))  # [batch, chunk, dim]
    return orthonormal_basis(torch.cat(vecs, dim=1)), total


def project_out(basis: Tensor, rows_grad: Tensor, gen_grad: Tensor | None) -> None:
    """Remove the basis' span from the gradient, in place."""
    flat = flatten(rows_grad, gen_grad)
    unflatten_into(remove_span(flat, basis), rows_grad, gen_grad)


class DriftCorrector:
    """A few Adam steps on the relative drift of the later clamps alone, run after each recovery step.

    Its own Adam state persists across steps. The encoder projection (clamps at δ's layer) and the budget hold after
    every correction step.
    """

    def __init__(self, objective: DeltaObjective, params: list[Tensor], cfg: RecoveryConfig, encoder: EncoderProjector | None,
                 budget: Tensor):
        self.objective, self.params, self.cfg, self.encoder, self.budget = objective, params, cfg, encoder, budget
        self.opt = torch.optim.Adam(params, lr=cfg.correction_lr)

    def __call__(self) -> None:
        rows = self.params[0]
        gen = self.params[1] if len(self.params) > 1 else None
        for _ in range(self.cfg.correction_steps):
            self.opt.zero_grad(set_to_none=True)
            ev = self.objective.evaluate_z(rows, gen)
            self.objective.relative_drift_sq(ev.z).sum().backward()
            with torch.no_grad():
                if self.encoder is not None:
                    for t in self.params:
                        t.grad.copy_(self.encoder(t.grad))  # type: ignore[union-attr]
            self.opt.step()
            hold_constraints(self.params, self.encoder, self.objective.problem.prompt_rows, self.budget, self.cfg.budget_kind)
