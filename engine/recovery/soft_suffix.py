"""The soft-suffix baseline: optimise k soft-token embeddings appended to the instruction instead of δ.

Sequence: ``chat prefix ‖ instruction ‖ [k soft tokens] ‖ end of user turn ‖ assistant header ‖ answer[:-1]``.
The soft tokens replace the embeddings at k placeholder positions (a hook on ``hook_embed``); the whole model runs
every step (the perturbation enters at layer 0), with every clamp active. Each soft token's norm is kept at or
below the largest token-embedding norm, so the suffix stays within the range of real tokens. Drift is pooled over
the answer positions, which line up with the unsuffixed defended run because both are left-padded.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence

import torch

from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec, clamped
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import JudgeConfig
from engine.recovery import metrics
from engine.recovery.config import PromptResult, RecoveryConfig, StepEvent
from engine.recovery.problem import target_answer
from engine.recovery.replay import Perturbation


def suffixed_ids(lm: LoadedModel, instruction: str, k: int) -> tuple[list[int], list[int]]:
    """Token ids with k placeholder slots after the instruction, and the slot positions."""
    text = lm.chat_prompt(instruction)
    cut = text.rfind(instruction) + len(instruction)
    head = lm.encode(text[:cut])
    tail = lm.encode_answer(text[cut:]) if text[cut:] else []
    return head + [lm.pad_id] * k + tail, list(range(len(head), len(head) + k))


def _forward(lm, specs, tokens, mask, slots, soft):
    """Log-probs ``[batch, pos, vocab]`` and the defended features ``[batch, pos, Σ|S|]``."""
    captured: list[torch.Tensor] = []

    def put_soft(act, hook):  # noqa: ARG001
        if soft is None:
            return act
        act = act.clone()
        for b, pos in enumerate(slots):
            act[b, pos] = soft[b].to(act)
        return act

    def capture(spec):
        return lambda act, hook: captured.append(spec.sae.encode(act)[..., spec.features])

    hooks = [("hook_embed", put_soft)] + [(s.hook_name, capture(s)) for s in specs]
    with clamped(lm, specs, hooks):
        logits = lm.model(tokens, attention_mask=mask)
    return logits.log_softmax(-1), torch.cat(captured, dim=-1)


def recover_with_suffix(
    lm: LoadedModel,
    specs: Sequence[ClampSpec],
    flips: Sequence[dict],
    cfg: RecoveryConfig,
    judge_cfg: JudgeConfig,
    on_event: Callable[[StepEvent], None] | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[PromptResult, Perturbation]]:
    """Soft-suffix recovery, one prompt at a time (sequences differ in length before the answer)."""
    w_e = lm.model.W_E.detach()
    max_norm = float(w_e.norm(dim=-1).max())
    gen = torch.Generator().manual_seed(cfg.seed)
    for f in flips:
        if cancel is not None and cancel.is_set():
            return
        answer = target_answer(lm, f, cfg.answer_tokens)
        ids, slots = suffixed_ids(lm, f["prompt"], cfg.suffix_tokens)
        plain = lm.encode(lm.chat_prompt(f["prompt"]))
        n_ans = len(answer)
        with torch.enable_grad():
            batch = lm.batch([ids + answer[:-1], plain + answer[:-1]])
            tok, mask = batch.tokens, batch.attention_mask
            pad = tok.shape[1] - len(ids) - n_ans + 1
            target = torch.tensor(answer, device=lm.device)
            with torch.no_grad():
                logp_def, z_def_all = _forward(lm, specs, tok[1:], mask[1:], [], None)
            z_def = z_def_all[0, -n_ans:]
            lp_def = float(logp_def[0, -n_ans:].gather(-1, target[:, None]).sum())
            init = torch.randint(0, w_e.shape[0], (cfg.suffix_tokens,), generator=gen)
            soft = w_e[init.to(w_e.device)].clone()[None].requires_grad_(True)  # [1, k, d_model]
            opt = torch.optim.Adam([soft], lr=cfg.lr)
            best, best_loss, best_step = soft.detach().clone(), math.inf, -1
            losses, drifts = [], []
            my_slots = [[pad + s for s in slots]]
            for step in range(cfg.steps + 1):
                if cancel is not None and cancel.is_set():
                    return
                logp, z = _forward(lm, specs, tok[:1], mask[:1], my_slots, soft)
                lp = logp[0, -n_ans:].gather(-1, target[:, None])[:, 0]
                stage = "boundary" if step < cfg.boundary_steps else "answer"
                loss = -lp[0] if stage == "boundary" else -cfg.answer_weight * lp.mean()
                dr = float(metrics.drift(z[:, -n_ans:].detach(), z_def[None]))
                losses.append(float(loss))
                drifts.append(dr)
                if on_event is not None:
                    fv = float(metrics.floor_violation(z[:, -n_ans:].detach(), z_def[None]))
                    on_event(StepEvent(step, int(f["id"]), float(loss), dr, fv, float(soft.detach().norm()), stage))
                if stage == "answer" and dr <= cfg.effective_drift_threshold and float(loss) < best_loss:
                    best, best_loss, best_step = soft.detach().clone(), float(loss), step
                if step == cfg.steps:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    soft.mul_((max_norm / soft.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0))
            if best_step < 0:  # nothing met the drift threshold: keep the last step, flagged by best_step = -1
                best = soft.detach().clone()
            with torch.no_grad():
                logp, z = _forward(lm, specs, tok[:1], mask[:1], my_slots, best)
                lp_rec = float(logp[0, -n_ans:].gather(-1, target[:, None]).sum())
                z_rec = z[:, -n_ans:]
        def factory(indices, gbatch, soft=best, ids=ids, slots=slots):  # noqa: ARG001
            offset = gbatch.tokens.shape[1] - len(ids)

            def hook(act, hook):  # noqa: ARG001
                if act.shape[1] == 1:  # generated tokens carry no soft slots
                    return act
                act = act.clone()
                act[0, [offset + s for s in slots]] = soft[0].to(act)
                return act

            return [("hook_embed", hook)]

        out = next(generate(lm, [f["prompt"]], GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=1),
                            specs=specs, extra_hooks=factory, token_ids=[ids]))
        yield PromptResult.judged(
            f, out.text, judge_cfg, drift=float(metrics.drift(z_rec, z_def[None])[0]),
            floor_violation=float(metrics.floor_violation(z_rec, z_def[None])[0]),
            delta_rel_norm=float(best.norm() / w_e[torch.tensor(ids, device=w_e.device)].norm()), delta_norm=float(best.norm()),
            budget_abs=max_norm, best_step=best_step, base_logprob_def=lp_def, base_logprob_rec=lp_rec,
            loss_history=losses, drift_history=drifts, within_threshold=best_step >= 0,
        ), Perturbation(best[0].cpu(), None)
