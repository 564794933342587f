"""A budget sweep: recovery of the same valid flips at several budgets (0 = the defended model, no δ).

Writes ``sweep/budget_<B>/`` (each a full recovery record set) and ``sweep.json`` (one point per budget).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.recovery.config import RecoveryConfig, StepEvent
from engine.recovery.driver import run_recovery
from engine.store.context import open_run
from engine.store.files import existing_run, write_json

POINT_KEYS = ("n_valid", "non_refusal_recovery", "base_like_recovery", "strict_base_like_recovery", "mean_drift",
              "mean_floor_violation", "mean_delta_rel_norm", "ci")
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
              cancel: threading.Event | None = None) -> dict:
    """Recovery at each budget; returns and writes ``sweep.json``."""
    budgets = check_budgets(budgets)
    run = existing_run(run_dir, "flips.jsonl")
    ctx_lm = lm or open_run(run).lm
    points = []
    for b in budgets:
        if cancel is not None and cancel.is_set():
            break
        point_cfg = dataclasses.replace(cfg, budget=b if b > 0 else 1.0)
        summary = run_recovery(run, point_cfg, lm=ctx_lm, on_event=on_event, cancel=cancel, limit=limit,
                               out_dir=run / "sweep" / f"budget_{b:g}", zero_delta=b == 0)
        points.append({"budget": b, **{k: summary[k] for k in POINT_KEYS}})
    sweep = {"budgets": list(budgets), "budget_kind": cfg.budget_kind, "budget_relative": cfg.budget_relative,
             "projection": cfg.projection, "points": points}
    write_json(run / "sweep.json", sweep)
    return sweep
