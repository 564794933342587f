"""sae_lens registry SAEs (``RELEASE/SAE_ID``), from the local Hugging Face cache first, from the hub only when needed.

sae_lens maps a release and id to a Hugging Face repo and a folder in it (``pretrained_saes.yaml``). For the two
formats this lab knows file by file, the files are looked up in the cache (``huggingface_hub.try_to_load_from_cache``,
which honours ``HF_HUB_CACHE``) and read from disk with no network call, online or not:

* ``gemma_2`` (Gemma Scope): ``FOLDER/params.npz``, read by :mod:`engine.lm.gemma_scope` (no pickle, checked);
* ``sae_lens``: ``FOLDER/cfg.json`` and ``FOLDER/sae_weights.safetensors``.

Other formats: from a cached snapshot holding the folder only under ``HF_HUB_OFFLINE=1`` (sae_lens' own loader then
reads the cache); otherwise from the hub. When the hub is unreachable and a file is not cached, the error is one line
naming ``REPO/FILE`` for each missing file, raised before anything is read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import HubUnreachableError, LabError
from engine.lm.gemma_scope import read_params
from engine.lm.hub import cached_file, hub_cache_dir, hub_reachable
from engine.lm.saes import same_model

logger = logging.getLogger(__name__)

KNOWN_FILES = {"gemma_2": ("params.npz",), "sae_lens": ("cfg.json", "sae_weights.safetensors")}
"""Files each known sae_lens format needs, relative to the SAE's folder in its repo."""


@dataclass
class RegistryRef:
    """A registry SAE resolved to where its files live."""

    release: str
    """sae_lens release name (e.g. ``gemma-scope-2b-pt-res-canonical``)."""
    sae_id: str
    """SAE id within the release (e.g. ``layer_12/width_65k/canonical``)."""
    repo_id: str
    """Hugging Face repo holding the files (e.g. ``google/gemma-scope-2b-pt-res``)."""
    folder: str
    """Folder of this SAE inside the repo (e.g. ``layer_12/width_65k/average_l0_72``)."""
    conversion: str
    """sae_lens loader name (``sae_lens``, ``gemma_2``, …)."""
    model: str
    """Model the release was trained on, per the registry."""
    neuronpedia_id: str | None
    """``MODEL/LAYER`` on Neuronpedia, when the registry knows one."""

    @property
    def spec(self) -> str:
        return f"{self.release}/{self.sae_id}"

    def files(self) -> list[str] | None:
        """Repo-relative files needed, or None when the format's files are not known one by one."""
        names = KNOWN_FILES.get(self.conversion)
        return None if names is None else [f"{self.folder}/{n}" for n in names]


def resolve(spec: str) -> RegistryRef:
    """``RELEASE/SAE_ID`` → :class:`RegistryRef` (no network), or a clear error for an unknown release or id."""
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
    return RegistryRef(release, sae_id, lookup.repo_id, lookup.saes_map[sae_id], lookup.conversion_func or "sae_lens",
                       lookup.model, lookup.neuronpedia_id.get(sae_id))


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (main revision), or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def missing_downloads(ref: RegistryRef) -> list[str]:
    """``REPO/FILE`` (or ``REPO/FOLDER/`` for formats not known file by file) for each file not in the cache."""
    files = ref.files()
    if files is None:
        snap = cached_snapshot(ref.repo_id)
        return [] if snap is not None and (snap / ref.folder).exists() else [f"{ref.repo_id}/{ref.folder}/"]
    return [f"{ref.repo_id}/{f}" for f in files if cached_file(ref.repo_id, f) is None]


def load_registry(spec: str, model_name: str):
    """The sae_lens SAE ``spec`` for ``model_name``: from the cache when its files are there, else from the hub; a
    :class:`HubUnreachableError` listing the missing files when the hub cannot be reached."""
    from sae_lens import SAE

    ref = resolve(spec)
    if not same_model(ref.model, model_name):
        raise LabError(f"SAE {spec!r} is for model {ref.model}, but {model_name} is loaded")
    missing = missing_downloads(ref)
    if not missing and ref.conversion in KNOWN_FILES:
        logger.info("loading SAE %s from the local Hugging Face cache", spec)
        return SAE.from_pretrained(ref.release, ref.sae_id, device="cpu", converter=_cached_converter(ref.conversion)), ref
    if not missing and os.environ.get("HF_HUB_OFFLINE") == "1":  # sae_lens' loader reads the cache by itself
        return SAE.from_pretrained(ref.release, ref.sae_id, device="cpu"), ref
    if not hub_reachable():
        what = ", ".join(missing) if missing else f"{ref.repo_id}/{ref.folder}/ (format {ref.conversion}: set HF_HUB_OFFLINE=1 to read it from the cache)"
        raise HubUnreachableError(f"SAE {spec!r} is not in the local Hugging Face cache and the hub is unreachable; "
                                  f"download first: {what}")
    return SAE.from_pretrained(ref.release, ref.sae_id, device="cpu"), ref


def _cached_converter(conversion: str):
    """A sae_lens loader (``converter=``) that reads the cached files of a known format and nothing else."""
    from sae_lens.loading.pretrained_sae_loaders import (
        get_gemma_2_config_from_hf,
        get_sae_lens_config_from_disk,
        read_sae_components_from_disk,
    )

    def need(repo_id: str, filename: str) -> Path:
        path = cached_file(repo_id, filename)
        if path is None:  # checked before; a cache emptied in between still gives the same one-line error
            raise HubUnreachableError(f"not in the local Hugging Face cache: {repo_id}/{filename}")
        return path

    def gemma_2(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False, cfg_overrides=None):  # noqa: ARG001
        cfg = get_gemma_2_config_from_hf(repo_id, folder_name, device, cfg_overrides=cfg_overrides)  # pure: no network
        state = {k: v.to(device) for k, v in read_params(need(repo_id, f"{folder_name}/params.npz")).items()}
        cfg["finetuning_scaling_factor"] = False
        return cfg, state, None

    def sae_lens(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False, cfg_overrides=None):  # noqa: ARG001
        cfg_path = need(repo_id, f"{folder_name}/cfg.json")
        weights = need(repo_id, f"{folder_name}/sae_weights.safetensors")
        cfg = get_sae_lens_config_from_disk(cfg_path.parent, device, cfg_overrides)
        cfg, state = read_sae_components_from_disk(cfg_dict=cfg, weight_path=weights, device=device)
        return cfg, state, None

    return {"gemma_2": gemma_2, "sae_lens": sae_lens}[conversion]


def cached_registry_saes() -> list[dict]:
    """Registry SAEs whose files are all in the Hugging Face cache (``{spec, repo, model}``); files only, no network.

    Releases whose repo has no folder in the cache are skipped before any id is looked at, so this stays fast with
    sae_lens' thousands of ids."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    cache = hub_cache_dir()
    rows: list[dict] = []
    for release, lookup in get_pretrained_saes_directory().items():
        if not (cache / f"models--{lookup.repo_id.replace('/', '--')}").is_dir():
            continue
        for sae_id in lookup.saes_map:
            ref = resolve(f"{release}/{sae_id}")
            if not missing_downloads(ref):
                rows.append({"spec": ref.spec, "repo": ref.repo_id, "model": ref.model})
    return rows
