"""Models from Hugging Face files: a local checkpoint folder, or an official name's snapshot in the HF cache.

Local files always come first. An official name whose snapshot is complete in the cache loads from it with no
network at all (``HF_HUB_OFFLINE=1`` or not); when a file is missing and the hub is reachable, the snapshot is
downloaded and then loaded the same way; when the hub is unreachable, one line names the missing file, in seconds.

Loading from a folder builds the Hugging Face model from the folder (``local_files_only=True``), maps its
``config.json`` to a TransformerLens config (``engine.lm.architectures``), converts the weights with TransformerLens'
converter for that architecture and processes them like ``HookedTransformer.from_pretrained`` does (fold the norms,
centre the writing weights, centre the unembedding unless the logits are softcapped). TransformerLens is never handed
a name, so it makes no hub call (its ``from_pretrained`` fetches the config from the hub: TransformerLens #846, #800).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import HubUnreachableError, LabError
from engine.lm.architectures import CONVERTERS, architecture_of, tl_config_dict
from engine.lm.dtypes import dtype_name, resolve_dtype
from engine.lm.fast import accelerate
from engine.lm.hub import cached_file, hub_cache_dir
from engine.lm.models import LoadedModel

logger = logging.getLogger(__name__)

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZERS = ("tokenizer.json", "tokenizer.model", "vocab.json")
_DOWNLOAD = ["*.json", "*.safetensors", "tokenizer.model", "*.txt"]
"""What an online load fetches: configs, tokenizer files and safetensors weights (not TF/Flax/ONNX copies)."""


def looks_like_path(name: str) -> bool:
    """Whether a model name means a folder: it starts with ``/``, ``./``, ``../`` or ``~``, or is an existing folder."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir()


def missing_files(folder: Path) -> list[str]:
    """The files a checkpoint folder lacks to load: ``config.json``, the weights (every shard of an index), a tokenizer."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    weights = [w for w in _WEIGHTS if (folder / w).is_file()]
    if not weights:
        missing.append("model.safetensors")
    for index in (w for w in weights if w.endswith(".index.json")):
        try:
            shards = sorted(set(json.loads((folder / index).read_text()).get("weight_map", {}).values()))
        except (OSError, json.JSONDecodeError):
            shards = []
            missing.append(index)
        missing.extend(s for s in shards if not (folder / s).is_file())
    if not any((folder / t).is_file() for t in _TOKENIZERS):
        missing.append("tokenizer.json")
    return missing


def check_model_folder(path: str | Path) -> Path:
    """A local checkpoint folder the lab can load (complete, supported architecture), or a clear error."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LabError(f"model folder {folder} does not exist")
    missing = missing_files(folder)
    if "config.json" in missing:
        raise LabError(f"{folder} is not a Hugging Face checkpoint folder: it has no config.json")
    architecture_of(_read_config(folder), f"model folder {folder}")
    if missing:
        raise LabError(f"model folder {folder} lacks {', '.join(missing)}")
    return folder.resolve()


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"cannot read {folder / 'config.json'}: {exc}") from None


@dataclass
class CachedSnapshot:
    """An official repo's snapshot in the Hugging Face cache."""

    repo_id: str
    """The hub repository (``google/gemma-2-2b-it``)."""
    folder: Path | None
    """The snapshot folder of ``refs/main``, None when the repo is not cached."""
    missing: list[str]
    """Files it lacks to load (empty: complete)."""


def cached_snapshot(repo_id: str) -> CachedSnapshot:
    """Where ``repo_id`` is in the cache and what it lacks; reads files only, never the network."""
    found = cached_file(repo_id, "config.json")
    if found is None:
        return CachedSnapshot(repo_id, None, ["config.json"])
    folder = found.parent
    return CachedSnapshot(repo_id, folder, missing_files(folder))


def snapshot_folder(repo_id: str, reachable) -> Path:
    """A complete local snapshot of ``repo_id``: the cached one, or one downloaded now when the hub is reachable.

    ``reachable`` is the hub probe (called only when something is missing). Offline, the error names the missing file.
    """
    snap = cached_snapshot(repo_id)
    if not snap.missing:
        return snap.folder  # type: ignore[return-value]
    if not reachable():
        where = f"in the Hugging Face cache ({hub_cache_dir()})"
        what = f"{repo_id}/{snap.missing[0]} is not" if snap.folder else f"{repo_id} is not"
        why = "HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else "the hub (huggingface.co) is unreachable"
        raise HubUnreachableError(f"cannot load {repo_id!r}: {what} {where} and {why}; "
                                  f"download it once where the hub is reachable (huggingface-cli download {repo_id})")
    logger.info("downloading %s into %s", repo_id, hub_cache_dir())
    folder = _download(repo_id, _DOWNLOAD)
    if missing_files(folder) == ["model.safetensors"]:  # an older repo with pickled weights only (read weights_only)
        folder = _download(repo_id, [*_DOWNLOAD, "pytorch_model*.bin"])
    left = missing_files(folder)
    if left:
        raise LabError(f"the hub's {repo_id} has no {left[0]}, so the lab cannot load it from files")
    return folder


def _download(repo_id: str, patterns: list[str]) -> Path:
    """``snapshot_download``; a refusal by the hub (a gated repo without ``HF_TOKEN``, no such repo) is one line."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, cache_dir=hub_cache_dir()))
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubUnreachableError(f"cannot download {repo_id!r}: {first} (gated models need HF_TOKEN and accepted terms)") from None


def is_loadable_folder(folder: Path) -> bool:
    """Whether a folder's architecture is one the lab maps itself (otherwise an official name falls back to TL)."""
    try:
        return architecture_of(_read_config(folder), str(folder)) in CONVERTERS
    except LabError:
        return False


def load_folder(folder: Path, device: torch.device, dtype: str | None = "auto", name: str | None = None) -> LoadedModel:
    """Load a complete checkpoint folder into TransformerLens with no hub call (see module docstring)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(folder)
    arch = architecture_of(_read_config(folder), f"model folder {folder}")
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    fields = tl_config_dict(arch, hf_config)
    size = HookedTransformerConfig.from_dict({**fields, "dtype": torch.float32})
    n_params = int(size.n_params) + size.d_vocab * size.d_model
    torch_dtype = resolve_dtype(dtype, device, n_params)
    softcapped = fields.get("output_logits_soft_cap", -1.0) > 0
    fields.update({
        "normalization_type": {"LN": "LNPre", "RMS": "RMSPre"}[fields["normalization_type"]],  # folded below
        "model_name": name or folder.name, "init_weights": False, "device": str(device), "dtype": torch_dtype,
    })
    fields.setdefault("default_prepend_bos", False)  # LoadedModel.encode decides about BOS itself
    cfg = HookedTransformerConfig.from_dict(fields)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    hf.requires_grad_(False)
    with contextlib.redirect_stdout(sys.stderr):  # keep the CLI's stdout JSON clean
        state = get_pretrained_state_dict(str(folder), cfg, hf_model=hf, dtype=torch_dtype)
        del hf
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True,
                                          center_unembed=not softcapped, fold_value_biases=True)
    del state
    model.to(device, print_details=False)
    accelerate(model)
    model.eval()
    logger.info("loaded %s (%s, %s, %.0fM parameters) from %s", name or folder, arch, dtype_name(torch_dtype), n_params / 1e6, folder)
    return LoadedModel(name=name or str(folder), model=model, tokenizer=tokenizer, device=device)


def cached_models() -> list[dict]:
    """Every model repo in the Hugging Face cache whose architecture the lab loads, with what it lacks (files only)."""
    cache = hub_cache_dir()
    rows: list[dict] = []
    if not cache.is_dir():
        return rows
    for repo in sorted(cache.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        snap = cached_snapshot(repo_id)
        if snap.folder is None:
            continue
        try:
            arch = architecture_of(_read_config(snap.folder), repo_id)
        except LabError:
            continue
        rows.append({"name": repo_id, "architecture": arch, "folder": str(snap.folder), "complete": not snap.missing,
                     "missing": snap.missing})
    return rows
