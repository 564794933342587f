"""Where the lab keeps caches and runs. Both are overridable by environment variables."""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """User cache (dequantized model weights). ``SAE_LAB_CACHE`` overrides ``~/.cache/sae-recovery-lab``."""
    env = os.environ.get("SAE_LAB_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sae-recovery-lab"
    base.mkdir(parents=True, exist_ok=True)
    return base


def data_dir() -> Path:
    """Runs and the label database. ``SAE_LAB_DATA`` overrides ``./data``."""
    base = Path(os.environ.get("SAE_LAB_DATA", "data"))
    base.mkdir(parents=True, exist_ok=True)
    return base

DEFAULT_SAE_DIR = PACKAGE_DIR / "default_sae"
"""Package data: the shipped SAEs for the default model, one sae_lens folder per hook, plus ``manifest.json``."""
