"""The CUDA path. Skipped without a GPU (CI never has one); run on a lent GPU machine."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def test_recovery_on_cuda_matches_cpu():
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_model, tiny_sae
    from engine.method.clamp import ClampSpec
    from engine.method.generation import GenerationConfig, generate
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import recover_flips

    results = {}
    for device in ("cpu", "cuda"):
        lm = tiny_model(seed=0, device=device)
        sae = tiny_sae(lm.d_model, 64, "blocks.1.hook_resid_post", seed=1).to(device)
        spec = ClampSpec(LoadedSAE(sae, "tiny", "blocks.1.hook_resid_post"), [0, 1, 2], "set", [8.0])
        prompts = ["hi there", "tell me a story"]
        base = list(generate(lm, prompts, GenerationConfig(max_new_tokens=8)))
        flips = [{"id": i, "prompt": p, "base_text": b.text, "clamped_text": ""} for i, (p, b) in enumerate(zip(prompts, base))]
        cfg = RecoveryConfig(budget=10.0, steps=10, max_new_tokens=8, drift_threshold=math.inf)
        results[device] = [r for r, _ in recover_flips(lm, [spec], flips, cfg)]
    for a, b in zip(results["cpu"], results["cuda"]):
        assert abs(a.loss_history[-1] - b.loss_history[-1]) < 1e-2 * max(1.0, abs(a.loss_history[-1]))
        assert b.drift < 1e-4


def test_default_model_on_cuda_generates():
    from engine.lm.loading import load_model
    from engine.method.generation import GenerationConfig, generate

    lm = load_model("default", "cuda")
    out = next(generate(lm, ["What is the capital of France?"], GenerationConfig(max_new_tokens=12)))
    assert "Paris" in out.text
