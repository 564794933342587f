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
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap

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
        with clamped(lm, specs, hooks), torch.inference_mode():
            decoded = _decode_batch(lm, batch, cfg, stop, gen)
        for row, toks, stop_id in zip(rows, decoded.answers, decoded.stops):
            yield Generated(index=row, text=lm.decode(toks), token_ids=toks, stop_id=stop_id)


@dataclass
class DecodedBatch:
    """The answers of one batch, in row order."""

    answers: list[list[int]]
    """Generated token ids per row, without the stop token."""
    stops: list[int | None]
    """The stop token that ended each row, None when ``max_new_tokens`` cut it off."""


def _next_logits(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"],
    cache: TransformerLensKeyValueCache,
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits of the last position only: every block runs (and every hook fires) on all positions, but the final
    norm and the unembedding only on the last one (the prompt pass otherwise unembeds every prompt position)."""
    resid = model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)[:, -1:]
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)  # [batch, 1, d_model]
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)[:, -1]


def _decode_batch(
    lm: LoadedModel, batch: Batch, cfg: GenerationConfig, stop: torch.Tensor, gen: torch.Generator
) -> DecodedBatch:
    """KV-cache decoding of one left-padded batch; the picked tokens stay on the device until the batch ends.

    A row that stopped keeps being fed its own argmax (it is never read again), so a batch decodes until its longest
    answer ends; finished rows are marked in a token table, read back once at the end (no per-token host sync but
    the one that ends the loop early).
    """
    model = lm.model
    n = batch.tokens.shape[0]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, lm.device, n)
    table = torch.full((n, cfg.max_new_tokens), -1, dtype=torch.long, device=lm.device)  # -1: after the row stopped
    done = torch.zeros(n, dtype=torch.bool, device=lm.device)
    ones = torch.ones((n, 1), dtype=torch.long, device=lm.device)
    logits = _next_logits(model, batch.tokens, batch.attention_mask, cache)  # [batch, d_vocab]
    for step in range(cfg.max_new_tokens):
        if cfg.do_sample:
            probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        else:
            nxt = logits.argmax(dim=-1)
        table[:, step] = torch.where(done, -1, nxt)
        done |= torch.isin(nxt, stop)
        if step == cfg.max_new_tokens - 1 or bool(done.all()):
            break
        logits = _next_logits(model, nxt[:, None], ones, cache)
    stop_set = {int(s) for s in stop.tolist()}
    answers: list[list[int]] = []
    stops: list[int | None] = []
    for row in table.tolist():
        toks: list[int] = []
        stop_id = None
        for t in row:
            if t < 0:
                break
            if t in stop_set:
                stop_id = t
                break
            toks.append(t)
        answers.append(toks)
        stops.append(stop_id)
    return DecodedBatch(answers, stops)
