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


def test_bf16_batched_generation_on_cuda():
    """bf16 on CUDA: batched greedy decoding runs, stays bf16 end to end, and matches one-by-one decoding on most
    prompts (bf16 rounding differs between batch shapes, so a near-tie may flip; at least 3 of 4 must agree)."""
    from engine.lm.loading import load_model
    from engine.method.generation import GenerationConfig, generate

    lm = load_model("tiny", "cuda", "bfloat16")
    assert lm.model.W_E.dtype == torch.bfloat16 and lm.device.type == "cuda"
    prompts = ["hi", "tell me a story about a long river", "why?", "count to ten please"]
    batched = list(generate(lm, prompts, GenerationConfig(max_new_tokens=8, batch_size=4)))
    single = [next(generate(lm, [p], GenerationConfig(max_new_tokens=8, batch_size=1))) for p in prompts]
    assert [g.index for g in batched] == [0, 1, 2, 3] and all(g.token_ids for g in batched)
    assert sum(a.token_ids == b.token_ids for a, b in zip(batched, single)) >= 3


def test_batched_recovery_on_cuda_matches_batch_one():
    """Recovery at batch 8 on CUDA gives the records of batch 1 (same losses, drift and texts within tolerance)."""
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_model, tiny_sae
    from engine.method.clamp import ClampSpec
    from engine.method.generation import GenerationConfig, generate
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import recover_flips

    lm = tiny_model(seed=0, device="cuda")
    sae = tiny_sae(lm.d_model, 64, "blocks.1.hook_resid_post", seed=1).to("cuda")
    spec = ClampSpec(LoadedSAE(sae, "tiny", "blocks.1.hook_resid_post"), [0, 1, 2], "set", [8.0])
    prompts = ["hi there", "tell me a story", "why is the sky blue", "a", "count to five", "name a colour",
               "what is two plus two", "say something kind"]
    base = list(generate(lm, prompts, GenerationConfig(max_new_tokens=8, batch_size=8)))
    flips = [{"id": i, "prompt": p, "base_text": b.text, "clamped_text": ""} for i, (p, b) in enumerate(zip(prompts, base))]
    runs = {}
    for batch in (1, 8):
        cfg = RecoveryConfig(budget=10.0, steps=10, max_new_tokens=8, drift_threshold=math.inf, batch_size=batch)
        runs[batch] = [r for r, _ in recover_flips(lm, [spec], flips, cfg)]
    assert [r.id for r in runs[8]] == [r.id for r in runs[1]] == list(range(8))
    for a, b in zip(runs[1], runs[8]):
        assert abs(a.loss_history[-1] - b.loss_history[-1]) <= 1e-3 * max(1.0, abs(a.loss_history[-1]))
        assert abs(a.drift - b.drift) <= 1e-4
    assert sum(a.recovered_text == b.recovered_text for a, b in zip(runs[1], runs[8])) >= 7
