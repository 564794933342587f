"""Loading SAEs: the shipped default, the sae_lens registry (needs the hub), a local sae_lens folder, or ``tiny``.

The sae_lens object is used only for ``encode``/``decode`` and its weights; the clamp (``engine.clamp``) is our
own hook so that the reconstruction error carries gradient.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import HubUnreachableError, LabError
from engine.hub import hub_reachable
from engine.models import DEFAULT_MODEL_ID, LoadedModel
from engine.paths import PACKAGE_DIR

logger = logging.getLogger(__name__)

DEFAULT_SAE_DIR = PACKAGE_DIR / "default_sae"
"""Shipped SAEs for the default model: one sae_lens folder per hook, plus ``manifest.json``."""

# sae_lens registry ``model`` names that mean our default model
_DEFAULT_MODEL_ALIASES = {DEFAULT_MODEL_ID, "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"}


@dataclass
class LoadedSAE:
    """An sae_lens SAE with where it came from and where it reads."""

    sae: object
    source: str
    hook_name: str
    neuronpedia_id: str | None = None

    def __post_init__(self) -> None:
        self.sae.requires_grad_(False)  # type: ignore[attr-defined]  # used, never trained, here (see LoadedModel)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)  # type: ignore[attr-defined]

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)  # type: ignore[attr-defined]

    @property
    def layer(self) -> int:
        return hook_layer(self.hook_name)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())  # type: ignore[attr-defined]

    def encode(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.sae.encode(h)  # type: ignore[attr-defined]

    def decode(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return self.sae.decode(z)  # type: ignore[attr-defined]

    def pre_acts(self, h: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Encoder pre-activations ``(h − b_dec) W_enc + b_enc`` (the quantity an encoder-orthogonal δ cannot move)."""
        sae = self.sae
        return sae.process_sae_in(h) @ sae.W_enc + sae.b_enc  # type: ignore[attr-defined]

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


def registry_saes(model_name: str | None = None) -> list[dict]:
    """Rows ``{release, sae_id, model, neuronpedia}`` of sae_lens' shipped registry, optionally for one model."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    rows = []
    for release, lookup in get_pretrained_saes_directory().items():
        if model_name is not None and not _same_model(lookup.model, model_name):
            continue
        for sae_id in lookup.saes_map:
            rows.append({"release": release, "sae_id": sae_id, "model": lookup.model, "neuronpedia": lookup.neuronpedia_id.get(sae_id)})
    return rows


@functools.cache
def _canonical(name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name).lower()
    except ValueError:
        return name.lower()


def _same_model(registry_model: str, model_name: str) -> bool:
    """Whether an SAE trained on ``registry_model`` fits ``model_name``.

    An instruction-tuned ``…-it`` model also accepts SAEs of its base model: that is how the paper uses
    Gemma Scope (trained on gemma-2-2b) with gemma-2-2b-it.
    """
    default_names = {m.lower() for m in _DEFAULT_MODEL_ALIASES}
    if model_name.lower() in default_names or model_name == "default":
        return registry_model.lower() in default_names
    reg, mod = _canonical(registry_model), _canonical(model_name)
    return reg == mod or (mod.endswith("-it") and reg == mod[: -len("-it")])


def default_sae_names() -> list[str]:
    """Hook names of the shipped default SAEs (empty when none are shipped)."""
    if not DEFAULT_SAE_DIR.is_dir():
        return []
    return sorted(p.name for p in DEFAULT_SAE_DIR.iterdir() if (p / "cfg.json").is_file())


def load_sae(spec: str, lm: LoadedModel) -> LoadedSAE:
    """Load ``spec`` for ``lm`` and check it fits.

    ``spec`` is ``default`` (or ``default:HOOK``), ``tiny`` (a random SAE, for the tiny model), a local sae_lens
    folder, or ``RELEASE/SAE_ID`` from the sae_lens registry.
    """
    if spec == "default" or spec.startswith("default:"):
        loaded = _load_default(spec, lm)
    elif spec == "tiny" or spec.startswith("tiny:"):
        from engine.tiny import tiny_sae

        hook = spec.split(":", 1)[1] if ":" in spec else f"blocks.{lm.n_layers // 2 - 1}.hook_resid_post"
        loaded = LoadedSAE(tiny_sae(lm.d_model, hook_name=hook, model_name=lm.name), "tiny", hook)
    elif Path(spec).exists():
        loaded = _load_local(Path(spec), lm)
    else:
        loaded = _load_registry(spec, lm)
    validate_sae(loaded, lm)
    loaded.sae.to(lm.device)  # type: ignore[attr-defined]
    loaded.sae.eval()  # type: ignore[attr-defined]
    return loaded


def _load_default(spec: str, lm: LoadedModel) -> LoadedSAE:
    if lm.name == "tiny":
        return load_sae("tiny" + spec[len("default") :], lm)
    names = default_sae_names()
    if lm.name != DEFAULT_MODEL_ID:
        raise LabError(f"the default SAE is for {DEFAULT_MODEL_ID}, not {lm.name}; pick a registry SAE or a local folder")
    if not names:
        raise LabError(f"no default SAE is shipped in {DEFAULT_SAE_DIR}; train one with `python -m engine.default train`")
    hook = spec.split(":", 1)[1] if ":" in spec else _primary_default_hook(names)
    if hook not in names:
        raise LabError(f"no default SAE at hook {hook!r}; shipped: {', '.join(names)}")
    loaded = _load_local(DEFAULT_SAE_DIR / hook, lm)
    loaded.source = f"default:{hook}"
    return loaded


def _primary_default_hook(names: list[str]) -> str:
    manifest = DEFAULT_SAE_DIR / "manifest.json"
    if manifest.is_file():
        import json

        primary = json.loads(manifest.read_text()).get("primary")
        if primary in names:
            return primary
    return names[0]


def _load_local(path: Path, lm: LoadedModel) -> LoadedSAE:
    from sae_lens import SAE

    if not (path / "cfg.json").is_file():
        raise LabError(f"{path} is not an sae_lens SAE folder (no cfg.json)")
    try:
        sae = SAE.load_from_disk(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file from the user's point of view
        raise LabError(f"could not load the SAE in {path}: {type(exc).__name__}: {exc}") from None
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise LabError(f"the SAE in {path} names no hook (cfg.json metadata.hook_name)")
    model_name = sae.cfg.metadata.model_name
    if model_name and lm.name != "tiny" and not _same_model(model_name, lm.name):
        raise LabError(f"the SAE in {path} was trained on {model_name}, not on the loaded model {lm.name}")
    return LoadedSAE(sae, f"local:{path}", hook, sae.cfg.metadata.neuronpedia_id)


def _load_registry(spec: str, lm: LoadedModel) -> LoadedSAE:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    # Releases and ids both may contain '/', so take the longest release that prefixes the spec.
    release = max((r for r in directory if spec.startswith(r + "/")), key=len, default=None)
    if release is None:
        raise LabError(f"unknown SAE {spec!r}: not 'default', not a local folder, and no sae_lens release prefixes it")
    sae_id = spec[len(release) + 1 :]
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        raise LabError(f"release {release!r} has no SAE id {sae_id!r} (it has e.g. {', '.join(list(lookup.saes_map)[:3])})")
    if not _same_model(lookup.model, lm.name):
        raise LabError(f"SAE {spec!r} is for model {lookup.model}, but {lm.name} is loaded")
    if not hub_reachable():
        raise HubUnreachableError(f"cannot download SAE {spec!r}: the model hub (huggingface.co) is unreachable")
    sae = SAE.from_pretrained(release, sae_id, device="cpu")
    return LoadedSAE(sae, f"registry:{spec}", sae.cfg.metadata.hook_name, lookup.neuronpedia_id.get(sae_id))


def validate_sae(loaded: LoadedSAE, lm: LoadedModel) -> None:
    """The hook exists in the model and its width equals the SAE's ``d_in``."""
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
