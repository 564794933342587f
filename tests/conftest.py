"""Shared fixtures: a tiny random model and SAEs (fast), and the real default model (``slow``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_lm():
    from engine.lm.tiny import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_jumprelu(tiny_lm):
    """A JumpReLU SAE at blocks.1.hook_resid_post of the tiny model."""
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    sae = tiny_sae(tiny_lm.d_model, d_sae=64, hook_name="blocks.1.hook_resid_post", architecture="jumprelu", seed=1)
    return LoadedSAE(sae, "tiny", "blocks.1.hook_resid_post")


@pytest.fixture(scope="session")
def orthonormal_sae(tiny_lm):
    """A JumpReLU SAE whose decoder rows are orthonormal (d_sae < d_in), so W_dec[S] ⟂ W_enc[:, j∉S]."""
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    sae = tiny_sae(tiny_lm.d_model, d_sae=16, hook_name="blocks.1.hook_resid_post", architecture="jumprelu", seed=2)
    q, _ = torch.linalg.qr(torch.randn(tiny_lm.d_model, 16, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.threshold.fill_(0.0)
    return LoadedSAE(sae, "tiny", "blocks.1.hook_resid_post")


@pytest.fixture(scope="session")
def default_lm():
    from engine.lm.loading import load_model

    return load_model("default", "cpu")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "alpaca_harmless.json").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp, pointed at by the env and by huggingface_hub's constants (read at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
