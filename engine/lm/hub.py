"""Reachability of the model hub, answered in seconds, never a hang; and what its local cache holds (files only)."""

import functools
import logging
import os
from pathlib import Path

import requests

logger = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` or ``SAE_LAB_OFFLINE=1`` answers False without touching the network.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("SAE_LAB_OFFLINE") == "1":
        return False
    try:
        requests.head(HUB_URL, timeout=timeout)
    except requests.RequestException as exc:
        logger.info("hub unreachable: %s", type(exc).__name__)
        return False
    return True


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``/``HF_HOME``), read at call time so a changed setting is seen."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_file(repo_id: str, filename: str) -> Path | None:
    """The cached copy of ``repo_id``'s ``filename`` (main revision), or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None
