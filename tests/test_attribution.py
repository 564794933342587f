"""Attribution: the components add back to δ, replay reproduces outputs, and a planted residual path."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.attribution.components import component, top_features
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.store.records import get_record


def test_components_add_back_to_delta(tiny_jumprelu):
    gen = torch.Generator().manual_seed(0)
    h = 2 * torch.randn(7, 32, generator=gen)
    delta = torch.randn(7, 32, generator=gen)
    S = [0, 1, 2]
    pooled = torch.ones(7, dtype=torch.bool)
    top = [t.index for t in top_features(tiny_jumprelu, S, h, delta, pooled, 5)]
    parts = {n: component(n, tiny_jumprelu, S, top, h, delta) for n in ("clamped", "non_clamped", "topk", "residual", "knockout", "full")}
    torch.testing.assert_close(parts["clamped"] + parts["non_clamped"] + parts["residual"], delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(parts["knockout"] + parts["topk"], delta, atol=1e-5, rtol=0)
    assert torch.equal(parts["full"], delta)
    # top-k is a subset of the non-clamped features: non_clamped = topk + (the other non-clamped features)
    assert len(top) == 5 and not set(top) & set(S)
    z0 = tiny_jumprelu.encode(h)
    dz = tiny_jumprelu.encode(h + delta) - z0
    rest = torch.ones(64)
    rest[S] = 0
    rest[top] = 0
    others = tiny_jumprelu.decode(z0 + dz * rest) - tiny_jumprelu.decode(z0)
    torch.testing.assert_close(parts["topk"] + others, parts["non_clamped"], atol=1e-5, rtol=0)
    assert parts["residual"].norm() > 1e-3 and parts["non_clamped"].norm() > 1e-3


@pytest.fixture(scope="module")
def recovered_run(tiny_lm, tmp_path_factory):
    """A tiny run: flips (all marked valid), then recovery with the encoder projection."""
    from engine.cli.main import main

    run = tmp_path_factory.mktemp("attr") / "run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "3", "--model", "tiny", "--sae", "tiny",
                 "--features", "0,1,2", "--value", "8", "--max-new-tokens", "8", "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    for r in rows:
        r["valid"] = True
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["recover", "--run", str(run), "--steps", "15", "--budget", "10", "--max-new-tokens", "8"]) == 0
    return run


def test_attribute_cli_writes_files_and_full_replay_reproduces_recovery(recovered_run, capsys):
    from engine.cli.main import main

    capsys.readouterr()
    assert main(["attribute", "--run", str(recovered_run), "--top-k", "4"]) == 0
    record = get_record(recovered_run).path
    summary = json.loads((record / "attribution_summary.json").read_text())
    assert summary["n"] == 3 and set(summary["components"]) >= {"full", "clamped", "non_clamped", "topk", "residual", "knockout"}
    assert summary["recovery"] == record.name
    recs = [json.loads(x) for x in (record / "attribution.jsonl").read_text().splitlines()]
    recovered = {r["id"]: r for r in map(json.loads, (record / "recovery.jsonl").read_text().splitlines())}
    for rec in recs:
        assert rec["components"]["full"]["text"] == recovered[rec["id"]]["recovered_text"]
        assert len(rec["top_features"]) <= 4
        for c in rec["components"].values():
            assert {"non_refusal", "base_logprob_gain"} <= set(c)
        # the encoder projection keeps δz_S = 0, so the clamped component is exactly nothing
        assert abs(rec["components"]["clamped"]["base_logprob_gain"]) < 1e-3
        assert rec["components"]["full"]["base_logprob_gain"] > 0


def test_zero_replay_reproduces_the_defended_output(tiny_lm, tiny_jumprelu):
    from engine.recovery.replay import Perturbation, replay_hooks

    spec = ClampSpec(tiny_jumprelu, [0, 1], "set", [8.0])
    prompts = ["hi there", "tell me a story"]
    defended = [g.text for g in generate(tiny_lm, prompts, GenerationConfig(max_new_tokens=8), specs=[spec])]
    perts = {i: Perturbation(torch.randn(len(tiny_lm.encode(tiny_lm.chat_prompt(p))), 32), torch.randn(32)) for i, p in enumerate(prompts)}

    def zero(act, add, indices):
        return torch.stack([component("zero", tiny_jumprelu, [0, 1], [], act[j], add[j]) for j in range(len(indices))])

    replayed = [g.text for g in generate(tiny_lm, prompts, GenerationConfig(max_new_tokens=8), specs=[spec],
                                         extra_hooks=replay_hooks(1, perts, zero))]
    assert replayed == defended


def test_planted_residual_path(tiny_lm, orthonormal_sae):
    """δ lies outside the SAE's subspace, so the SAE sees nothing: the residual carries all of it."""
    from engine.attribution.driver import attribute_batch
    from engine.method.judge import JudgeConfig
    from engine.recovery.replay import Perturbation

    spec = ClampSpec(orthonormal_sae, [0, 1, 2], "set", [6.0])
    prompt = "tell me a story"
    base = next(generate(tiny_lm, [prompt], GenerationConfig(max_new_tokens=8))).text
    ids = tiny_lm.encode(tiny_lm.chat_prompt(prompt))
    # a direction orthogonal to every encoder column: E(h + δ) = E(h), so δz = 0
    q = orthonormal_sae.sae.W_enc.detach()  # [32, 16], orthonormal columns
    v = torch.randn(len(ids), 32, generator=torch.Generator().manual_seed(1))
    v = v - (v @ q) @ q.T
    v[0] = 0
    # make it helpful: step along the base answer's log-prob gradient, projected off the SAE subspace
    from engine.recovery.objective import DeltaObjective
    from engine.recovery.problem import build_problem

    record = {"id": 0, "prompt": prompt, "base_text": base, "clamped_text": ""}
    problem = build_problem(tiny_lm, [spec], [record], 48, 1)
    obj = DeltaObjective(tiny_lm, [spec], problem)
    rows = torch.zeros_like(problem.h_def, requires_grad=True)
    lp = (obj.evaluate(rows, None).logp * problem.target_mask).sum()
    (grad,) = torch.autograd.grad(lp, rows)
    grad = grad - (grad @ q) @ q.T
    pad = problem.tokens.shape[1] - int(problem.attention_mask[0].sum())
    step = grad[0, pad : pad + len(ids)]
    step[0] = 0
    pert = Perturbation(3.0 * step / step.norm() * math.sqrt(len(ids)))
    rec = attribute_batch(tiny_lm, [spec], [record], [pert], 1, 48, 3, 8, JudgeConfig())[0]
    c = rec["components"]
    assert c["full"]["base_logprob_gain"] > 0.5
    assert abs(c["residual"]["base_logprob_gain"] - c["full"]["base_logprob_gain"]) < 1e-3
    assert c["residual"]["text"] == c["full"]["text"]
    assert abs(c["clamped"]["base_logprob_gain"]) < 1e-4 and abs(c["non_clamped"]["base_logprob_gain"]) < 1e-4
    assert all(t["delta_z_norm"] < 1e-4 for t in rec["top_features"])  # float noise only


def test_bad_attribution_inputs(tmp_path, recovered_run, capsys):
    from engine.cli.main import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "flips.jsonl").write_text("")
    assert main(["attribute", "--run", str(tmp_path / "run")]) == 2
    assert "no recovery yet" in capsys.readouterr().err
    assert main(["attribute", "--run", str(recovered_run), "--recovery", "nope"]) == 2
    assert "no recovery named 'nope'" in capsys.readouterr().err
    assert main(["attribute", "--run", str(recovered_run), "--top-k", "-1"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main(["recover", "--run", str(recovered_run), "--name", "short", "--steps", "1", "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert main(["attribute", "--run", str(recovered_run), "--recovery", "short", "--top-k", "65"]) == 2
    assert "exceeds" in capsys.readouterr().err
    assert not (recovered_run / "recoveries" / "short" / "attribution.jsonl").exists()  # refused before any file
