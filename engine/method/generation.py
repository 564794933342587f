"""Batched generation (left padding + attention mask, KV cache), base or clamped, streamed per prompt.

Greedy by default; seeded sampling on request. Hooks (the clamp, a replayed δ) stay attached for the whole
prompt pass and every generated token: with a KV cache each forward call after the first carries exactly one
new position, which is how a hook tells a generated token from the prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from engine.errors import LabError
from engine.lm.models import Batch, LoadedModel
from engine.method.clamp import ClampSpec, Hook, clamped

HookFactory = Callable[[list[int], Batch], Sequence[Hook]]
"""Given the prompt indices of a batch and its tokens, the extra hooks to attach (e.g. a δ to replay)."""


@dataclass
class GenerationConfig:
    """How to decode."""

    max_new_tokens: int = 64
    """Answer length cap in tokens."""
    batch_size: int = 8
    """Prompts per forward pass."""
    do_sample: bool = False
    """Greedy (False) or sampling (True)."""
    temperature: float = 1.0
    """Sampling temperature (ignored when greedy)."""
    seed: int = 0
    """Seed of the sampling generator (the same seed gives the same texts)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LabError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise LabError(f"batch size must be at least 1, got {self.batch_size}")
        if self.do_sample and not self.temperature > 0:
            raise LabError(f"temperature must be positive, got {self.temperature}")


@dataclass
class Generated:
    """One prompt's answer."""

    index: int
    text: str
    token_ids: list[int]
    stop_id: int | None = None
    """The stop token that ended the answer (EOS / end of turn), None when ``max_new_tokens`` cut it off."""


def prompt_ids(lm: LoadedModel, instructions: Sequence[str]) -> list[list[int]]:
    """Chat-formatted token ids, one list per instruction."""
    return [lm.encode(lm.chat_prompt(p)) for p in instructions]


def generate(
    lm: LoadedModel,
    instructions: Sequence[str],
    config: GenerationConfig | None = None,
    specs: Sequence[ClampSpec] = (),
    extra_hooks: HookFactory | None = None,
    cancel: threading.Event | None = None,
    token_ids: Sequence[list[int]] | None = None,
) -> Iterator[Generated]:
    """Answer each instruction, with the clamps in ``specs`` active throughout; yields in prompt order.

    ``token_ids`` replaces the chat-formatted instructions with ready token lists (e.g. with soft-token slots).
    """
    cfg = config or GenerationConfig()
    ids = [list(t) for t in token_ids] if token_ids is not None else prompt_ids(lm, instructions)
    stop = torch.tensor(sorted(lm.stop_ids), device=lm.device)
    for start in range(0, len(ids), cfg.batch_size):
        if cancel is not None and cancel.is_set():
            return
        rows = list(range(start, min(start + cfg.batch_size, len(ids))))
        batch = lm.batch([ids[i] for i in rows])
        hooks = extra_hooks(rows, batch) if extra_hooks else ()
        gen = torch.Generator(device=lm.device).manual_seed(cfg.seed + start)
        with clamped(lm, specs, hooks), torch.no_grad():
            out, stops = _decode_batch(lm, batch, cfg, stop, gen)
        for row, toks, stop_id in zip(rows, out, stops):
            yield Generated(index=row, text=lm.decode(toks), token_ids=toks, stop_id=stop_id)


def _decode_batch(
    lm: LoadedModel, batch: Batch, cfg: GenerationConfig, stop: torch.Tensor, gen: torch.Generator
) -> tuple[list[list[int]], list[int | None]]:
    model = lm.model
    n = batch.tokens.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, lm.device, n)
    logits = model(batch.tokens, attention_mask=batch.attention_mask, past_kv_cache=cache)[:, -1]  # [batch, d_vocab]
    done = torch.zeros(n, dtype=torch.bool, device=lm.device)
    answers: list[list[int]] = [[] for _ in range(n)]
    stops: list[int | None] = [None] * n
    ones = torch.ones((n, 1), dtype=torch.long, device=lm.device)
    for step in range(cfg.max_new_tokens):
        if cfg.do_sample:
            probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        else:
            nxt = logits.argmax(dim=-1)
        is_stop = torch.isin(nxt, stop)
        for i in range(n):
            if done[i]:
                continue
            if is_stop[i]:
                stops[i] = int(nxt[i])
            else:
                answers[i].append(int(nxt[i]))
        done |= is_stop
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        logits = model(nxt[:, None], attention_mask=ones, past_kv_cache=cache)[:, -1]
    return answers, stops
