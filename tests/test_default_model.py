"""The real offline default model (SmolLM2-135M-Instruct). Marked slow; run in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_loads_offline_with_expected_shape(default_lm):
    cfg = default_lm.model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (30, 576, 9, 3)
    assert default_lm.has_chat_template and default_lm.stop_ids


def test_greedy_answer_is_sensible(default_lm):
    from engine.method.generation import GenerationConfig, generate

    out = next(generate(default_lm, ["What is the capital of France?"], GenerationConfig(max_new_tokens=12)))
    assert "Paris" in out.text


def test_error_term_splice_reproduces_logits(default_lm):
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae
    from engine.method.clamp import ClampSpec, clamped

    sae = LoadedSAE(tiny_sae(576, d_sae=256, hook_name="blocks.15.hook_resid_post", seed=0), "tiny", "blocks.15.hook_resid_post")
    toks = torch.tensor([default_lm.encode(default_lm.chat_prompt("Name three rivers."))])
    with torch.no_grad():
        base = default_lm.model(toks)
        with clamped(default_lm, [ClampSpec(sae, list(range(32)), "multiply", [1.0])]):
            spliced = default_lm.model(toks)
    torch.testing.assert_close(spliced, base, atol=1e-4, rtol=0)


def test_cli_flips_with_a_local_random_sae(tmp_path):
    from engine.lm.tiny import tiny_sae

    folder = tmp_path / "sae"
    tiny_sae(576, d_sae=128, hook_name="blocks.15.hook_resid_post", model_name="SmolLM2-135M-Instruct").save_model(folder)
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "flips", "--prompts", "builtin:harmless", "--limit", "2", "--sae", str(folder),
         "--features", "0,1", "--mode", "set", "--value", "50", "--max-new-tokens", "12", "--out", str(run)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_prompts"] == 2
    assert {p.name for p in run.iterdir()} >= {"config.json", "flips.jsonl", "summary.json"}
    assert len((run / "flips.jsonl").read_text().splitlines()) == 2
