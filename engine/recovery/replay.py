"""Replaying a perturbation during generation: prompt rows on the prompt pass, the shared row on every new token.

A perturbation is stored per prompt aligned to that prompt's own token positions (row 0, the attention sink,
is zero), so it can be replayed in any batch with any left padding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from engine.lm.models import Batch
from engine.method.generation import HookFactory
from engine.recovery.problem import Problem, delta_hook


@dataclass
class Perturbation:
    """δ of one prompt: ``rows`` ``[prompt_len, d_model]`` and an optional shared answer row ``gen`` ``[d_model]``."""

    rows: Float[Tensor, "prompt_len d_model"]
    gen: Float[Tensor, " d_model"] | None = None

    def norm(self) -> float:
        total = self.rows.pow(2).sum()
        if self.gen is not None:
            total = total + self.gen.pow(2).sum()
        return float(total.sqrt())


def perturbations_from_batch(problem: Problem, rows: torch.Tensor, gen: torch.Tensor | None) -> list[Perturbation]:
    """Cut batch tensors (left-padded, prompt+answer sequence) into per-prompt, prompt-aligned perturbations."""
    width = problem.tokens.shape[1]
    out = []
    for b, p_len in enumerate(problem.prompt_lens):
        seq_len = int(problem.attention_mask[b].sum())
        pad = width - seq_len
        r = (rows[b] * problem.prompt_rows[b][:, None])[pad : pad + p_len].detach().clone()
        out.append(Perturbation(r, gen[b].detach().clone() if gen is not None else None))
    return out


def batch_from_perturbations(problem: Problem, perts: list[Perturbation]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`perturbations_from_batch`: place prompt-aligned rows into the batch's padded layout."""
    n, width, d = problem.h_def.shape
    rows = problem.h_def.new_zeros((n, width, d))
    has_gen = any(p.gen is not None for p in perts)
    gen = problem.h_def.new_zeros((n, d)) if has_gen else None
    for b, (pert, p_len) in enumerate(zip(perts, problem.prompt_lens)):
        pad = width - int(problem.attention_mask[b].sum())
        rows[b, pad : pad + p_len] = pert.rows.to(rows)
        if gen is not None and pert.gen is not None:
            gen[b] = pert.gen.to(gen)
    return rows, gen


def replay_hooks(
    layer: int,
    perturbations: Mapping[int, Perturbation | None],
    transform: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor] | None = None,
) -> HookFactory:
    """Hooks adding each prompt's perturbation at ``blocks.layer.hook_resid_post`` during :func:`generate`.

    ``perturbations`` maps the index of a prompt in the list given to ``generate`` to its perturbation.
    ``transform(h_def, δ, indices)``, if given, replaces δ by a function of it computed in the live context (attribution
    replays one component of δ, decomposed at every position as the text is generated).
    """

    def factory(indices: list[int], batch: Batch):
        width = batch.tokens.shape[1]

        def hook(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            add = torch.zeros_like(act)
            for j, i in enumerate(indices):
                pert = perturbations.get(i)
                if pert is None:
                    continue
                if act.shape[1] > 1:  # the prompt pass
                    n = pert.rows.shape[0]
                    add[j, width - n :] = pert.rows.to(act)
                elif pert.gen is not None:  # one generated token
                    add[j, 0] = pert.gen.to(act)
            if transform is not None:
                add = transform(act, add, indices)
            return act + add

        return [(delta_hook(layer), hook)]

    return factory
