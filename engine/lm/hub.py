"""Reachability of the model hub, answered in seconds, never a hang."""

import functools
import logging
import os

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
