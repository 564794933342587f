r"""Forward passes of one recovery :class:`~engine.recovery.problem.Problem` at a given δ.

The defended features are those δ can move: every clamp at δ's own hook (read from h_def + δ directly) and every
clamp after it (read by a hook as the upper blocks run, after the clamp acts). Their activations are stacked into
``z`` ``[batch, pos, n_defended]``, with ``groups`` telling which columns belong to which hook, so every metric can be
given per clamped layer and pooled.

Two forwards: :meth:`DeltaObjective.evaluate` runs every block above δ and the unembedding at the answer-predicting
positions (the recovery loss); :meth:`DeltaObjective.evaluate_z` stops at the last clamped layer (Jacobian probes and
drift-correction steps need ``z`` only, which is much cheaper when the clamps sit a few layers above δ).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import hook_layer
from engine.method.clamp import ClampSpec, clamp_hooks, clamped
from engine.recovery import metrics
from engine.recovery.problem import Problem, delta_hook, run_upper_blocks, split_specs


@dataclass
class Evaluation:
    """One forward at a given δ."""

    logp: Float[Tensor, "batch pos"] | None
    """Log-probs of the targets (0 where there is none); None for a ``z``-only forward."""
    z: Float[Tensor, "batch pos n_defended"]
    """Defended features at the pooled positions (0 elsewhere)."""


class DeltaObjective:
    """Forward passes of one :class:`Problem` at a given δ, and the defended reference ``z_def``."""

    def __init__(self, lm: LoadedModel, specs: Sequence[ClampSpec], problem: Problem, constrained: str = "all"):
        self.lm, self.problem = lm, problem
        self.constrained: Bool[Tensor, "batch pos"] = problem.answer_rows if constrained == "answer" else problem.pooled
        """Positions whose later-clamp drift the penalty, the Jacobian basis, the corrections and keep-best look at."""
        prefix, self.suffix_specs = split_specs(specs, problem.delta_layer)
        hook = delta_hook(problem.delta_layer)
        self.same_layer = [s for s in prefix if s.hook_name == hook]
        """Clamps at δ's own hook: the encoder projection protects them exactly."""
        self.defended = self.same_layer + self.suffix_specs
        self.groups: dict[str, list[int]] = {}
        """Hook name → the columns of ``z`` holding that hook's clamped features (in clamp order)."""
        col = 0
        for s in self.defended:
            self.groups.setdefault(s.hook_name, []).extend(range(col, col + len(s.features)))
            col += len(s.features)
        self.later_cols = [c for s in self.suffix_specs for c in self.groups[s.hook_name]]
        """Columns of the clamps above δ (what the Jacobian projection and the drift penalty are about)."""
        self.z_stop = max((hook_layer(s.hook_name) for s in self.suffix_specs), default=problem.delta_layer)
        with torch.no_grad():
            self.defended_eval = self.evaluate(torch.zeros_like(problem.h_def), None)
            """The forward at δ = 0: the defended model's target log-probs and features."""
        self.z_def = self.defended_eval.z

    def subset(self, idx: Int[Tensor, " k"]) -> DeltaObjective:
        """This objective restricted to the rows ``idx`` of its batch, without another defended forward: the restoration
        solves only the prompts it still has to restore (engine/recovery/restoration.py)."""
        sub = copy.copy(self)
        sub.problem = self.problem.subset(idx)
        sub.constrained = self.constrained[idx]
        sub.defended_eval = Evaluation(None if self.defended_eval.logp is None else self.defended_eval.logp[idx], self.z_def[idx])
        sub.z_def = sub.defended_eval.z
        return sub

    @property
    def has_later(self) -> bool:
        return bool(self.suffix_specs)

    def perturbation(self, rows: Float[Tensor, "batch pos d_model"], gen: Float[Tensor, "batch d_model"] | None) -> Float[Tensor, "batch pos d_model"]:
        p = self.problem
        full = rows * p.prompt_rows[..., None]
        if gen is not None:
            full = full + gen[:, None, :] * p.answer_rows[..., None]
        return full  # [batch, pos, d_model]

    def evaluate(self, rows: Tensor, gen: Tensor | None) -> Evaluation:
        return self.evaluate_full(self.perturbation(rows, gen))

    def evaluate_z(self, rows: Tensor, gen: Tensor | None, pre: bool = False) -> Evaluation:
        """``z`` only: blocks above δ up to the last clamped layer, no unembedding. ``pre``: the later clamps' features'
        pre-activations **before** their clamp acts instead: smooth in δ, and holding them holds the clamped
        activations exactly (the clamp adds a function of the held activations; engine/recovery/restoration.py)."""
        return self._forward(self.perturbation(rows, gen), full=False, pre=pre)

    def evaluate_full(self, pert: Float[Tensor, "batch pos d_model"]) -> Evaluation:
        """Forward at an arbitrary full perturbation ``[batch, pos, d_model]`` added to h_def."""
        return self._forward(pert, full=True)

    def _forward(self, pert: Tensor, full: bool, pre: bool = False) -> Evaluation:
        p = self.problem
        resid = p.h_def + pert

        def features(spec: ClampSpec, act: Tensor) -> Tensor:
            return (spec.sae.pre_acts(act) if pre else spec.sae.encode(act))[..., spec.features]

        zs = [features(s, resid) for s in self.same_layer]
        captured: list[Tensor] = []

        def capture(spec: ClampSpec) -> Callable:
            def fn(act: Tensor, hook) -> None:  # noqa: ARG001
                captured.append(features(spec, act))

            return fn

        probes = [(s.hook_name, capture(s)) for s in self.suffix_specs]
        logp = None
        # ``pre`` reads the pre-activations before each later clamp acts (smooth in δ: the gates of the clamps below are
        # held); the activations are read after it, as the drift metrics define them.
        order = ([], [*probes, *clamp_hooks(self.suffix_specs)]) if pre else (self.suffix_specs, probes)
        with clamped(self.lm, *order):
            if full:
                logp = run_upper_blocks(self.lm, p, resid)
            else:
                h = resid.to(self.lm.dtype)  # δ is float32; a bfloat16 model's blocks take their own format
                for block in self.lm.model.blocks[p.delta_layer + 1 : self.z_stop + 1]:
                    h = block(h, attention_mask=p.attention_mask)  # [batch, pos, d_model]
        z = torch.cat(zs + captured, dim=-1) if zs or captured else resid.new_zeros((*resid.shape[:2], 0))
        return Evaluation(logp, z * p.pooled[..., None])

    def losses(self, ev: Evaluation, stage: str, answer_weight: float) -> Float[Tensor, " batch"]:
        """Per-prompt recovery loss ``[batch]``: NLL of the first answer token (boundary) or of the answer."""
        p = self.problem
        if ev.logp is None:
            raise LabError("internal: the recovery loss needs a full forward")
        if stage == "boundary":
            return -ev.logp.gather(1, p.first_target[:, None])[:, 0]
        mask = p.target_mask
        nll = -(ev.logp * mask).sum(1) / mask.sum(1)
        return answer_weight * nll

    def relative_drift_sq(self, z: Float[Tensor, "batch pos n_defended"]) -> Float[Tensor, " batch"]:
        """‖Δz‖² / ‖z_def‖² over the clamps above δ at the constrained positions: the paper's drift penalty term."""
        cols, mask = self.later_cols, self.constrained[..., None]
        dz = ((z[..., cols] - self.z_def[..., cols]) * mask).flatten(1).pow(2).sum(1)
        return dz / ((self.z_def[..., cols] * mask).flatten(1).pow(2).sum(1) + metrics.EPS)

    def constrained_drift(self, z: Float[Tensor, "batch pos n_defended"]) -> Float[Tensor, " batch"]:
        """The drift the constraint holds, at the constrained positions (what keep-best's threshold and the adaptive
        penalty read): with clamps above δ, theirs alone (the clamps at δ's layer are held exactly, and pooling them
        in would dilute it); otherwise every defended feature's."""
        if self.has_later:
            return self.relative_drift_sq(z).sqrt()
        mask = self.constrained[..., None]
        return metrics.drift(z * mask, self.z_def * mask)

    def drift_by_layer(self, z: Float[Tensor, "batch pos n_defended"], rows: Bool[Tensor, "batch pos"] | None = None) -> dict[str, Tensor]:
        """Per hook: drift ``[batch]`` over ``rows`` (default: the pooled positions, i.e. every non-sink position)."""
        mask = (rows if rows is not None else self.problem.pooled)[..., None]
        return {h: metrics.drift(z[..., c] * mask, self.z_def[..., c] * mask) for h, c in self.groups.items()}

    def floor_by_layer(self, z: Float[Tensor, "batch pos n_defended"], rows: Bool[Tensor, "batch pos"] | None = None) -> dict[str, Tensor]:
        mask = (rows if rows is not None else self.problem.pooled)[..., None]
        return {h: metrics.floor_violation(z[..., c] * mask, self.z_def[..., c] * mask) for h, c in self.groups.items()}
