"""Rebuilding the model, SAE and clamp a run was made with, from its ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.lm.loading import load_model
from engine.lm.models import LoadedModel
from engine.method.clamp import ClampSpec
from engine.method.clamp_sets import check_rows, load_clamp_set
from engine.method.judge import JudgeConfig
from engine.store.files import read_json


@dataclass
class RunContext:
    """What a run directory needs to continue: the model, its clamps and the judge it was judged with."""

    lm: LoadedModel
    specs: list[ClampSpec]
    judge: JudgeConfig
    config: dict


def open_run(run: Path, device: str | None = None, lm: LoadedModel | None = None, dtype: str | None = None) -> RunContext:
    """Load the model (unless given; on the run's device and number format unless told) and rebuild the clamps recorded
    in ``run/config.json``."""
    config = read_json(run / "config.json")
    if "clamps" not in config or "model" not in config:
        raise LabError(f"{run / 'config.json'} is not a flips run config (no model/clamps)")
    lm = lm or load_model(config["model"], device or config.get("device", "auto"), dtype or config.get("dtype", "auto"))
    specs = load_clamp_set(lm, check_rows(config["clamps"], str(run / "config.json")))
    return RunContext(lm, specs, JudgeConfig.from_json(config.get("judge")), config)
