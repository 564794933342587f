"""Token-by-token generation of one prompt, base and clamped side by side (the dashboard's steering playground).

:func:`stream_side_by_side` decodes the same prompt twice, without and with the clamps, one token of each in turn, and
yields after every token. It makes the same forward calls as ``engine.method.generation.generate`` on a batch of one
(the chat-formatted prompt, then one new position per step with a KV cache), with the same greedy or seeded-sampling
rule and the same seed, so each side's tokens equal what ``generate`` returns (``tests/test_streaming.py``).

Unlike ``generate``, the clamp context is entered once per forward call, not held for the whole answer: the lock is
free between tokens, so other sessions' passes can interleave and a consumer that stops reading (a cancelled job)
never leaves a hook or the lock behind. The clamp hooks are stateless per call, so this changes nothing in the maths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec, clamped
from engine.method.generation import GenerationConfig, prompt_ids

Side = Literal["base", "clamped"]
SIDES: tuple[Side, ...] = ("base", "clamped")


@dataclass
class PromptFit:
    """How a prompt fits the model's context."""

    n_prompt_tokens: int
    """Tokens of the chat-formatted prompt."""
    max_new_tokens: int
    """Tokens the answer may add."""
    n_ctx: int
    """The model's context length (its positional tables end there)."""


def check_prompt_fits(lm: LoadedModel, instruction: str, max_new_tokens: int) -> PromptFit:
    """The prompt's length against the context; a prompt (plus its answer) over the context is a LabError with both
    lengths."""
    if not instruction.strip():
        raise LabError("the prompt is empty: type a prompt first")
    n = len(prompt_ids(lm, [instruction])[0])
    n_ctx = int(lm.model.cfg.n_ctx)
    if n > n_ctx:
        raise LabError(f"the prompt is {n} tokens long (chat format included), over the model's context of {n_ctx} tokens; "
                       "shorten it")
    if n + max_new_tokens > n_ctx:
        raise LabError(f"the prompt is {n} tokens long (chat format included); with {max_new_tokens} new tokens that is "
                       f"{n + max_new_tokens}, over the model's context of {n_ctx} tokens; shorten the prompt or allow at most "
                       f"{n_ctx - n} new tokens")
    return PromptFit(n, max_new_tokens, n_ctx)


@dataclass
class StreamStep:
    """One side's state after one more token."""

    side: Side
    """``base`` (no clamp) or ``clamped``."""
    n_tokens: int
    """Answer tokens so far (the stop token not counted)."""
    text: str
    """The decoded answer so far."""
    done: bool
    """Whether this side has ended (a stop token, or ``max_new_tokens``)."""
    stop_id: int | None = None
    """The stop token that ended it (None while running or when the length cap did)."""
    token_ids: list[int] = field(default_factory=list)
    """The answer's token ids so far."""


class _Decoder:
    """One side's greedy or sampled decoding, one forward call per :meth:`step` (mirrors ``generation._decode_batch``)."""

    def __init__(self, lm: LoadedModel, ids: list[int], cfg: GenerationConfig, specs: Sequence[ClampSpec], side: Side):
        self.lm, self.cfg, self.specs, self.side = lm, cfg, list(specs), side
        self.stop = torch.tensor(sorted(lm.stop_ids), device=lm.device)
        self.gen = torch.Generator(device=lm.device).manual_seed(cfg.seed)  # generate(): seed + the batch's start (0)
        self.cache = TransformerLensKeyValueCache.init_cache(lm.model.cfg, lm.device, 1)
        self.ones = torch.ones((1, 1), dtype=torch.long, device=lm.device)
        self.answer: list[int] = []
        self.stop_id: int | None = None
        self.done = False
        self.steps = 0
        batch = lm.batch([ids])
        self.logits = self._forward(batch.tokens, batch.attention_mask)

    def _forward(self, tokens: Tensor, mask: Tensor) -> Float[Tensor, "1 d_vocab"]:
        with clamped(self.lm, self.specs), torch.no_grad():
            return self.lm.model(tokens, attention_mask=mask, past_kv_cache=self.cache)[:, -1]

    def step(self) -> StreamStep:
        cfg = self.cfg
        if cfg.do_sample:
            probs = torch.softmax(self.logits.float() / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=self.gen).squeeze(-1)
        else:
            nxt = self.logits.argmax(dim=-1)
        token = int(nxt[0])
        self.steps += 1
        if bool(torch.isin(nxt, self.stop)[0]):
            self.stop_id, self.done = token, True
        else:
            self.answer.append(token)
            self.done = self.steps >= cfg.max_new_tokens
        if not self.done:
            self.logits = self._forward(nxt[:, None], self.ones)
        return StreamStep(self.side, len(self.answer), self.lm.decode(self.answer), self.done, self.stop_id, list(self.answer))


def stream_side_by_side(
    lm: LoadedModel,
    instruction: str,
    specs: Sequence[ClampSpec],
    config: GenerationConfig | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[StreamStep]:
    """Base and clamped answers to ``instruction``, one token of each in turn; yields each side's state after each token.

    Refuses an empty clamp set and a prompt over the model's context (:func:`check_prompt_fits`) before any pass.
    ``cancel`` is checked before every token.
    """
    cfg = config or GenerationConfig()
    if not specs:
        raise LabError("the clamp set is empty: add features to it first")
    check_prompt_fits(lm, instruction, cfg.max_new_tokens)
    ids = prompt_ids(lm, [instruction])[0]
    decoders = [_Decoder(lm, ids, cfg, specs if side == "clamped" else (), side) for side in SIDES]
    while not all(d.done for d in decoders):
        for d in decoders:
            if cancel is not None and cancel.is_set():
                return
            if not d.done:
                yield d.step()
