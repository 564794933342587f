"""Checks shared by the SAE tests: the encoder projection and the clamped features' relative drift, in float64."""

from __future__ import annotations

import copy

import torch


def encoder_projector(A: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """P = I − A (AᵀA + εI)⁻¹ Aᵀ (docs/METHOD.md), in float64. The ridge ε leaves Aᵀδ ≈ ε(AᵀA)⁻¹Aᵀδ̃, so pre-activations
    move by O(ε/λ_min(AᵀA)); a tiny ε makes that vanish, and then any remaining drift would be the activation's."""
    A = A.double()
    return torch.eye(A.shape[0], dtype=A.dtype) - A @ torch.linalg.solve(A.T @ A + eps * torch.eye(A.shape[1], dtype=A.dtype), A.T)


def clamped_drift(sae, h: torch.Tensor, delta: torch.Tensor, S: list[int]) -> float:
    """Relative change of z_S, computed in float64 so that only a real change (not fp32 rounding of h + δ) counts."""
    sae64 = copy.deepcopy(sae).double()
    with torch.no_grad():
        z0, z1 = sae64.encode(h.double())[..., S], sae64.encode(h.double() + delta.double())[..., S]
    return float((z1 - z0).norm() / (z0.norm() + 1e-8))
