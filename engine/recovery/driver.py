"""Recovering the valid flips of a run directory: batches, generation with the kept δ, judging, files.

Each recovery is its own record ``RUN/recoveries/<name>/`` (``engine.store.records``): ``recovery.jsonl``
(docs/CLI.md), ``recovery_summary.json``, ``recovery_config.json`` and one ``deltas/<id>.safetensors`` per prompt
(``rows`` aligned to the prompt's tokens, optional ``gen``). A killed recovery resumes from its last whole batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from engine.lm.gpu import oom_guard
from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import JudgeConfig
from engine.recovery import metrics
from engine.recovery.config import ADDED_FIELDS, PromptResult, RecoveryConfig, StepEvent
from engine.recovery.objective import DeltaObjective
from engine.recovery.optimize import DeltaResult, optimize_delta
from engine.recovery.problem import build_problem, check_delta_layer, default_delta_layer
from engine.recovery.replay import Perturbation, perturbations_from_batch, replay_hooks
from engine.scale.config import LOCAL, ExecutorConfig
from engine.scale.streams import Progress, counted, sharded
from engine.services.progress import PhaseFn, ProgressFn, StepCounter
from engine.store.context import RunContext, open_run
from engine.store.files import JsonlWriter, existing_run, read_json_or_none, resume_records, write_json
from engine.store.records import CONFIG_FILE, check_name, start_or_resume
from engine.store.valid_set import valid_flips

logger = logging.getLogger(__name__)


def resolve_delta_layer(cfg: RecoveryConfig, specs: Sequence[ClampSpec], n_layers: int) -> int:
    """``cfg.delta_layer``, checked, or the lowest clamped layer."""
    if cfg.delta_layer is None:
        return default_delta_layer(specs)
    return check_delta_layer(specs, cfg.delta_layer, n_layers)


def _per_prompt(by_layer: dict[str, torch.Tensor], n: int) -> list[dict[str, float]]:
    """``{hook: [batch]}`` → one ``{hook: value}`` per prompt."""
    return [{h: float(v[b]) for h, v in by_layer.items()} for b in range(n)]


def recover_flips(
    lm: LoadedModel,
    specs: Sequence[ClampSpec],
    flips: Sequence[dict],
    cfg: RecoveryConfig,
    judge_cfg: JudgeConfig | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
    cancel: threading.Event | None = None,
    zero_delta: bool = False,
    on_phase: PhaseFn | None = None,
) -> Iterator[tuple[PromptResult, Perturbation]]:
    """Recover each flip; yields results batch by batch. ``zero_delta``: skip optimisation (a budget of 0).

    ``on_phase(phase, detail, finished)``: called as each phase of a batch starts (``preparing``, ``optimising``,
    ``generating recovered answers``), and with the batch's prompt ids in ``finished`` once its results are yielded.
    """
    judge_cfg = judge_cfg or JudgeConfig()
    phase = on_phase or (lambda *_: None)
    if cfg.method == "soft-suffix":
        from engine.recovery.soft_suffix import recover_with_suffix

        phase("optimising soft suffixes", f"{len(flips)} prompts, one at a time", ())
        yield from recover_with_suffix(lm, specs, flips, cfg, judge_cfg, on_event, cancel)
        return
    layer = resolve_delta_layer(cfg, specs, lm.n_layers)
    n_batches = -(-len(flips) // cfg.batch_size)
    for start in range(0, len(flips), cfg.batch_size):
        if cancel is not None and cancel.is_set():
            return
        chunk = list(flips[start : start + cfg.batch_size])
        where = f"batch {start // cfg.batch_size + 1}/{n_batches}"
        phase("preparing", where, ())
        with torch.enable_grad():  # worker threads start with the thread-local grad mode off in some callers
            problem = build_problem(lm, specs, chunk, cfg.answer_tokens, layer)
            objective = DeltaObjective(lm, specs, problem, cfg.constraint_positions)
            h_norms = problem.h_def.norm(dim=-1)  # [batch, pos]
            median = torch.stack([h_norms[b][problem.pooled[b]].median() for b in range(len(chunk))])
            budget = cfg.budget * median if cfg.budget_relative else torch.full_like(median, cfg.budget)
            if zero_delta:
                rows = torch.zeros_like(problem.h_def)
                gen = None
                res = DeltaResult(rows, gen, [0] * len(chunk), [True] * len(chunk), [[] for _ in chunk], [[] for _ in chunk], False)
            else:
                phase("optimising", where, ())
                res = optimize_delta(objective, cfg, budget, on_event, cancel)
            if res.cancelled:
                return
            with torch.no_grad():
                ev_rec = objective.evaluate(res.rows, res.gen)
                drift = metrics.drift(ev_rec.z, objective.z_def)
                floor = metrics.floor_violation(ev_rec.z, objective.z_def)
                answer = problem.answer_rows
                per_layer = _per_prompt(objective.drift_by_layer(ev_rec.z, answer), len(chunk))
                per_layer_all = _per_prompt(objective.drift_by_layer(ev_rec.z), len(chunk))
                floor_per_layer = _per_prompt(objective.floor_by_layer(ev_rec.z, answer), len(chunk))
                pert = objective.perturbation(res.rows, res.gen)
                pooled = problem.pooled[..., None]
                rel = (pert * pooled).flatten(1).norm(dim=1) / (problem.h_def * pooled).flatten(1).norm(dim=1)
                mask = problem.target_mask
                lp_rec = (ev_rec.logp * mask).sum(1)
                lp_def = (objective.defended_eval.logp * mask).sum(1)
        phase("generating recovered answers", where, ())
        perts = perturbations_from_batch(problem, res.rows, res.gen)
        gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=len(chunk))
        hooks = replay_hooks(layer, dict(enumerate(perts)))
        texts = list(generate(lm, [f["prompt"] for f in chunk], gen_cfg, specs=specs, extra_hooks=hooks))
        for b, f in enumerate(chunk):
            result = PromptResult.judged(
                f, texts[b].text, judge_cfg, drift=float(drift[b]), floor_violation=float(floor[b]), delta_rel_norm=float(rel[b]),
                delta_norm=perts[b].norm(), budget_abs=float(budget[b]), best_step=res.best_step[b], base_logprob_def=float(lp_def[b]),
                base_logprob_rec=float(lp_rec[b]), loss_history=res.loss_history[b], drift_history=res.drift_history[b],
                drift_per_layer=per_layer[b], drift_per_layer_all_positions=per_layer_all[b], floor_violation_per_layer=floor_per_layer[b],
                drift_per_layer_history=res.drift_per_layer_history[b] if res.drift_per_layer_history else {},
                within_threshold=bool(res.within_threshold[b]),
            )
            yield result, perts[b]
        phase("saving" if start + len(chunk) >= len(flips) else "preparing", where, [int(f["id"]) for f in chunk])


def recover_shard(worker, flips: list[dict], cfg_json: dict, zero_delta: bool) -> list[tuple]:
    """One Ray shard (``engine.scale.worker``): ``(record, δ rows, δ gen)`` per flip, events streamed to the driver."""
    ctx = worker.ctx
    results = recover_flips(ctx.lm, ctx.specs, flips, RecoveryConfig.from_json(cfg_json), ctx.judge,
                            lambda ev: worker.emit(asdict(ev)), None, zero_delta)
    return [(r.to_json(), p.rows.cpu(), p.gen.cpu() if p.gen is not None else None) for r, p in results]


def recovery_settings(cfg: RecoveryConfig, layer: int, flips: Sequence[dict], valid: str, limit: int | None,
                      zero_delta: bool) -> dict:
    """What ``recovery_config.json`` records; a resume must match it (``engine.store.records.check_resume``)."""
    return {**cfg.to_json(), "delta_layer": layer, "zero_delta": zero_delta, "valid": valid, "limit": limit,
            "flip_ids": [int(f["id"]) for f in flips]}


def recover_into(
    out: Path,
    run: Path,
    ctx: RunContext,
    flips: Sequence[dict],
    cfg: RecoveryConfig,
    settings: dict,
    on_event: Callable[[StepEvent], None] | None = None,
    cancel: threading.Event | None = None,
    exe: ExecutorConfig = LOCAL,
    progress: Progress | None = None,
    on_progress: ProgressFn | None = None,
) -> dict:
    """Recover ``flips`` into the record folder ``out`` (``settings``: :func:`recovery_settings`), continuing whatever whole batches it already holds.

    ``on_progress``: optimisation steps done (``steps`` per prompt, :class:`~engine.services.progress.StepCounter`)
    and the phase of the current batch.

    Each δ is saved before its record line, so a record always has its δ. The summary is recomputed from every
    record of the folder, old and new.
    """
    from safetensors.torch import save_file

    (out / "deltas").mkdir(parents=True, exist_ok=True)
    layer = resolve_delta_layer(cfg, ctx.specs, ctx.lm.n_layers)
    ids = [int(f["id"]) for f in flips]
    records = resume_records(out / "recovery.jsonl", ids, cfg.batch_size)
    if records:
        logger.info("%s: %d of %d flips already recovered; continuing", out.name, len(records), len(flips))
    todo = list(flips[len(records):])
    zero = settings["zero_delta"]
    counter = StepCounter(len(flips), cfg.steps, on_progress, done_prompts=len(records))

    def step_event(ev: StepEvent) -> None:
        if on_event is not None:
            on_event(ev)
        counter(ev.prompt_id, ev.step)

    counter.phase("preparing" if todo else "saving", f"{len(records)} of {len(flips)} prompts already recovered" if records else "", ())
    if exe.is_ray:
        counter.phase("optimising on the workers", "", ())
        stream = sharded(run, exe, recover_shard, todo, cfg.batch_size, lambda first, chunk: (chunk, cfg.to_json(), zero),
                         lambda d: step_event(StepEvent(**d)), cancel, progress)
    else:
        stream = ((r.to_json(), p.rows, p.gen)
                  for r, p in recover_flips(ctx.lm, ctx.specs, todo, cfg, ctx.judge, step_event, cancel, zero, counter.phase))
    with JsonlWriter(out / "recovery.jsonl", append=True) as fh, oom_guard("recovery", cfg.batch_size, lambda: len(records)):
        for rec, rows, gen in counted(stream, progress):
            tensors = {"rows": rows.cpu().contiguous()}
            if gen is not None:
                tensors["gen"] = gen.cpu().contiguous()
            tmp = out / "deltas" / f"{rec['id']}.safetensors.tmp"
            save_file(tensors, str(tmp), metadata={"layer": str(layer)})
            tmp.replace(out / "deltas" / f"{rec['id']}.safetensors")
            fh.write(rec)
            records.append(rec)
            if exe.is_ray:
                counter.phase("optimising on the workers", f"{len(records)}/{len(flips)} prompts recovered", [rec["id"]])
            logger.info("recovered flip %d: non_refusal=%s drift=%.4f", rec["id"], rec["non_refusal"], rec["drift"])
    # a resume may differ in settings the method does not read (RecoveryConfig.unused_fields): the summary keeps the
    # record's own values of those, as recovery_config.json does
    saved = read_json_or_none(out / CONFIG_FILE) or {}
    kept = {k: saved[k] for k in cfg.unused_fields() if k in saved}
    summary = metrics.summarize(records, {**cfg.to_json(), "delta_layer": layer, **kept})
    summary.update(n_total=len(flips), cancelled=len(records) < len(flips), valid=settings["valid"])
    write_json(out / "recovery_summary.json", summary)
    return summary


def run_recovery(
    run_dir: str | Path,
    cfg: RecoveryConfig,
    lm: LoadedModel | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
    cancel: threading.Event | None = None,
    limit: int | None = None,
    name: str | None = None,
    resume: bool = False,
    valid: str = "judge",
    zero_delta: bool = False,
    exe: ExecutorConfig = LOCAL,
    progress: Progress | None = None,
    on_progress: ProgressFn | None = None,
) -> dict:
    """Recover the valid flips of ``run_dir`` into a new record ``recoveries/<name>/`` (or resume one).

    ``resume``: continue the record ``name`` (default: the newest recovery) with the same settings. Returns the
    summary with the record's ``name`` and ``dir``.
    """
    run = existing_run(run_dir, "flips.jsonl")
    flips = valid_flips(run, limit, valid)
    if name is not None:
        check_name(name)
    ctx = open_run(run, lm=lm)
    layer = resolve_delta_layer(cfg, ctx.specs, ctx.lm.n_layers)
    settings = recovery_settings(cfg, layer, flips, valid, limit, zero_delta)
    out = start_or_resume(run, name, "recovery", settings, resume, ADDED_FIELDS, cfg.unused_fields())
    summary = recover_into(out, run, ctx, flips, cfg, settings, on_event, cancel, exe, progress, on_progress)
    return {**summary, "name": out.name, "dir": str(out)}
