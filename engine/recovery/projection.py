r"""Constraints on δ: the encoder-orthogonal projection, the budget, and the Jacobian row-space projection.

Encoder projection. With A = W_enc[:, S] (d × |S|) and Q an orthonormal basis of its columns,

    P = I − Q Qᵀ   (= I − A (AᵀA)⁻¹ Aᵀ)

so Aᵀ(Pδ) = 0: the clamped features' pre-activations (h − b_dec) W_enc[:, S] + b_enc do not move. For ReLU and
JumpReLU SAEs their activations are a function of their own pre-activation alone, hence cannot drift either.
We use a QR basis rather than the ridge (AᵀA + εI)⁻¹ so that the constraint holds to float precision.

Budget. ``per_position``: every row ‖δ_t‖ ≤ B (the shared generation row too); ``matrix``: ‖δ‖_F ≤ B over all
rows, the shared row counted once. Rescaling keeps the encoder constraint (it is a linear subspace).

Jacobian (cross-layer). δ at ℓ₁, clamp at ℓ₂ > ℓ₁: the directions that move z_S(ℓ₂) are the row space of
J = ∂z_S(ℓ₂)/∂δ. We estimate it with vector–Jacobian products uᵀJ for random u (plus the current drift
direction u = z_rec − z_def) and remove that span from each gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from engine.method.clamp import ClampSpec


class EncoderProjector:
    """P = I − QQᵀ for the encoder columns of the clamped features at δ's hook."""

    def __init__(self, specs: Sequence[ClampSpec], dtype=torch.float32):
        cols = [s.sae.W_enc[:, s.features].detach().to(dtype) for s in specs]
        a = torch.cat(cols, dim=1)  # [d, |S|]
        q, r = torch.linalg.qr(a)
        keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()  # drop dependent columns
        self.q = q[:, keep]  # [d, rank]

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Project the last dimension of ``x`` onto the null space of Aᵀ."""
        return x - (x @ self.q) @ self.q.T


def clip_budget(rows: Float[Tensor, "batch pos d_model"], gen: Float[Tensor, "batch d_model"] | None, row_mask: Bool[Tensor, "batch pos"],
                budget: Float[Tensor, " batch"], kind: str) -> None:
    """Rescale δ in place so that its norm respects ``budget`` (``[batch]``, absolute)."""
    with torch.no_grad():
        rows.mul_(row_mask[..., None])
        if kind == "per_position":
            scale = (budget[:, None] / rows.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
            rows.mul_(scale[..., None])
            if gen is not None:
                gen.mul_((budget / gen.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)[:, None])
        else:
            total = rows.pow(2).sum(dim=(1, 2))
            if gen is not None:
                total = total + gen.pow(2).sum(dim=-1)
            scale = (budget / total.sqrt().clamp_min(1e-12)).clamp(max=1.0)
            rows.mul_(scale[:, None, None])
            if gen is not None:
                gen.mul_(scale[:, None])


def hold_constraints(params: list[Tensor], encoder: EncoderProjector | None, row_mask: Bool[Tensor, "batch pos"],
                     budget: Float[Tensor, " batch"], kind: str) -> None:
    """Put δ (``params`` = rows [+ gen]) back on its constraints after an optimiser step: the encoder projection, then
    the budget (rescaling keeps the projection: its null space is a linear subspace)."""
    with torch.no_grad():
        if encoder is not None:
            for t in params:
                t.copy_(encoder(t))
        clip_budget(params[0], params[1] if len(params) > 1 else None, row_mask, budget, kind)


def orthonormal_basis(vectors: Float[Tensor, "batch k dim"]) -> Float[Tensor, "batch dim k"]:
    """Per-batch orthonormal basis of the span of ``vectors`` (``[batch, k, dim]`` → ``[batch, dim, r]``)."""
    q, r = torch.linalg.qr(vectors.transpose(1, 2))  # [batch, dim, k]
    diag = r.diagonal(dim1=1, dim2=2).abs()  # [batch, k]
    keep = diag > 1e-8 * diag.max(dim=1, keepdim=True).values.clamp_min(1e-30)
    return q * keep[:, None, :]


def remove_span(x: Float[Tensor, "batch dim"], basis: Float[Tensor, "batch dim k"]) -> Float[Tensor, "batch dim"]:
    """``x − Q Qᵀ x`` per batch row; ``x`` is ``[batch, dim]``, ``basis`` ``[batch, dim, r]``."""
    coeff = torch.einsum("bd,bdr->br", x, basis)
    return x - torch.einsum("br,bdr->bd", coeff, basis)
