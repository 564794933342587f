"""The loaded language model: a HookedTransformer with its tokenizer, device and the lock for hooked passes.

Which names mean the offline default model is answered here once (:func:`is_default_model`); loading lives in
``engine.lm.loading`` (dispatch), ``engine.lm.smollm`` (the default) and ``engine.lm.tiny`` (test fixtures).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from transformer_lens import HookedTransformer

from engine.errors import LabError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MODEL = "default"
"""The load name of the offline default model."""
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
"""Its model id (``LoadedModel.name`` once loaded)."""
DEFAULT_MODEL_ALIASES = frozenset({DEFAULT_MODEL, DEFAULT_MODEL_ID, "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"})
"""Every spelling that means the default model (load names, its id, its hub repo, sae_lens registry names)."""

_DEFAULT_LOWER = frozenset(a.lower() for a in DEFAULT_MODEL_ALIASES)

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]


def is_default_model(name: str | None) -> bool:
    """Whether ``name`` (a load name, a loaded model's id or a registry model name) is the offline default model."""
    return name is not None and name.lower() in _DEFAULT_LOWER

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
    tokenizer: PreTrainedTokenizerBase
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
    def dtype(self) -> torch.dtype:
        """The number format of the weights and activations (``engine.lm.dtypes``)."""
        return self.model.cfg.dtype

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, instruction: str) -> str:
        """The text the model sees for one user turn, ending where the assistant's answer starts."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
            )
        return instruction

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a BOS is prepended for models without a chat template (it then acts as the sink)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not self.has_chat_template and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return list(ids)

    def encode_answer(self, text: str) -> list[int]:
        """Token ids of an answer continuing a chat prompt (no BOS, no special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

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
        ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        end_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>") if self.has_chat_template else None
        if isinstance(end_turn, int) and end_turn != getattr(self.tokenizer, "unk_token_id", None):
            ids.add(end_turn)
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

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
