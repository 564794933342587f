"""A K sweep (the paper's Table 11): clamp the top-K features of the direction ranking, for several K.

For each K: the top-K (SAE, feature) pairs overall of one direction ranking (``engine.features.direction``) become
the clamp set; flips are run on the same prompts, so the valid set is recomputed per K; then the valid flips are
recovered. Writes ``<out>/k_<K>/`` (a complete flips run with its recovery record, named in the point) and ``<out>/ksweep.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import LabError
from engine.features.direction import DirectionResult
from engine.features.selection import SelectionConfig, select_clamp
from engine.lm.models import LoadedModel
from engine.method.flips import write_flips_run
from engine.method.generation import GenerationConfig
from engine.method.judge import JudgeConfig
from engine.recovery.config import RecoveryConfig, StepEvent
from engine.recovery.driver import run_recovery
from engine.recovery.sweep import POINT_KEYS
from engine.store.files import prepare_run_dir, write_json

logger = logging.getLogger(__name__)


def check_ks(ks: Sequence[int]) -> list[int]:
    """Distinct K ≥ 1, ascending; at least one."""
    if not ks:
        raise LabError("--ks needs at least one number of features")
    bad = [k for k in ks if k < 1]
    if bad:
        raise LabError(f"every K must be at least 1, got {bad[0]}")
    return sorted(set(int(k) for k in ks))


def run_ksweep(
    lm: LoadedModel, ranking: DirectionResult, ks: Sequence[int], prompts: Sequence[str], out: str | Path,
    select: SelectionConfig, recovery: RecoveryConfig, gen: GenerationConfig, judge_cfg: JudgeConfig | None = None,
    settings: dict | None = None, on_event: Callable[[StepEvent], None] | None = None, cancel: threading.Event | None = None,
) -> dict:
    """Flips and recovery per K (module docstring); returns and writes ``ksweep.json``."""
    ks = check_ks(ks)
    available = sum(len(r.rows) for r in ranking.rankings)
    if ks[-1] > available:
        raise LabError(f"K = {ks[-1]} exceeds the {available} ranked candidates; raise --candidates or lower --ks")
    judge_cfg = judge_cfg or JudgeConfig()
    root = prepare_run_dir(out)
    points: list[dict] = []
    result = {"ks": ks, "points": points, "recovery": recovery.to_json(), "selection": dataclasses.asdict(select)}
    for k in ks:
        if cancel is not None and cancel.is_set():
            break
        selection = select_clamp(ranking, dataclasses.replace(select, top_k=k, per="overall"))
        run = prepare_run_dir(root / f"k_{k}")
        flips = write_flips_run(lm, selection.specs, prompts, gen, judge_cfg, run,
                                {**(settings or {}), "ksweep_k": k, "source": "ksweep"}, cancel=cancel)
        point = {"k": k, "clamps": [{"hook": s.hook_name, "n": len(s.features)} for s in selection.specs],
                 "n_prompts": flips["n_prompts"], "n_valid": flips["n_valid"], "n_valid_fluent": flips["n_valid_fluent"],
                 "warnings": selection.warnings}
        if flips["n_valid"]:
            summary = run_recovery(run, recovery, lm=lm, on_event=on_event, cancel=cancel)
            point.update({key: summary[key] for key in POINT_KEYS if key != "n_valid"})
            point["recovery"] = summary["name"]
        else:
            logger.info("K = %d: no valid flips, nothing to recover", k)
        points.append(point)
        write_json(root / "ksweep.json", result)  # after every K, so a stopped sweep keeps what it finished
    write_json(root / "ksweep.json", result)
    return result
