"""The loaded SAE: an sae_lens SAE with where it came from and where it reads, and the checks that it fits a model.

The sae_lens object is used only for ``encode``/``decode`` and its weights; the clamp (``engine.method.clamp``) is
our own hook so that the reconstruction error carries gradient. Loading by spec is ``engine.lm.sae_sources``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel, is_default_model

if TYPE_CHECKING:  # sae_lens is slow to import; only the loaders need it at run time
    from sae_lens import SAE


@dataclass
class LoadedSAE:
    """An sae_lens SAE with where it came from and where it reads."""

    sae: SAE[Any]
    """The sae_lens object (weights, ``encode``/``decode``)."""
    source: str
    """How it was loaded: ``default:HOOK``, ``tiny``, ``local:PATH``, ``npz:FOLDER@HOOK`` or ``registry:RELEASE/ID``."""
    hook_name: str
    """The hook point it reads and the clamp writes."""
    neuronpedia_id: str | None = None
    """``MODEL/LAYER`` on Neuronpedia, when the registry knows one."""

    def __post_init__(self) -> None:
        self.sae.requires_grad_(False)  # used, never trained, here (see LoadedModel)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def layer(self) -> int:
        return hook_layer(self.hook_name)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def trained_on(self) -> str | None:
        """The model name recorded in the SAE's metadata, if any."""
        return self.sae.cfg.metadata.model_name or None

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        return self.sae.W_enc

    @property
    def W_dec(self) -> Float[Tensor, "d_sae d_in"]:
        return self.sae.W_dec

    @property
    def b_enc(self) -> Float[Tensor, " d_sae"]:
        return self.sae.b_enc

    @property
    def b_dec(self) -> Float[Tensor, " d_in"]:
        return self.sae.b_dec

    def encode(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.sae.encode(h)

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return self.sae.decode(z)

    def pre_acts(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations ``(h − b_dec) W_enc + b_enc`` (the quantity an encoder-orthogonal δ cannot move)."""
        return self.sae.process_sae_in(h) @ self.W_enc + self.b_enc

    def to(self, device: torch.device) -> LoadedSAE:
        self.sae.to(device)
        self.sae.eval()
        return self

    def neuronpedia_url(self, feature: int) -> str | None:
        if not self.neuronpedia_id:
            return None
        return f"https://www.neuronpedia.org/{self.neuronpedia_id}/{feature}"


def hook_layer(hook_name: str) -> int:
    """Layer index of a ``blocks.N.…`` hook."""
    parts = hook_name.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise LabError(f"hook {hook_name!r} is not a per-layer hook (expected blocks.N.…)")
    return int(parts[1])


@functools.cache
def _canonical(name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name).lower()
    except ValueError:
        return name.lower()


def same_model(trained_on: str, model_name: str) -> bool:
    """Whether an SAE trained on ``trained_on`` fits the model ``model_name``.

    An instruction-tuned ``…-it`` model also accepts SAEs of its base model: that is how the paper uses
    Gemma Scope (trained on gemma-2-2b) with gemma-2-2b-it.
    """
    if is_default_model(model_name) or is_default_model(trained_on):
        return is_default_model(model_name) and is_default_model(trained_on)
    reg, mod = _canonical(trained_on), _canonical(model_name)
    return reg == mod or (mod.endswith("-it") and reg == mod[: -len("-it")])


def check_fits(loaded: LoadedSAE, lm: LoadedModel) -> None:
    """The SAE was made for this model (when it records one), its hook exists there and the widths agree."""
    if loaded.trained_on and not same_model(loaded.trained_on, lm.name):
        raise LabError(f"the SAE {loaded.source} was trained on {loaded.trained_on}, not on the loaded model {lm.name}")
    if loaded.hook_name not in lm.model.hook_dict:
        raise LabError(f"the SAE reads hook {loaded.hook_name!r}, which model {lm.name} does not have")
    width = hook_width(lm, loaded.hook_name)
    if width != loaded.d_in:
        raise LabError(f"SAE width mismatch: the SAE expects d_in={loaded.d_in} but {loaded.hook_name} in {lm.name} has width {width}")


def hook_width(lm: LoadedModel, hook_name: str) -> int:
    """Last-dimension size of a hook's activation (one 2-token pass; resid hooks short-circuit to d_model)."""
    if "hook_resid" in hook_name:
        return lm.d_model
    seen: list[int] = []
    with lm.lock, torch.no_grad():
        lm.model.run_with_hooks(
            torch.zeros((1, 2), dtype=torch.long, device=lm.device),
            fwd_hooks=[(hook_name, lambda act, hook: seen.append(act.shape[-1]))],
            stop_at_layer=hook_layer(hook_name) + 1 if hook_name.startswith("blocks.") else None,
        )
    return seen[0]
