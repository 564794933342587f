"""Shared setup for the benchmarks: the default model, a layer-15 clamp, prompts, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = ROOT.parent / "shared" / "data"


def prompts(n: int) -> tuple[list[str], str]:
    """The first n Alpaca harmless instructions when ../shared/data is present, else our built-in list."""
    path = SHARED / "alpaca_harmless.json"
    if path.is_file():
        return [r["instruction"] for r in json.loads(path.read_text())[:n]], "alpaca_harmless.json"
    from engine.method.builtin_prompts import HARMLESS

    return HARMLESS[:n], "builtin:harmless"


def default_clamp(lm):
    """The shipped default SAE's preset clamp; a random 576→4608 SAE at layer 15 when none is shipped."""
    from engine.errors import LabError
    from engine.lm.sae_sources import load_sae
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae
    from engine.method.clamp import ClampSpec
    from engine.method.presets import resolve_clamp

    try:
        sae = load_sae("default", lm)
        return resolve_clamp(sae, "auto"), "default SAE preset"
    except LabError:
        sae = LoadedSAE(tiny_sae(lm.d_model, 4608, "blocks.15.hook_resid_post"), "random", "blocks.15.hook_resid_post")
        return ClampSpec(sae, list(range(10)), "set", [20.0]), "random SAE, 10 features set to 20"


def write(name: str, data: dict) -> Path:
    import torch

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    data = {**data, "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return path
