"""Activation collection and TopK training of the default SAEs (docs/DEFAULT_SAE.md), served as JumpReLU (``serve.py``).

* :func:`collect` runs the chat corpus through the model once, up to the deepest requested hook, and keeps one
  activation per *distinct* token prefix (the shared system prompt would otherwise be seen thousands of times),
  leaving out position 0 (the attention sink, norm ≈ 25 000) and outlier-norm positions (> 5× the median).
* :func:`train_topk` trains a sae_lens ``TopKTrainingSAE`` with ``SAETrainer`` fed by our own seeded iterator:
  ``lr_end`` set, cosine schedule, a short ``dead_feature_window`` so the dead-latent auxiliary loss starts in a
  run of a few hundred steps, inputs scaled to norm √d (the scale is folded into the weights at the end);
  optionally (recipe v2, ``TrainConfig.resample_every``) dead latents are resampled (``resample.py``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from engine.errors import LabError
from engine.lm.models import DEFAULT_MODEL_ID, LoadedModel
from engine.lm.saes import hook_layer
from engine.sae_recipe.corpus import Conversation

logger = logging.getLogger(__name__)


V2_TRAIN_FIELDS = ("resample_every", "resample_until", "resample_encoder_scale", "refit_decoder")
"""Recipe-v2 options: left out of ``to_json`` while at their defaults (off), so existing cache keys and manifests stay."""


@dataclass
class TrainConfig:
    """SAE recipe settings (recorded in the manifest)."""

    d_sae: int = 4608
    """Number of latents (the width)."""
    k: int = 32
    """TopK's k in training; also the target mean L0 of the served JumpReLU."""
    batch_size: int = 1024
    """Activations per training step."""
    training_samples: int = 480_000
    """Activations seen in training (about 1.6 epochs of the corpus)."""
    lr: float = 4e-4
    """Adam learning rate after warm-up."""
    lr_end: float = 4e-5
    """Learning rate at the end of the cosine decay."""
    lr_warm_up_steps: int = 20
    """Linear warm-up steps."""
    dead_feature_window: int = 60
    """Steps without firing after which a latent counts as dead (for the AuxK loss and resampling)."""
    aux_loss_coefficient: float = 1.0
    """Weight of sae_lens' AuxK loss (dead latents reconstruct the live latents' residual)."""
    decoder_init_norm: float = 0.1
    """Initial decoder row norm."""
    outlier_factor: float = 5.0
    """Positions whose norm exceeds this multiple of the median are left out."""
    collect_batch: int = 32
    """Conversations per forward pass when collecting activations."""
    seed: int = 0
    """Seed of initialisation and batch order."""
    resample_every: int = 0
    """Recipe v2: resample dead latents every this many steps (``resample.py``); 0 = off (the shipped SAEs)."""
    resample_until: float = 0.8
    """Recipe v2: resample only while fewer than this share of the steps are done (the rest let them settle; latents
    resampled only in the first half died again in a toy run: docs/DEFAULT_SAE.md)."""
    resample_encoder_scale: float = 1.0
    """Recipe v2: encoder norm of a resampled latent, as a multiple of the mean live encoder norm (0.2, as for L1
    SAEs, leaves resampled TopK latents below the top k: measured, docs/DEFAULT_SAE.md)."""
    refit_decoder: bool = False
    """Recipe v2: after serving, refit the decoder to the JumpReLU codes by least squares (``serve.refit_decoder``)."""

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in V2_TRAIN_FIELDS or getattr(self, k) != self.__dataclass_fields__[k].default}


@dataclass
class Collected:
    """Activations at one or more hooks for the kept positions of a corpus."""

    acts: dict[str, Float[Tensor, "n d"]]
    """Per hook, the kept positions' activations (float32)."""
    conv: Tensor
    """Conversation index of each kept position."""
    pos: Tensor
    label: Tensor
    """Token label (corpus.OTHER / ANSWER / REFUSAL)."""
    heldout: Tensor
    """Whether the position belongs to a held-out conversation."""
    stats: dict = field(default_factory=dict)

    def select(self, hook: str, mask: Tensor) -> Float[Tensor, "m d"]:
        return self.acts[hook][mask]


def _distinct_positions(convs: Sequence[Conversation]) -> list[list[int]]:
    """For each conversation, the positions ≥ 1 whose token prefix has not been seen before (in corpus order)."""
    seen: set[int] = set()
    keep: list[list[int]] = []
    for c in convs:
        h, mine = 0, []
        for i, tok in enumerate(c.ids):
            h = hash((h, tok))
            if i > 0 and h not in seen:
                seen.add(h)
                mine.append(i)
        keep.append(mine)
    return keep


@torch.no_grad()
def collect(lm: LoadedModel, convs: Sequence[Conversation], hooks: Sequence[str], cfg: TrainConfig) -> Collected:
    """Run every conversation once (sorted by length, left-padded batches) and keep the distinct, non-outlier positions."""
    if not convs:
        raise LabError("no conversations to collect activations from")
    stop = max(hook_layer(h) for h in hooks) + 1
    keep = _distinct_positions(convs)
    order = sorted(range(len(convs)), key=lambda i: len(convs[i].ids))
    chunks: dict[str, list[Tensor]] = {h: [] for h in hooks}
    meta: list[tuple[int, int, int, bool]] = []
    t0, done = time.time(), 0
    bar = tqdm(total=len(order), desc="collect activations", unit="conv", file=sys.stderr)
    for start in range(0, len(order), cfg.collect_batch):
        rows = order[start : start + cfg.collect_batch]
        batch = lm.batch([convs[i].ids for i in rows])
        width = batch.tokens.shape[1]
        cache: dict[str, Tensor] = {}
        hook_fns = [(h, lambda act, hook, cache=cache: cache.__setitem__(hook.name, act.detach())) for h in hooks]
        lm.model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop, fwd_hooks=hook_fns)
        for b, ci in enumerate(rows):
            pos = keep[ci]
            if not pos:
                continue
            idx = torch.tensor(pos) + (width - len(convs[ci].ids))
            for h in hooks:
                chunks[h].append(cache[h][b, idx].float().cpu())
            meta.extend((ci, p, convs[ci].labels[p], convs[ci].split == "heldout") for p in pos)
        done += sum(len(convs[i].ids) for i in rows)
        bar.update(len(rows))
        if (start // cfg.collect_batch) % 10 == 0:
            logger.info("collect: %d/%d conversations, %d tokens, %.0f s", start + len(rows), len(convs), done, time.time() - t0)
    bar.close()
    acts = {h: torch.cat(chunks[h]) for h in hooks}
    meta_t = torch.tensor([(c, p, lab, int(ho)) for c, p, lab, ho in meta])
    # outliers at any hook are dropped everywhere, so every hook sees the same positions
    ok = torch.ones(len(meta_t), dtype=torch.bool)
    stats: dict = {"tokens_run": done, "distinct_positions": len(meta_t), "seconds": round(time.time() - t0, 1)}
    for h in hooks:
        norms = acts[h].norm(dim=-1)
        med = float(norms.median())
        out = norms > cfg.outlier_factor * med
        ok &= ~out
        stats[h] = {"median_norm": round(med, 2), "outliers": int(out.sum())}
    logger.info("collect: %d positions kept of %d distinct (%s)", int(ok.sum()), len(meta_t), stats)
    stats["kept_positions"] = int(ok.sum())
    return Collected({h: a[ok] for h, a in acts.items()}, meta_t[ok, 0], meta_t[ok, 1], meta_t[ok, 2], meta_t[ok, 3].bool(), stats)


def batches(data: Float[Tensor, "n d"], batch_size: int, seed: int) -> Iterator[Float[Tensor, "b d"]]:
    """Endless shuffled minibatches (a new seeded permutation per epoch)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(data.shape[0], generator=gen)
        for s in range(0, data.shape[0] - batch_size + 1, batch_size):
            yield data[perm[s : s + batch_size]]


class _LoggingIterator:
    """Wraps the batch iterator: a progress bar on stderr, and a log line every ``every`` batches."""

    def __init__(self, it: Iterator[Tensor], total_steps: int, hook: str, every: int = 50):
        self.it, self.total, self.hook, self.every, self.n, self.t0 = it, total_steps, hook, every, 0, time.time()
        self.bar = tqdm(total=total_steps, desc=f"train {hook}", unit="step", file=sys.stderr)

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        self.n += 1
        if self.n <= self.total:
            self.bar.update(1)
        if self.n == self.total:
            self.bar.close()
        if self.n % self.every == 0:
            logger.info("train %s: step %d/%d, %.0f s", self.hook, self.n, self.total, time.time() - self.t0)
        return next(self.it)


def train_topk(train_acts: Float[Tensor, "n d"], hook: str, cfg: TrainConfig, model_name: str = DEFAULT_MODEL_ID):
    """A sae_lens TopK SAE trained on ``train_acts`` (returned after the input scale and decoder norms are folded)."""
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(cfg.seed)
    d_in = train_acts.shape[1]
    sae_cfg = TopKTrainingSAEConfig(
        d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_loss_coefficient, decoder_init_norm=cfg.decoder_init_norm,
        normalize_activations="none", metadata=SAEMetadata(hook_name=hook, model_name=model_name),
    )
    sae = TopKTrainingSAE(sae_cfg)
    scale = float(d_in**0.5 / train_acts.norm(dim=-1).mean())
    with torch.no_grad():
        sae.b_dec.copy_(train_acts.mean(0) * scale)
    steps = cfg.training_samples // cfg.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr, lr_end=cfg.lr_end,
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=cfg.lr_warm_up_steps, dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=max(1, steps // 4), device="cpu", logger=LoggingConfig(log_to_wandb=False),
    )
    provider = _LoggingIterator(batches(train_acts, cfg.batch_size, cfg.seed), steps, hook)
    if cfg.resample_every > 0:
        from engine.sae_recipe.resample import ResamplingTrainer

        trainer = ResamplingTrainer(trainer_cfg, sae, provider, resample_every=cfg.resample_every, resample_until=cfg.resample_until,
                                    encoder_scale=cfg.resample_encoder_scale, total_steps=steps)
    else:
        trainer = SAETrainer(trainer_cfg, sae, provider)
    trainer.activation_scaler.scaling_factor = scale  # applied to every batch, folded into the weights after fit()
    t0 = time.time()
    sae = trainer.fit()
    logger.info("train %s: %d steps in %.0f s, %d latents dead in the last window", hook, steps, time.time() - t0, int(trainer.dead_neurons.sum()))
    if sae.cfg.rescale_acts_by_decoder_norm:
        sae.fold_W_dec_norm()
        sae.cfg.rescale_acts_by_decoder_norm = False
    sae.eval()
    return sae
