"""Serving a trained TopK SAE as a JumpReLU SAE, its quality report, and writing the sae_lens folder.

**Why JumpReLU at inference.** With TopK, whether latent i fires depends on every other latent's pre-activation
(rank), so a perturbation δ with ``W_enc[:, S]ᵀ δ = 0`` can still push a clamped latent out of the top k (measured
drift 0.04–0.05). A JumpReLU latent is ``z_i = pre_i · 1[pre_i > θ_i]`` with
``pre_i = (h − b_dec) · W_enc[:, i] + b_enc[i]``, a function of its own pre-activation only; an encoder-orthogonal
δ leaves every ``pre_i`` (i ∈ S) unchanged, hence ``z_S`` exactly unchanged.

The TopK weights are kept (decoder norms folded, so ``W_dec`` rows have unit norm) and only the thresholds are new:
per latent, θ_i is set so that on calibration activations latent i fires exactly as often as it did under TopK
(quantile matching), which makes the mean L0 ≈ k. A single global threshold is measured too, for comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

logger = logging.getLogger(__name__)


def _pre_acts(W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, x: Tensor) -> Tensor:
    return (x - b_dec) @ W_enc + b_enc


@torch.no_grad()
def topk_fire_counts(sae, x: Float[Tensor, "n d"], chunk: int = 4096) -> Tensor:
    """How often each latent is among the (positive) top k on ``x``."""
    counts = torch.zeros(sae.cfg.d_sae)
    for s in range(0, x.shape[0], chunk):
        counts += (sae.encode(x[s : s + chunk]) > 0).float().sum(0)
    return counts


@torch.no_grad()
def per_latent_thresholds(sae, x: Float[Tensor, "n d"], latent_chunk: int = 384) -> Float[Tensor, " d_sae"]:
    """θ_i such that ``#{pre_i > θ_i}`` on ``x`` equals latent i's TopK firing count (never-firing latents get
    their maximum pre-activation, so they stay silent on ``x``)."""
    counts = topk_fire_counts(sae, x).long()
    theta = torch.empty(sae.cfg.d_sae)
    for s in range(0, sae.cfg.d_sae, latent_chunk):
        sl = slice(s, s + latent_chunk)
        pre = _pre_acts(sae.W_enc[:, sl], sae.b_enc[sl], sae.b_dec, x)  # [n, chunk]
        srt = pre.sort(dim=0, descending=True).values
        c = counts[sl].clamp(max=x.shape[0] - 1)
        theta[sl] = srt.gather(0, c[None, :]).squeeze(0)
    return theta.clamp(min=0.0)


@torch.no_grad()
def global_threshold(sae, x: Float[Tensor, "n d"], k: int) -> float:
    """One θ with mean ``#{pre > θ}`` = k on ``x``."""
    pre = _pre_acts(sae.W_enc, sae.b_enc, sae.b_dec, x[:4096]).flatten()
    n_keep = k * min(4096, x.shape[0])
    return max(0.0, float(pre.topk(n_keep + 1).values[-1]))


def jumprelu_from(sae, theta: Float[Tensor, " d_sae"] | float, dtype: torch.dtype = torch.float16):
    """A sae_lens ``JumpReLUSAE`` with ``sae``'s (folded) weights, rounded to ``dtype`` and back (what ships)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=sae.cfg.metadata.hook_name, model_name=sae.cfg.metadata.model_name, prepend_bos=False)
    out = JumpReLUSAE(JumpReLUSAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, metadata=meta))
    th = theta if isinstance(theta, Tensor) else torch.full((sae.cfg.d_sae,), float(theta))
    with torch.no_grad():
        for name, value in (("W_enc", sae.W_enc), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec), ("b_dec", sae.b_dec), ("threshold", th)):
            getattr(out, name).copy_(value.detach().to(dtype).float())
    out.eval()
    return out


@torch.no_grad()
def quality(sae, x: Float[Tensor, "n d"], chunk: int = 4096) -> dict:
    """Explained variance, mean L0, dead fraction (never fires on ``x``), relative MSE on ``x``."""
    sse = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    l0 = 0.0
    mean = x.mean(0)
    sst = float(((x - mean) ** 2).sum())
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        z = sae.encode(xb)
        sse += float(((sae.decode(z) - xb) ** 2).sum())
        on = z > 0
        fired |= on.any(0)
        l0 += float(on.sum())
    return {
        "explained_variance": round(1 - sse / sst, 4),
        "l0": round(l0 / x.shape[0], 2),
        "dead_fraction": round(1 - float(fired.float().mean()), 4),
        "n_tokens": int(x.shape[0]),
    }


def serve_as_jumprelu(topk_sae, calib: Tensor, heldout: Tensor, k: int) -> tuple[object, dict]:
    """Convert (per-latent thresholds, compared with one global threshold) and report both on ``heldout``."""
    per = jumprelu_from(topk_sae, per_latent_thresholds(topk_sae, calib))
    glob_theta = global_threshold(topk_sae, calib, k)
    glob = jumprelu_from(topk_sae, glob_theta)
    report = {
        "topk_heldout": quality(topk_sae, heldout),
        "jumprelu_per_latent_heldout": quality(per, heldout),
        "jumprelu_global_heldout": {**quality(glob, heldout), "threshold": round(glob_theta, 4)},
    }
    best = "per_latent" if report["jumprelu_per_latent_heldout"]["explained_variance"] >= report["jumprelu_global_heldout"]["explained_variance"] else "global"
    report["served"] = best
    logger.info("served as JumpReLU (%s thresholds): %s", best, report)
    return (per if best == "per_latent" else glob), report


@torch.no_grad()
def refit_decoder(sae, x: Float[Tensor, "n d"], ridge: float = 1e-3, chunk: int = 8192, dtype: torch.dtype = torch.float16) -> dict:
    """Recipe v2: refit ``W_dec`` in place to the served JumpReLU codes by ridge least squares on ``x``.

    The thresholds change which latents fire, so the TopK decoder no longer fits the served codes (held-out EV
    drops ≈ 0.03 from TopK to JumpReLU). With the codes ``Z`` fixed, ``W_dec = argmin ‖Z W − (x − b_dec)‖² +
    ridge·mean(diag ZᵀZ)·‖W‖²`` is one linear solve. The encoder is not touched except for a positive per-latent
    scale: the new decoder rows are normalised to unit norm and the norm folded into ``W_enc[:, i]``, ``b_enc[i]``
    and ``θ_i`` (``z_i = pre_i · 1[pre_i > θ_i]`` scales by the same factor, the gate is unchanged), so every code's
    support (up to fp16 rounding of the rescaled weights when shipped), the encoder projection of a clamped set and zero
    drift under it are as before. Latents that never fire
    on ``x`` keep their rows. ``ZᵀZ`` is accumulated from sparse codes (≈ L0 non-zeros per row). Every weight ends
    rounded to ``dtype`` and back (what ships), as :func:`jumprelu_from` leaves them.
    """
    d_sae = sae.cfg.d_sae
    gram = torch.zeros(d_sae, d_sae, dtype=torch.float64)
    cross = torch.zeros(d_sae, x.shape[1], dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        z = sae.encode(xb)  # [chunk, d_sae], mostly zeros
        zt = z.T.to_sparse()
        gram += torch.sparse.mm(zt, z).double()
        cross += torch.sparse.mm(zt, xb - sae.b_dec).double()
    live = gram.diagonal() > 0
    g = gram[live][:, live]
    lam = ridge * float(g.diagonal().mean())
    w_live = torch.linalg.solve(g + lam * torch.eye(len(g), dtype=torch.float64), cross[live]).float()
    norms = w_live.norm(dim=1).clamp(min=1e-8)
    idx = torch.nonzero(live).squeeze(1)
    sae.W_dec[idx] = w_live / norms[:, None]
    sae.W_enc[:, idx] *= norms
    sae.b_enc[idx] *= norms
    sae.threshold[idx] *= norms
    for p in sae.parameters():
        p.copy_(p.to(dtype).float())
    return {"refit_positions": int(x.shape[0]), "refit_live_latents": int(live.sum()), "ridge": ridge,
            "mean_row_norm_factor": round(float(norms.mean()), 4)}


# ------------------------------------------------------------------------------------------------- writing


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sae_folder(sae, folder: Path, files: dict[str, dict]) -> None:
    """An sae_lens folder (``cfg.json`` + fp16 ``sae_weights.safetensors``) plus our JSON files (quality, preset…)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in sae.state_dict().items()}
    save_file(state, str(folder / "sae_weights.safetensors"))
    cfg = sae.cfg.to_dict()
    cfg["dtype"] = "float32"  # weights are stored in fp16 and loaded as fp32
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data, indent=2))
