"""Dead-latent resampling for short TopK runs (recipe v2, off by default: ``TrainConfig.resample_every``).

sae_lens' AuxK loss (``aux_loss_coefficient``, active for latents silent longer than ``dead_feature_window`` steps)
pulls dead latents towards the residual error, but in a run of a few hundred steps many never recover (44 % of the
shipped layer-15 latents never fire). Resampling re-initialises them directly, as in Anthropic's "Towards
Monosemanticity" (2023), adapted to TopK:

* every ``resample_every`` steps, while fewer than ``resample_until`` of the steps are done, the latents that have
  not fired for ``dead_feature_window`` steps are *dead*;
* for each, an input of the current batch is drawn with probability ∝ its squared reconstruction error ``‖r‖²``;
  the latent's decoder row becomes ``r / ‖r‖`` (at the mean decoder norm of live latents), its encoder column the
  same direction at ``resample_encoder_scale`` × the mean live encoder norm (1 by default: Anthropic's 0.2 suits
  L1 SAEs, but a TopK latent that small never reaches the top k and stays dead), its encoder bias 0;
* the Adam moments of those rows and columns are zeroed, and the latents' silence counters reset, so each one gets a
  full window to start firing before it counts as dead again.
"""

from __future__ import annotations

import logging

import torch
from sae_lens import SAETrainer

logger = logging.getLogger(__name__)


class ResamplingTrainer(SAETrainer):
    """``SAETrainer`` that resamples dead latents before some steps (see the module docstring)."""

    def __init__(self, *args, resample_every: int, resample_until: float, encoder_scale: float, total_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.resample_every, self.resample_until, self.encoder_scale = resample_every, resample_until, encoder_scale
        self.total_steps = total_steps
        self.resampled: list[int] = []
        """Number of latents resampled at each resampling step (recorded for the quality report)."""

    def step(self, batch: torch.Tensor):
        s = self.n_training_steps
        if s > 0 and s % self.resample_every == 0 and s <= self.resample_until * self.total_steps:
            self.resample(self.activation_scaler(batch.to(self.sae.device)))
        return super().step(batch)

    @torch.no_grad()
    def resample(self, x: torch.Tensor, seed: int | None = None) -> int:
        """Re-initialise the dead latents from the inputs of ``x`` (already scaled) that are reconstructed worst."""
        dead = torch.nonzero(self.dead_neurons).squeeze(1)
        if dead.numel() == 0:
            return 0
        sae = self.sae
        was_training = sae.training
        sae.eval()
        residual = x - sae.decode(sae.encode(x))
        sae.train(was_training)
        weight = residual.pow(2).sum(-1)
        if float(weight.sum()) <= 0:
            return 0
        gen = torch.Generator().manual_seed(self.n_training_steps if seed is None else seed)
        rows = torch.multinomial(weight.cpu(), dead.numel(), replacement=dead.numel() > x.shape[0], generator=gen)
        direction = residual[rows.to(residual.device)]
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool, device=dead.device)
        alive[dead] = False
        if not alive.any():
            alive[:] = True
        dec_norm = float(sae.W_dec[alive].norm(dim=-1).mean())
        enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean())
        sae.W_dec[dead] = direction * dec_norm
        sae.W_enc[:, dead] = direction.T * enc_norm * self.encoder_scale
        sae.b_enc[dead] = 0.0
        for p, index in ((sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead)), (sae.b_enc, (dead,))):
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][index] = 0.0
        self.n_forward_passes_since_fired[dead] = 0
        self.resampled.append(int(dead.numel()))
        logger.info("resampled %d dead latents at step %d", dead.numel(), self.n_training_steps)
        return int(dead.numel())
