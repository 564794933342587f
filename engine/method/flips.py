"""Valid flips: prompts the base model answers but the clamped model refuses.

``valid = ¬refusal(base_text) ∧ refusal(clamped_text)``, judged on the whole texts (``engine.method.judge``).
:func:`write_flips_run` is the one writer of a flips run directory: the CLI and the dashboard both call it, so
either can continue a run the other started.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.errors import LabError
from engine.lm.dtypes import dtype_name
from engine.lm.gpu import oom_guard
from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import JudgeConfig, judge
from engine.scale.config import LOCAL, ExecutorConfig
from engine.services.progress import ProgressFn, report
from engine.store.files import JsonlWriter, read_json, resume_records, write_json


@dataclass
class FlipRecord:
    """One prompt, answered with and without the clamp (``flips.jsonl``, docs/CLI.md)."""

    id: int
    prompt: str
    base_text: str
    clamped_text: str
    base_refusal: bool
    clamped_refusal: bool
    valid: bool
    clamped_degenerate: bool
    base_reasons: list
    clamped_reasons: list
    base_stop_id: int | None = None
    """Token that ended the base answer (None: cut at max_new_tokens); recovery targets it after the answer."""

    def to_json(self) -> dict:
        return asdict(self)


def run_flips(
    lm: LoadedModel,
    specs: Sequence[ClampSpec],
    prompts: Sequence[str],
    gen: GenerationConfig | None = None,
    judge_cfg: JudgeConfig | None = None,
    cancel: threading.Event | None = None,
    start_at: int = 0,
    on_progress: ProgressFn | None = None,
) -> Iterator[FlipRecord]:
    """Base and clamped answers, judged, streamed one prompt at a time (in batches of ``gen.batch_size``).

    ``start_at``: skip the first prompts (a resume; a multiple of the batch size, so batches stay the same).
    ``on_progress``: answers generated (2 per prompt), reported as each base or clamped batch finishes; the base
    answers of a batch come with the report (``items``), before their clamped answers exist.
    """
    gen = gen or GenerationConfig()
    judge_cfg = judge_cfg or JudgeConfig()
    total, n_batches = 2 * len(prompts), -(-len(prompts) // gen.batch_size)
    for start in range(start_at, len(prompts), gen.batch_size):
        if cancel is not None and cancel.is_set():
            return
        chunk = list(prompts[start : start + gen.batch_size])
        where = f"batch {start // gen.batch_size + 1}/{n_batches}"
        report(on_progress, "base answers", 2 * start, total, "answers", where)
        base = list(generate(lm, chunk, gen, cancel=cancel))
        verdicts = [judge(b.text, judge_cfg) for b in base]
        pending = [{"id": start + b.index, "prompt": chunk[b.index], "base_text": b.text, "base_refusal": v.refusal,
                    "base_reasons": v.to_json()["reasons"]} for b, v in zip(base, verdicts)]
        report(on_progress, "clamped answers", 2 * start + len(base), total, "answers", where, pending)
        clamped = list(generate(lm, chunk, gen, specs=specs, cancel=cancel))
        if len(clamped) < len(base):  # cancelled inside the clamped pass
            return
        for b, c, vb in zip(base, clamped, verdicts):
            vc = judge(c.text, judge_cfg)
            yield FlipRecord(
                id=start + b.index,
                prompt=chunk[b.index],
                base_text=b.text,
                clamped_text=c.text,
                base_refusal=vb.refusal,
                clamped_refusal=vc.refusal,
                valid=(not vb.refusal) and vc.refusal,
                clamped_degenerate=vc.degenerate,
                base_reasons=vb.to_json()["reasons"],
                clamped_reasons=vc.to_json()["reasons"],
                base_stop_id=b.stop_id,
            )
        end = 2 * (start + len(chunk))
        report(on_progress, "base answers" if end < total else "saving", end, total, "answers",
               f"batch {start // gen.batch_size + 2}/{n_batches}" if end < total else "")


def flips_shard(worker, prompts: list[str], first_id: int, gen_json: dict) -> list[dict]:
    """One Ray shard (``engine.scale.worker``): the flip records of ``prompts``, ids counted from ``first_id``."""
    ctx = worker.ctx
    rows = [rec.to_json() for rec in run_flips(ctx.lm, ctx.specs, prompts, GenerationConfig(**gen_json), ctx.judge)]
    for row in rows:
        row["id"] += first_id  # ids are prompt indices in the whole run
    return rows


def summarize_flips(records: Sequence[FlipRecord | dict], specs: Sequence[ClampSpec]) -> dict:
    """Counts for ``summary.json``."""
    rows = [r.to_json() if isinstance(r, FlipRecord) else r for r in records]
    valid = [r for r in rows if r["valid"]]
    first = specs[0] if specs else None
    return {
        "n_prompts": len(rows),
        "n_valid": len(valid),
        "n_base_refusal": sum(r["base_refusal"] for r in rows),
        "n_clamped_refusal": sum(r["clamped_refusal"] for r in rows),
        "n_valid_fluent": sum(not r["clamped_degenerate"] for r in valid),
        "n_valid_degenerate": sum(r["clamped_degenerate"] for r in valid),
        "features": first.features if first else [],
        "mode": first.mode if first else None,
        "value": first.values if first else None,
        "clamps": [s.to_json() for s in specs],
    }


def write_flips_run(
    lm: LoadedModel,
    specs: Sequence[ClampSpec],
    prompts: Sequence[str],
    gen: GenerationConfig,
    judge_cfg: JudgeConfig,
    run_dir: Path,
    settings: dict,
    cancel: threading.Event | None = None,
    on_record: Callable[[dict], None] | None = None,
    resume: bool = False,
    exe: ExecutorConfig | None = None,
    progress=None,
    on_progress: ProgressFn | None = None,
) -> dict:
    """Run base vs clamped on ``prompts`` into ``run_dir`` (``config.json``, ``flips.jsonl``, ``summary.json``).

    ``settings`` adds to ``config.json`` (model load name, prompt source, limit, ``source``: cli or dashboard).
    Returns the summary. A cancelled run keeps the records it finished and still gets a summary. A folder that
    already holds flips is refused unless ``resume``: then the settings must match, whole finished batches are kept
    and the rest is run. ``on_progress``: answers generated (:func:`run_flips`; with Ray, per finished record).
    """
    if not prompts:
        raise LabError("no prompts to run")
    config = {
        "command": "flips", "model": settings.get("model", lm.name), "model_id": lm.name, "sae": specs[0].sae.source,
        "device": str(lm.device), "dtype": dtype_name(lm.dtype), "seed": gen.seed, "max_new_tokens": gen.max_new_tokens, "batch_size": gen.batch_size,
        "clamps": [s.to_json() for s in specs], "judge": judge_cfg.to_json(), "created": time.time(),
        "n_prompts": len(prompts), **{k: v for k, v in settings.items() if k not in ("model",)},
    }
    records = _start_or_resume(run_dir, config, prompts, gen.batch_size, resume)
    from engine.scale.streams import counted, sharded

    exe = exe or LOCAL
    if exe.is_ray:
        gen_json = asdict(gen)
        stream = sharded(run_dir, exe, flips_shard, list(range(len(records), len(prompts))), gen.batch_size,
                         lambda first, ids: ([prompts[i] for i in ids], ids[0], gen_json), None, cancel, progress)
    else:
        stream = (rec.to_json() for rec in run_flips(lm, specs, prompts, gen, judge_cfg, cancel, len(records), on_progress))
    with JsonlWriter(run_dir / "flips.jsonl", append=True) as out, oom_guard("flips generation", gen.batch_size, lambda: len(records)):
        for row in counted(stream, progress):
            out.write(row)
            records.append(row)
            if on_record is not None:
                on_record(row)
            if exe.is_ray:
                report(on_progress, "answers from the workers", 2 * len(records), 2 * len(prompts), "answers")
    summary = summarize_flips(records, specs)
    summary["cancelled"] = len(records) < len(prompts)
    write_json(run_dir / "summary.json", summary)
    return summary


_RESUME_IGNORED = ("created", "device", "dtype", "source")
PROMPTS_FILE = "prompts.json"
"""The run's prompts, in order, saved when it starts."""
_CONFIG_OWN = ("command", "model_id", "sae", "device", "dtype", "seed", "max_new_tokens", "batch_size", "clamps", "judge", "created")
"""``config.json`` keys :func:`write_flips_run` fills itself; the rest came from its ``settings``."""


def resume_flips_run(run_dir: Path, lm: LoadedModel, cancel: threading.Event | None = None,
                     on_record: Callable[[dict], None] | None = None, exe: ExecutorConfig | None = None,
                     on_progress: ProgressFn | None = None) -> dict:
    """Continue an interrupted flips run from its own files (``config.json``, ``prompts.json``): no settings needed."""
    from engine.store.context import open_run

    run_dir = Path(run_dir)
    if not (run_dir / PROMPTS_FILE).is_file():
        raise LabError(f"{run_dir} does not hold its prompts ({PROMPTS_FILE}; runs made before it was saved): resume it "
                       "with `python -m engine flips --resume` and the same prompts and settings")
    prompts = read_json(run_dir / PROMPTS_FILE)
    ctx = open_run(run_dir, lm=lm)
    config = ctx.config
    gen = GenerationConfig(max_new_tokens=config["max_new_tokens"], batch_size=config["batch_size"], seed=config["seed"])
    settings = {k: v for k, v in config.items() if k not in _CONFIG_OWN}
    return write_flips_run(lm, ctx.specs, prompts, gen, ctx.judge, run_dir, settings, cancel, on_record, resume=True, exe=exe,
                           on_progress=on_progress)


def _start_or_resume(run_dir: Path, config: dict, prompts: Sequence[str], batch_size: int, resume: bool) -> list[dict]:
    """Write ``config.json`` for a fresh run, or check it and return the records a resume keeps."""
    from engine.store.records import check_resume

    exists = (run_dir / "flips.jsonl").exists()
    if not resume:
        if exists:
            raise LabError(f"{run_dir} already holds a flips run; resume it, or write to a new folder")
        write_json(run_dir / PROMPTS_FILE, list(prompts))  # so the run can be resumed (and re-read) without its source
        write_json(run_dir / "config.json", config)
        return []
    if not (run_dir / "config.json").is_file():
        raise LabError(f"{run_dir} has no flips run to resume (no config.json)")
    saved = read_json(run_dir / "config.json")
    if isinstance(saved.get("judge"), dict):  # a run saved before a judge setting existed gets that setting's default
        saved["judge"] = JudgeConfig.from_json(saved["judge"]).to_json()
    check_resume({k: v for k, v in saved.items() if k not in _RESUME_IGNORED},
                 {k: v for k, v in json.loads(json.dumps(config)).items() if k not in _RESUME_IGNORED}, f"the flips run {run_dir}")
    return resume_records(run_dir / "flips.jsonl", list(range(len(prompts))), batch_size)
