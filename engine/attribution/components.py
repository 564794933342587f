r"""Decomposing δ through the SAE at δ's hook (docs/METHOD.md, Attribution).

With z_def = E(h_def), z_rec = E(h_def + δ) and δz = z_rec − z_def, and writing D̃(v) = D(z_def + v) − D(z_def)
(the decoder's linear part, so bias and any output scaling cancel):

* clamped     = D̃(δz ⊙ 1_S)
* non_clamped = D̃(δz ⊙ 1_¬S)
* topk        = D̃(δz ⊙ 1_K), K = the k non-clamped features with the largest ‖δz_j‖ over the pooled positions
* residual    = δ − (D(z_rec) − D(z_def))          (what the SAE does not reconstruct)
* knockout    = δ − topk
* full        = δ

so clamped + non_clamped + residual = δ exactly for an affine decoder. Decoder directions are not orthogonal, so
component norms are **not** shares of δ; replaying each component alone under the clamp is the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from engine.lm.saes import LoadedSAE

COMPONENTS = ("full", "clamped", "non_clamped", "topk", "residual", "knockout")


@dataclass
class TopFeature:
    """One of the top-k non-clamped features moved by δ."""

    index: int
    delta_z_norm: float
    """‖δz_j‖ over the pooled positions."""
    delta_z_mean: float
    """Mean signed δz_j over the pooled positions."""
    neuronpedia_url: str | None


def decoded_part(sae: LoadedSAE, z_def: Float[Tensor, "... d_sae"], dz: Float[Tensor, "... d_sae"], mask: Float[Tensor, " d_sae"]) -> Float[Tensor, "... d_model"]:
    """D(z_def + δz ⊙ mask) − D(z_def); ``mask`` is ``[d_sae]`` (0/1)."""
    return sae.decode(z_def + dz * mask) - sae.decode(z_def)


def component(name: str, sae: LoadedSAE, clamped: list[int], topk: list[int], h_def: Float[Tensor, "... d_model"],
              delta: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """The named component of ``delta`` (``[..., d_model]``) at residual ``h_def`` (see module docstring)."""
    if name == "full":
        return delta
    z_def = sae.encode(h_def)
    z_rec = sae.encode(h_def + delta)
    dz = z_rec - z_def
    d_sae = z_def.shape[-1]
    s_mask = torch.zeros(d_sae, device=delta.device, dtype=delta.dtype)
    s_mask[clamped] = 1.0
    k_mask = torch.zeros_like(s_mask)
    if topk:
        k_mask[topk] = 1.0
    if name == "clamped":
        return decoded_part(sae, z_def, dz, s_mask)
    if name == "non_clamped":
        return decoded_part(sae, z_def, dz, 1.0 - s_mask)
    if name == "topk":
        return decoded_part(sae, z_def, dz, k_mask)
    if name == "residual":
        return delta - (sae.decode(z_rec) - sae.decode(z_def))
    if name == "knockout":
        return delta - decoded_part(sae, z_def, dz, k_mask)
    if name == "zero":
        return torch.zeros_like(delta)
    raise ValueError(f"unknown component {name!r}")


def top_features(sae: LoadedSAE, clamped: list[int], h_def: Float[Tensor, "pos d_model"], delta: Float[Tensor, "pos d_model"],
                 pooled: Bool[Tensor, " pos"], k: int) -> list[TopFeature]:
    """The k non-clamped features with the largest ‖δz_j‖ over the ``pooled`` positions (``[pos]`` bool)."""
    if k == 0:
        return []
    with torch.no_grad():
        dz = (sae.encode(h_def + delta) - sae.encode(h_def))[pooled]  # [n_pos, d_sae]
    norms = dz.norm(dim=0)
    norms[clamped] = -1.0  # never pick a clamped feature
    order = torch.argsort(norms, descending=True)[:k]
    return [
        TopFeature(int(j), float(norms[j]), float(dz[:, j].mean()), sae.neuronpedia_url(int(j)))
        for j in order
        if norms[j] > 0
    ]
