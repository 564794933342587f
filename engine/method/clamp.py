r"""The defence: clamp SAE features while keeping the reconstruction error.

.. math::

    h_{def} = D(\mathrm{clamp}_S(z; c_S)) + (h - D(z)),\qquad z = E(h)

Modes: ``set`` (z_S := c_S), ``multiply`` (z_S := m·z_S), ``zero`` (z_S := 0). The hook is ours, not sae_lens'
``use_error_term`` (which computes the error under ``no_grad``), so a perturbation upstream of the clamp gets its
true gradient: ∂h_def/∂h = I − J_D J_E + J_D J_clamp J_E.

Hooks are attached only inside :func:`clamped`, which holds the model's lock and always removes them.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE

ClampMode = Literal["set", "multiply", "zero"]
CLAMP_MODES: tuple[ClampMode, ...] = typing.get_args(ClampMode)


def check_mode(mode: str) -> ClampMode:
    """``mode`` as a :data:`ClampMode`, or a clear error."""
    if mode not in CLAMP_MODES:
        raise LabError(f"unknown clamp mode {mode!r}; choose set, multiply or zero")
    return typing.cast(ClampMode, mode)


def check_value(value) -> float:
    """One clamp value (``set``: the feature's new activation; ``multiply``: its factor): any finite number.

    Negative values are allowed on purpose: no activation function runs after the clamp and the decoder is linear, so
    ``set`` to −c writes −c·W_dec[s] into the residual stream, a push against the feature's direction (suppressing it
    harder than ``zero``), and ``multiply`` by −m flips the feature's sign. Both are well-defined interventions that
    recovery and its drift metrics handle like any other value; NaN and ±inf are not."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LabError(f"clamp values must be finite numbers, got {value!r}")
    return float(value)


Hook = tuple[str, Callable]


@dataclass
class ClampSpec:
    """Which features of one SAE are clamped, and how."""

    sae: LoadedSAE
    """The SAE whose latents are clamped; it also fixes the hook point."""
    features: list[int]
    """Indices of the clamped latents S."""
    mode: ClampMode = "set"
    """``set``: z_S := values; ``multiply``: z_S := values·z_S; ``zero``: z_S := 0."""
    values: list[float] = field(default_factory=list)
    """One value per feature, or a single value broadcast to all (ignored for ``zero``)."""

    def __post_init__(self) -> None:
        self.features = [int(f) for f in self.features]
        self.values = [float(v) for v in self.values]
        check_mode(self.mode)
        if not self.features:
            raise LabError("the clamp needs at least one feature")
        bad = [f for f in self.features if not 0 <= f < self.sae.d_sae]
        if bad:
            raise LabError(f"feature index {bad[0]} is out of range for an SAE with d_sae={self.sae.d_sae}")
        if len(set(self.features)) != len(self.features):
            raise LabError("the clamp lists a feature twice")
        if self.mode != "zero":
            if not self.values:
                raise LabError(f"mode {self.mode!r} needs a value (--value)")
            if len(self.values) == 1:
                self.values = self.values * len(self.features)
            if len(self.values) != len(self.features):
                raise LabError(f"{len(self.values)} values given for {len(self.features)} features")
            for v in self.values:
                check_value(v)

    @property
    def hook_name(self) -> str:
        return self.sae.hook_name

    def to_json(self) -> dict:
        return {"sae": self.sae.source, "hook": self.hook_name, "features": self.features, "mode": self.mode, "values": self.values}


def clamp_latents(z: Float[Tensor, "... d_sae"], spec: ClampSpec) -> Float[Tensor, "... d_sae"]:
    """``clamp_S(z)``: a copy of ``z`` with the features of ``spec`` replaced."""
    idx = torch.tensor(spec.features, device=z.device)
    out = z.clone()
    if spec.mode == "zero":
        out[..., idx] = 0.0
    else:
        vals = torch.tensor(spec.values, device=z.device, dtype=z.dtype)
        out[..., idx] = vals if spec.mode == "set" else z[..., idx] * vals
    return out


def defend(h: Float[Tensor, "... d_in"], spec: ClampSpec) -> Float[Tensor, "... d_in"]:
    """``h_def = D(clamp(E(h))) + (h − D(E(h)))``, differentiable in ``h`` including the error term."""
    z = spec.sae.encode(h)  # in the SAE's own dtype (sae_lens casts h), float32 for a bfloat16 model (docs/MODELS.md)
    # h + (D(clamp z) − D(z)): the error term h − D(z) keeps its gradient because nothing here is detached. The
    # difference is formed in the SAE's dtype and added in h's, so an identity clamp returns h exactly in any format.
    return h + (spec.sae.decode(clamp_latents(z, spec)) - spec.sae.decode(z)).to(h.dtype)


def clamp_hooks(specs: Sequence[ClampSpec]) -> list[Hook]:
    """TransformerLens forward hooks that apply each spec at its hook point."""
    hooks: list[Hook] = []
    for spec in specs:
        def hook_fn(act: Tensor, hook, spec: ClampSpec = spec) -> Tensor:  # noqa: ARG001
            return defend(act, spec)

        hooks.append((spec.hook_name, hook_fn))
    return hooks


@contextmanager
def clamped(lm: LoadedModel, specs: Sequence[ClampSpec], extra_hooks: Sequence[Hook] = ()) -> Iterator[LoadedModel]:
    """Hold ``lm``'s lock with the clamps (then ``extra_hooks``, in order) attached; detach exactly those on exit.

    Hooks at the same hook point run in the order given, so an ``extra_hook`` that adds δ there sees h_def.
    TransformerLens' ``hooks()`` context tags our hooks with a fresh context level and removes only that level, so an
    outer ``clamped()`` (the lock is re-entrant) or a caller's own ``model.hooks()`` keeps its hooks.
    """
    with lm.lock, lm.model.hooks(fwd_hooks=[*clamp_hooks(specs), *extra_hooks]):
        yield lm
