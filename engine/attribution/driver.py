"""Replaying each component of δ alone under the active clamp: generation, judge, base log-prob gain.

Reads one recovery record's ``recovery.jsonl``, ``recovery_config.json`` and ``deltas/`` (``RUN/recoveries/<name>/``);
writes into the same record ``attribution.jsonl`` (one record per recovered prompt), ``attribution_config.json`` and ``attribution_summary.json`` (counts per component, mean log-prob gains with
95 % intervals, and the paper's numbers beside ours).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from engine.attribution.components import COMPONENTS, component, top_features
from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.sae_sources import load_sae
from engine.lm.saes import LoadedSAE
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import JudgeConfig, base_likeness, judge
from engine.recovery.objective import DeltaObjective
from engine.recovery.problem import build_problem, delta_hook
from engine.recovery.replay import Perturbation, batch_from_perturbations, replay_hooks
from engine.scale.config import LOCAL, ExecutorConfig
from engine.services.progress import ProgressFn, report
from engine.store.context import open_run
from engine.store.files import JsonlWriter, existing_run, read_json, read_jsonl, resume_records, write_json
from engine.store.records import check_resume, get_record

logger = logging.getLogger(__name__)

PAPER = {"n": 24, "full": 23, "residual": 23, "non_clamped": 2, "topk": 1, "clamped": 0, "knockout": 21}
"""Cui, Shen, Yang (2026), gemma-2-2b-it + Gemma Scope, AdvBench strict-valid flips: non-refusal counts."""


ATTRIBUTION_BATCH = 4
"""Records replayed together (a resume redoes a whole batch)."""


def check_top_k(top_k: int) -> int:
    """k of the top-k component: a count ≥ 0 (its upper bound, d_sae, is checked once the SAE is known)."""
    if top_k < 0:
        raise LabError(f"--top-k must be ≥ 0, got {top_k}")
    return top_k


def load_perturbation(run: Path, flip_id: int) -> Perturbation:
    from safetensors.torch import load_file

    path = run / "deltas" / f"{flip_id}.safetensors"
    if not path.is_file():
        raise LabError(f"{path} is missing; re-run `recover` for this run")
    t = load_file(str(path))
    return Perturbation(t["rows"], t.get("gen"))


def attribution_sae(specs: Sequence[ClampSpec], layer: int, given: LoadedSAE | None,
                    top_k: int = 0) -> tuple[LoadedSAE, list[int]]:
    """The SAE δ is decomposed through (the paper's choice: the one at δ's layer) and its clamped features.

    The clamped SAE at δ's hook when there is one; otherwise ``given`` (``--sae``), which must read δ's hook.
    ``top_k`` is checked against its width.
    """
    hook = delta_hook(layer)
    same_layer = [s for s in specs if s.hook_name == hook]
    if same_layer:
        sae = same_layer[0].sae
        if given is not None and given.source != sae.source:
            raise LabError(f"δ's layer already has the clamped SAE {sae.source}; attribution goes through it, so drop --sae")
        feats = sorted({f for s in same_layer if s.sae is sae for f in s.features})
    elif given is None:
        raise LabError(f"δ sits at {hook}, where no clamped SAE reads; pass --sae SPEC with an SAE at {hook} to attribute through it")
    elif given.hook_name != hook:
        raise LabError(f"the SAE {given.source} reads {given.hook_name}, but δ sits at {hook}")
    else:
        sae, feats = given, []
    if top_k > sae.d_sae:
        raise LabError(f"--top-k {top_k} exceeds the SAE's d_sae={sae.d_sae}")
    return sae, feats


def attribute_batch(
    lm: LoadedModel, specs: Sequence[ClampSpec], records: Sequence[dict], perts: Sequence[Perturbation], layer: int,
    answer_tokens: int, top_k: int, max_new_tokens: int, judge_cfg: JudgeConfig, components: Sequence[str] = COMPONENTS,
    sae: LoadedSAE | None = None, on_component: Callable[[str], None] | None = None,
) -> list[dict]:
    """Attribution records for one batch of recovered prompts (``sae``: for a δ layer with no clamped SAE).

    ``on_component(name)``: called as each component's replay of the whole batch finishes.
    """
    with torch.no_grad():
        problem = build_problem(lm, specs, records, answer_tokens, layer)
        objective = DeltaObjective(lm, specs, problem)
        sae, clamped_feats = attribution_sae(specs, layer, sae, top_k)
        rows, gen = batch_from_perturbations(problem, list(perts))
        delta = objective.perturbation(rows, gen)  # [batch, pos, d_model]
        moved = problem.pooled & (delta.abs().sum(-1) > 0)
        tops = [top_features(sae, clamped_feats, problem.h_def[b], delta[b], moved[b], top_k) for b in range(len(records))]
        top_idx = [[t.index for t in tb] for tb in tops]
        mask = problem.target_mask
        lp_def = (objective.defended_eval.logp * mask).sum(1)
        out = [{"id": int(r["id"]), "prompt": r["prompt"], "layer": layer, "top_k": top_k,
                "top_features": [asdict(t) for t in tops[b]], "delta_norm": perts[b].norm(), "components": {}}
               for b, r in enumerate(records)]
        for name in components:
            parts = torch.stack([component(name, sae, clamped_feats, top_idx[b], problem.h_def[b], delta[b]) for b in range(len(records))])
            gain = (objective.evaluate_full(parts).logp * mask).sum(1) - lp_def
            norms = (parts * problem.pooled[..., None]).flatten(1).norm(dim=1)

            def transform(act, add, indices, name=name):
                return torch.stack([component(name, sae, clamped_feats, top_idx[i], act[j], add[j]) for j, i in enumerate(indices)])

            hooks = replay_hooks(layer, dict(enumerate(perts)), transform)
            texts = list(generate(lm, [r["prompt"] for r in records], GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(records)),
                                  specs=specs, extra_hooks=hooks))
            for b, r in enumerate(records):
                verdict = judge(texts[b].text, judge_cfg)
                like = base_likeness(texts[b].text, r["base_text"], judge_cfg, verdict)
                out[b]["components"][name] = {"non_refusal": like.non_refusal, "base_like": like.base_like,
                                              "base_logprob_gain": float(gain[b]), "norm": float(norms[b]), "text": texts[b].text}
            if on_component is not None:
                on_component(name)
    return out


def summarize_attribution(records: Sequence[dict], components: Sequence[str] = COMPONENTS) -> dict:
    n = len(records)
    summary: dict = {"n": n, "components": {}, "paper": PAPER}
    for name in components:
        rows = [r["components"][name] for r in records if name in r["components"]]
        gains = [c["base_logprob_gain"] for c in rows]
        mean = sum(gains) / len(gains) if gains else 0.0
        sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)) if len(gains) > 1 else 0.0
        half = 1.96 * sd / math.sqrt(len(gains)) if gains else 0.0
        summary["components"][name] = {
            "non_refusal": sum(c["non_refusal"] for c in rows), "base_like": sum(c["base_like"] for c in rows),
            "mean_base_logprob_gain": mean, "gain_ci95": [mean - half, mean + half],
        }
    return summary


def attribute_records(
    lm: LoadedModel, specs: Sequence[ClampSpec], record_dir: Path, records: Sequence[dict], top_k: int, judge_cfg: JudgeConfig,
    batch_size: int = ATTRIBUTION_BATCH, cancel: threading.Event | None = None, on_record: Callable[[dict], None] | None = None,
    sae: LoadedSAE | None = None, on_progress: ProgressFn | None = None, done_before: int = 0,
    total: int | None = None,
) -> Iterator[dict]:
    """Attribution records of ``records``, batch by batch. ``on_progress``: component replays done (one per example and
    component), reported as each component of a batch finishes; ``done_before`` / ``total``: examples already
    attributed (a resume) and the whole run's examples (default: ``records``)."""
    cfg = read_json(record_dir / "recovery_config.json")
    n_total = (total if total is not None else len(records)) * len(COMPONENTS)
    if cfg.get("method") == "soft-suffix":
        raise LabError("a soft-suffix run has no residual δ to decompose; attribute a δ recovery run")
    for start in range(0, len(records), batch_size):
        if cancel is not None and cancel.is_set():
            return
        chunk = list(records[start : start + batch_size])
        perts = [load_perturbation(record_dir, int(r["id"])) for r in chunk]
        first = (done_before + start) * len(COMPONENTS)
        replayed: list[str] = []
        where = f"examples {done_before + start + 1}–{done_before + start + len(chunk)}"

        def component_done(name: str, first=first, chunk=chunk, replayed=replayed, where=where) -> None:
            replayed.append(name)
            nxt = COMPONENTS[len(replayed)] if len(replayed) < len(COMPONENTS) else None
            report(on_progress, f"replaying {nxt}" if nxt else "judging", first + len(replayed) * len(chunk), n_total, "replays", where)

        report(on_progress, f"replaying {COMPONENTS[0]}", first, n_total, "replays", where)
        for rec in attribute_batch(lm, specs, chunk, perts, int(cfg["delta_layer"]), int(cfg["answer_tokens"]), top_k,
                                   int(cfg["max_new_tokens"]), judge_cfg, sae=sae, on_component=component_done):
            if on_record is not None:
                on_record(rec)
            yield rec


def attribute_shard(worker, record_dir: str, records: list[dict], top_k: int) -> list[dict]:
    """One Ray shard (``engine.scale.worker``): the attribution records of ``records``."""
    ctx = worker.ctx
    return list(attribute_records(ctx.lm, ctx.specs, Path(record_dir), records, top_k, ctx.judge, sae=worker.sae))


def run_attribution(run_dir: str | Path, top_k: int = 10, lm: LoadedModel | None = None, limit: int | None = None,
                    cancel: threading.Event | None = None, on_record: Callable[[dict], None] | None = None,
                    sae_spec: str | None = None, recovery: str | None = None, resume: bool = False,
                    exe: ExecutorConfig = LOCAL, progress=None, on_progress: ProgressFn | None = None) -> dict:
    """Attribute every recovered prompt of one recovery record and write its two attribution files.

    ``recovery``: the record's name (default: the newest recovery of the run; the result names it). ``sae_spec``: an
    SAE at δ's layer, needed only when no clamp of the run reads that layer. ``resume``: continue an interrupted
    attribution of that record with the same settings; without it an existing attribution is never overwritten.
    ``on_progress``: component replays done (:func:`attribute_records`; with Ray, per finished example).
    """
    check_top_k(top_k)
    run = existing_run(run_dir, "flips.jsonl")
    record = get_record(run, recovery, "recovery")
    out = record.path
    if not (out / "recovery.jsonl").is_file():
        raise LabError(f"recovery {record.name!r} has no recovered flips yet; run or resume it first")
    if record.config.get("method") == "soft-suffix":
        raise LabError("a soft-suffix run has no residual δ to decompose; attribute a δ recovery run")
    records = read_jsonl(out / "recovery.jsonl", torn_tail=True)
    if not records:
        raise LabError(f"{out / 'recovery.jsonl'} is empty; nothing to attribute")
    if limit is not None:
        records = records[:limit]
    settings = {"top_k": top_k, "sae": sae_spec, "limit": limit, "flip_ids": [int(r["id"]) for r in records]}
    saved = out / "attribution_config.json"
    if (out / "attribution.jsonl").exists() and not resume:
        raise LabError(f"recovery {record.name!r} already has an attribution; resume it (same settings), or attribute "
                       "another recovery")
    if saved.is_file() and resume:
        check_resume(read_json(saved), settings, f"the attribution of {record.name!r}")
    ctx = open_run(run, lm=lm)
    sae = load_sae(sae_spec, ctx.lm) if sae_spec else None
    attribution_sae(ctx.specs, int(record.config.get("delta_layer", -1)), sae, top_k)  # bad input fails before any file
    write_json(saved, settings)
    done = resume_records(out / "attribution.jsonl", settings["flip_ids"], ATTRIBUTION_BATCH)
    from engine.scale.streams import counted, sharded

    todo = records[len(done):]
    if exe.is_ray:
        stream = sharded(run, exe, attribute_shard, todo, ATTRIBUTION_BATCH, lambda first, chunk: (str(out), chunk, top_k),
                         None, cancel, progress, sae_spec)
    else:
        stream = attribute_records(ctx.lm, ctx.specs, out, todo, top_k, ctx.judge, cancel=cancel, sae=sae,
                                   on_progress=on_progress, done_before=len(done), total=len(records))
    with JsonlWriter(out / "attribution.jsonl", append=True) as fh:
        for rec in counted(stream, progress):
            fh.write(rec)
            done.append(rec)
            if on_record is not None:
                on_record(rec)
            if exe.is_ray:
                report(on_progress, "replaying on the workers", len(done) * len(COMPONENTS), len(records) * len(COMPONENTS), "replays")
            logger.info("attributed flip %d", rec["id"])
    summary = summarize_attribution(done)
    summary.update(top_k=top_k, sae=sae.source if sae is not None else None, recovery=record.name,
                   valid=record.config.get("valid", "judge"), n_total=len(records), cancelled=len(done) < len(records))
    write_json(out / "attribution_summary.json", summary)
    return {**summary, "dir": str(out)}
