"""A budget sweep: recovery of the same valid flips at several budgets (0 = the defended model, no δ).

A sweep is one record ``RUN/recoveries/<name>/`` (``engine.store.records``) holding ``budget_<B>/`` (each a full
recovery file set) and ``sweep.json`` (one point per finished budget).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.recovery.config import ADDED_FIELDS, RecoveryConfig, StepEvent
from engine.recovery.driver import recover_into, recovery_settings, resolve_delta_layer
from engine.scale.config import LOCAL, ExecutorConfig
from engine.scale.streams import Progress
from engine.store.context import open_run
from engine.store.files import existing_run, read_json, write_json
from engine.store.records import CONFIG_FILE, check_name, check_resume, start_or_resume
from engine.store.valid_set import valid_flips

POINT_KEYS = ("n_valid", "non_refusal_recovery", "base_like_recovery", "strict_base_like_recovery", "mean_drift",
              "mean_floor_violation", "mean_delta_rel_norm", "drift_per_layer", "drift_per_layer_all_positions",
              "floor_violation_per_layer", "kept_over_threshold", "ci")
"""The summary keys each sweep point keeps."""


def check_budgets(budgets: Sequence[float]) -> list[float]:
    """Budgets as floats, each finite and ≥ 0; at least one."""
    if not budgets:
        raise LabError("--budgets needs at least one number")
    for b in budgets:
        if not math.isfinite(b) or b < 0:
            raise LabError(f"sweep budgets must be finite and ≥ 0, got {b}")
    return [float(b) for b in budgets]


def run_sweep(run_dir: str | Path, budgets: Sequence[float], cfg: RecoveryConfig, lm: LoadedModel | None = None,
              limit: int | None = None, on_event: Callable[[StepEvent], None] | None = None,
              cancel: threading.Event | None = None, name: str | None = None, resume: bool = False,
              valid: str = "judge", exe: ExecutorConfig = LOCAL, progress: Progress | None = None) -> dict:
    """Recovery at each budget into one sweep record; returns and writes its ``sweep.json`` (after every budget).

    ``resume``: continue the sweep ``name`` (default: the newest): finished budgets are kept, the unfinished one
    continues from its last whole batch.
    """
    budgets = check_budgets(budgets)
    run = existing_run(run_dir, "flips.jsonl")
    flips = valid_flips(run, limit, valid)
    if name is not None:
        check_name(name)
    ctx = open_run(run, lm=lm)
    layer = resolve_delta_layer(cfg, ctx.specs, ctx.lm.n_layers)
    settings = {**recovery_settings(cfg, layer, flips, valid, limit, False), "budgets": list(budgets)}
    settings.pop("budget")
    settings.pop("zero_delta")
    out = start_or_resume(run, name, "sweep", settings, resume, ADDED_FIELDS, cfg.unused_fields())
    points = []
    sweep = {"budgets": list(budgets), "budget_kind": cfg.budget_kind, "budget_relative": cfg.budget_relative,
             "projection": cfg.projection, "valid": valid, "points": points}
    for b in budgets:
        if cancel is not None and cancel.is_set():
            break
        point_cfg = dataclasses.replace(cfg, budget=b if b > 0 else 1.0)
        point_dir = out / f"budget_{b:g}"
        point_dir.mkdir(exist_ok=True)
        point_settings = recovery_settings(point_cfg, layer, flips, valid, limit, b == 0)
        saved = point_dir / CONFIG_FILE
        if saved.is_file():
            check_resume({**ADDED_FIELDS, **read_json(saved)}, point_settings, f"budget {b:g} of sweep {out.name!r}",
                         point_cfg.unused_fields())
        else:
            write_json(saved, point_settings)
        summary = recover_into(point_dir, run, ctx, flips, point_cfg, point_settings, on_event, cancel, exe, progress)
        if summary["cancelled"]:
            break
        points.append({"budget": b, **{k: summary[k] for k in POINT_KEYS}})
        write_json(out / "sweep.json", sweep)
    write_json(out / "sweep.json", sweep)
    return {**sweep, "name": out.name, "dir": str(out)}
