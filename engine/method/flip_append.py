"""Adding one prompt, with the base and clamped answers already generated (the playground's), to an existing flips run.

Append-only: the record goes to the end of ``flips.jsonl`` through :class:`~engine.store.files.JsonlWriter` (flushed and
fsynced), with the next free id, judged with the run's own judge lists; ``prompts.json`` gains the prompt at the end
and ``summary.json`` is recomputed over every record (both written atomically). Nothing already in the run changes.

The answers must be what the run itself would have generated, so the run must have been made with the same model, the
same clamp set and the same answer length (sampling is off in a flips run); anything else is refused naming what
differs. A run that has not finished (cancelled, or a job still writing it) is refused too, because a resume continues
from the prompt list's order. A new run with one prompt is ``engine.method.flips.write_flips_run``'s job (the one
writer of a fresh run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel, is_default_model
from engine.method.clamp import ClampSpec
from engine.method.flips import PROMPTS_FILE, FlipRecord, summarize_flips
from engine.method.generation import GenerationConfig
from engine.method.judge import JudgeConfig, judge
from engine.store.files import JsonlWriter, read_json, read_json_or_none, read_jsonl, write_json

logger = logging.getLogger(__name__)

ADDED_FROM = "playground"
"""The ``added_from`` field of an appended record (records a flips run generated itself have none)."""


def flip_from_texts(id: int, prompt: str, base_text: str, clamped_text: str, judge_cfg: JudgeConfig,
                    base_stop_id: int | None = None) -> FlipRecord:
    """A flips record of two given answers, judged as ``run_flips`` judges them."""
    vb, vc = judge(base_text, judge_cfg), judge(clamped_text, judge_cfg)
    return FlipRecord(id=id, prompt=prompt, base_text=base_text, clamped_text=clamped_text, base_refusal=vb.refusal,
                      clamped_refusal=vc.refusal, valid=(not vb.refusal) and vc.refusal, clamped_degenerate=vc.degenerate,
                      base_reasons=vb.to_json()["reasons"], clamped_reasons=vc.to_json()["reasons"], base_stop_id=base_stop_id)


def check_compatible(config: dict, lm: LoadedModel, specs: Sequence[ClampSpec], gen: GenerationConfig) -> None:
    """Refuse (LabError naming each difference) answers made otherwise than the run ``config`` makes its own."""
    problems = []
    made_with = config.get("model_id") or config.get("model")
    if not (made_with == lm.name or (is_default_model(made_with) and is_default_model(lm.name))):
        problems.append(f"it was made with model {made_with!r}, these answers with {lm.name!r}")
    ours = json.loads(json.dumps([s.to_json() for s in specs]))
    theirs = [{k: c.get(k) for k in ("hook", "features", "mode", "values")} for c in config.get("clamps") or []]
    if [{k: c[k] for k in ("hook", "features", "mode", "values")} for c in ours] != theirs:
        problems.append("its clamp set differs from the one used here")
    if config.get("max_new_tokens") != gen.max_new_tokens:
        problems.append(f"it generates {config.get('max_new_tokens')} new tokens, these answers {gen.max_new_tokens}")
    if gen.do_sample:
        problems.append("these answers were sampled, a flips run decodes greedily")
    if problems:
        raise LabError("cannot add to this flips run: " + "; ".join(problems) + ". Add to a new run instead")


def append_flip(run_dir: Path, lm: LoadedModel, specs: Sequence[ClampSpec], gen: GenerationConfig, prompt: str,
                base_text: str, clamped_text: str, base_stop_id: int | None = None) -> dict:
    """Append one prompt with its base and clamped answers to the flips run ``run_dir``; returns the new record."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "flips.jsonl").is_file():
        raise LabError(f"{run_dir.name} is not a flips run (no config.json or flips.jsonl)")
    if not prompt.strip():
        raise LabError("the prompt is empty")
    config = read_json(run_dir / "config.json")
    check_compatible(config, lm, specs, gen)
    records = read_jsonl(run_dir / "flips.jsonl")
    prompts = read_json_or_none(run_dir / PROMPTS_FILE)
    planned = len(prompts) if isinstance(prompts, list) else config.get("n_prompts")
    if isinstance(planned, int) and len(records) < planned:
        raise LabError(f"the flips run {run_dir.name} has {len(records)} of its {planned} prompts (it was stopped, or is still "
                       "running): resume it on the Flips page first, or add to a new run")
    judge_cfg = JudgeConfig.from_json(config.get("judge"))
    new_id = max((int(r["id"]) for r in records), default=-1) + 1
    row = {**flip_from_texts(new_id, prompt, base_text, clamped_text, judge_cfg, base_stop_id).to_json(), "added_from": ADDED_FROM}
    with JsonlWriter(run_dir / "flips.jsonl", append=True) as out:
        out.write(row)
    if isinstance(prompts, list):
        write_json(run_dir / PROMPTS_FILE, [*prompts, prompt])
    summary = summarize_flips([*records, row], specs)
    old = read_json_or_none(run_dir / "summary.json") or {}
    summary["cancelled"] = bool(old.get("cancelled", False))
    summary["n_added"] = int(old.get("n_added", 0)) + 1
    write_json(run_dir / "summary.json", summary)
    logger.info("appended prompt %d to %s (valid=%s)", new_id, run_dir, row["valid"])
    return row
