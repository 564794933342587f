"""Loading an SAE by spec: the shipped default, ``tiny``, a local folder (sae_lens or Gemma Scope), or the registry.

Specs: ``default`` (the primary shipped SAE), ``default:HOOK``, ``default:ladder/NAME`` (a width-ladder SAE built
into the user cache by ``python -m engine.sae_recipe ladder``), ``tiny`` / ``tiny:HOOK`` (a random SAE for the tiny
model), a path to a local sae_lens folder (``cfg.json``), ``npz:PATH[@HOOK]`` or a path to a Gemma Scope folder
holding ``params.npz`` (:mod:`engine.lm.gemma_scope`), or ``RELEASE/SAE_ID`` from sae_lens' registry, read from the
local Hugging Face cache first (:mod:`engine.lm.sae_registry`). Every loaded SAE is checked against the model
(:func:`engine.lm.saes.check_fits`) before it is returned. docs/SAES.md describes every source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from engine.errors import LabError
from engine.lm import gemma_scope
from engine.lm.models import LoadedModel, is_default_model
from engine.lm.saes import LoadedSAE, check_fits, same_model
from engine.lm.tiny import tiny_sae
from engine.paths import DEFAULT_SAE_DIR

logger = logging.getLogger(__name__)


def default_sae_names() -> list[str]:
    """Hook names of the shipped default SAEs (empty when none are shipped)."""
    if not DEFAULT_SAE_DIR.is_dir():
        return []
    return sorted(p.name for p in DEFAULT_SAE_DIR.iterdir() if (p / "cfg.json").is_file())


def primary_default_hook() -> str | None:
    """The hook of the SAE that ``default`` means: the manifest's ``primary``, else the first shipped one."""
    names = default_sae_names()
    if not names:
        return None
    manifest = DEFAULT_SAE_DIR / "manifest.json"
    if manifest.is_file():
        primary = json.loads(manifest.read_text()).get("primary")
        if primary in names:
            return primary
    return names[0]


def registry_saes(model_name: str | None = None) -> list[dict]:
    """Rows ``{release, sae_id, model, neuronpedia}`` of sae_lens' shipped registry, optionally for one model."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    rows = []
    for release, lookup in get_pretrained_saes_directory().items():
        if model_name is not None and not same_model(lookup.model, model_name):
            continue
        for sae_id in lookup.saes_map:
            rows.append({"release": release, "sae_id": sae_id, "model": lookup.model, "neuronpedia": lookup.neuronpedia_id.get(sae_id)})
    return rows


def load_sae(spec: str, lm: LoadedModel) -> LoadedSAE:
    """Load ``spec`` (see module docstring) for ``lm``, check it fits, and move it to the model's device."""
    if spec == "default" or spec.startswith("default:"):
        loaded = _load_default(spec, lm)
    elif spec == "tiny" or spec.startswith("tiny:"):
        hook = spec.split(":", 1)[1] if ":" in spec else f"blocks.{lm.n_layers // 2 - 1}.hook_resid_post"
        loaded = LoadedSAE(tiny_sae(lm.d_model, hook_name=hook, model_name=lm.name), spec, hook)
    elif spec.startswith("npz:"):
        loaded = _load_npz(spec)
    elif Path(spec).exists():
        path = Path(spec)
        loaded = _load_npz(spec) if not (path / "cfg.json").is_file() and _is_npz(path) else _load_local(path)
    else:
        loaded = _load_registry(spec, lm)
    check_fits(loaded, lm)
    return loaded.to(lm.device)


def _load_default(spec: str, lm: LoadedModel) -> LoadedSAE:
    if spec.startswith("default:ladder/"):  # a width-ladder SAE built into the user cache (engine.sae_recipe.ladder)
        from engine.sae_recipe.ladder import ladder_folder

        loaded = _load_local(ladder_folder(spec.removeprefix("default:ladder/")))
        loaded.source = spec
        return loaded
    if lm.name == "tiny":
        return load_sae("tiny" + spec[len("default") :], lm)
    if not is_default_model(lm.name):
        raise LabError(f"the default SAE is for the default model, not {lm.name}; pick a registry SAE or a local folder")
    hook = spec.split(":", 1)[1] if ":" in spec else primary_default_hook()
    if hook is None:
        raise LabError(f"no default SAE is shipped in {DEFAULT_SAE_DIR}; train one with `python -m engine.sae_recipe train`")
    if hook not in default_sae_names():
        raise LabError(f"no default SAE at hook {hook!r}; shipped: {', '.join(default_sae_names())}")
    loaded = _load_local(DEFAULT_SAE_DIR / hook)
    loaded.source = f"default:{hook}"
    return loaded


def _load_local(path: Path) -> LoadedSAE:
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
    return LoadedSAE(sae, f"local:{path}", hook, sae.cfg.metadata.neuronpedia_id)


def _is_npz(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".npz") or (path / "params.npz").is_file()


def _load_npz(spec: str) -> LoadedSAE:
    path, hook = gemma_scope.parse_spec(spec)
    source = gemma_scope.infer_source(path, hook)
    return LoadedSAE(gemma_scope.load_npz_sae(source), f"npz:{source.file.parent}@{source.hook_name}", source.hook_name)


def _load_registry(spec: str, lm: LoadedModel) -> LoadedSAE:
    from engine.lm.sae_registry import load_registry

    sae, ref = load_registry(spec, lm.name)
    return LoadedSAE(sae, f"registry:{spec}", sae.cfg.metadata.hook_name, ref.neuronpedia_id)
