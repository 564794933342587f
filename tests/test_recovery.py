"""Invariants of recovery on the tiny model: projection, budget, determinism, batching, cancel, cross-layer."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from engine.errors import LabError
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.recovery.config import RecoveryConfig
from engine.recovery.objective import DeltaObjective
from engine.recovery.optimize import optimize_delta
from engine.recovery.problem import build_problem

PROMPTS = ["hi there", "tell me a story", "why is it so", "count to ten"]


@pytest.fixture(scope="module")
def flips(tiny_lm):
    base = list(generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=10)))
    return [{"id": i, "prompt": p, "base_text": b.text, "clamped_text": ""} for i, (p, b) in enumerate(zip(PROMPTS, base))]


def _solve(lm, specs, flips, cfg, layer=1, on_event=None, cancel=None):
    problem = build_problem(lm, specs, flips, cfg.answer_tokens, layer)
    objective = DeltaObjective(lm, specs, problem)
    budget = torch.full((len(flips),), cfg.budget)
    return problem, objective, optimize_delta(objective, cfg, budget, on_event, cancel)


@pytest.mark.parametrize("arch", ["jumprelu", "standard"])
def test_encoder_projection_keeps_clamped_preacts_and_activations(tiny_lm, flips, arch):
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    sae = LoadedSAE(tiny_sae(tiny_lm.d_model, 64, "blocks.1.hook_resid_post", architecture=arch, seed=4), "tiny", "blocks.1.hook_resid_post")
    spec = ClampSpec(sae, [0, 3, 5], "set", [6.0])
    cfg = RecoveryConfig(projection="encoder", budget=20.0, steps=50, lr=0.1, drift_threshold=math.inf)
    problem, objective, res = _solve(tiny_lm, [spec], flips, cfg)
    pert = objective.perturbation(res.rows, res.gen)
    assert pert.abs().max() > 0.1  # δ really moved
    with torch.no_grad():
        pre_def = sae.pre_acts(problem.h_def)[..., spec.features]
        pre_rec = sae.pre_acts(problem.h_def + pert)[..., spec.features]
    rel = (pre_rec - pre_def).norm() / pre_def.norm()
    assert rel <= 1e-5
    assert max(max(h) for h in res.drift_history) <= 1e-5


def test_unconstrained_drifts_more_than_encoder(tiny_lm, tiny_jumprelu, flips):
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    base = RecoveryConfig(projection="encoder", budget=20.0, steps=30, drift_threshold=math.inf)
    _, _, enc = _solve(tiny_lm, [spec], flips, base)
    _, _, free = _solve(tiny_lm, [spec], flips, dataclasses.replace(base, projection="none"))
    enc_drift = sum(h[-1] for h in enc.drift_history) / len(flips)
    free_drift = sum(h[-1] for h in free.drift_history) / len(flips)
    assert enc_drift < 1e-5 and free_drift > 1e-2


@pytest.mark.parametrize("kind", ["per_position", "matrix"])
def test_budget_is_never_exceeded(tiny_lm, tiny_jumprelu, flips, kind, monkeypatch):
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    cfg = RecoveryConfig(projection="none", budget=3.0, budget_kind=kind, steps=25, lr=0.5)
    seen = []
    real = DeltaObjective.evaluate

    def spy(self, rows, gen):
        full_rows = rows.detach() * self.problem.prompt_rows[..., None]
        if kind == "per_position":
            worst = full_rows.norm(dim=-1).max()
            if gen is not None:
                worst = torch.maximum(worst, gen.detach().norm(dim=-1).max())
        else:
            total = full_rows.pow(2).sum(dim=(1, 2))
            if gen is not None:
                total = total + gen.detach().pow(2).sum(-1)
            worst = total.sqrt().max()
        seen.append(float(worst))
        return real(self, rows, gen)

    monkeypatch.setattr(DeltaObjective, "evaluate", spy)
    _solve(tiny_lm, [spec], flips, cfg)
    assert len(seen) > cfg.steps
    assert max(seen) <= cfg.budget * (1 + 1e-5)
    assert max(seen) >= 0.9 * cfg.budget  # the budget is actually reached (lr 0.5 hits it quickly)


def test_loss_decreases_and_recovery_raises_base_logprob(tiny_lm, tiny_jumprelu, flips):
    from engine.recovery.driver import recover_flips

    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    cfg = RecoveryConfig(projection="encoder", budget=20.0, steps=30, max_new_tokens=8)
    results = [r for r, _ in recover_flips(tiny_lm, [spec], flips, cfg)]
    for r in results:
        assert r.loss_history[-1] < r.loss_history[0]
        assert r.base_logprob_rec > r.base_logprob_def
        assert r.drift < 1e-5


def test_unconstrained_baseline_keeps_its_delta_by_default(tiny_lm, tiny_jumprelu, flips):
    """No drift threshold for `none` unless asked: otherwise the kept δ would be the drift-free δ = 0."""
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    cfg = RecoveryConfig(projection="none", budget=20.0, steps=20)
    assert cfg.effective_drift_threshold == math.inf and RecoveryConfig().effective_drift_threshold == 0.05
    _, obj, res = _solve(tiny_lm, [spec], flips, cfg)
    assert all(s > 0 for s in res.best_step)
    assert obj.perturbation(res.rows, res.gen).abs().max() > 0.1
    with pytest.raises(LabError, match="drift threshold"):
        RecoveryConfig(drift_threshold=-1.0)


def test_same_seed_same_delta(tiny_lm, tiny_jumprelu, flips):
    spec = ClampSpec(tiny_jumprelu, [0, 1], "set", [8.0])
    cfg = RecoveryConfig(budget=10.0, steps=10, seed=3)
    _, _, a = _solve(tiny_lm, [spec], flips[:2], cfg)
    _, _, b = _solve(tiny_lm, [spec], flips[:2], cfg)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.gen, b.gen)


def test_cancel_stops_within_one_step(tiny_lm, tiny_jumprelu, flips):
    spec = ClampSpec(tiny_jumprelu, [0, 1], "set", [8.0])
    cfg = RecoveryConfig(budget=10.0, steps=40)
    ev = threading.Event()
    steps = []

    def on_event(e):
        steps.append(e.step)
        if e.step == 3:
            ev.set()

    _, _, res = _solve(tiny_lm, [spec], flips, cfg, on_event=on_event, cancel=ev)
    assert res.cancelled and max(steps) == 3


def test_batched_equals_single(tiny_lm, tiny_jumprelu, flips):
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    cfg = RecoveryConfig(budget=10.0, steps=15, drift_threshold=math.inf)
    problem, objective, batched = _solve(tiny_lm, [spec], flips, cfg)
    from engine.recovery.replay import perturbations_from_batch

    together = perturbations_from_batch(problem, batched.rows, batched.gen)
    for i, f in enumerate(flips):
        p1, _, single = _solve(tiny_lm, [spec], [f], cfg)
        alone = perturbations_from_batch(p1, single.rows, single.gen)[0]
        torch.testing.assert_close(together[i].rows, alone.rows, atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(together[i].gen, alone.gen, atol=2e-4, rtol=1e-3)
        assert abs(batched.loss_history[i][-1] - single.loss_history[0][-1]) < 1e-3


def test_jacobian_projection_reduces_cross_layer_drift(tiny_lm, flips):
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    sae = LoadedSAE(tiny_sae(tiny_lm.d_model, 64, "blocks.2.hook_resid_post", seed=7), "tiny", "blocks.2.hook_resid_post")
    spec = ClampSpec(sae, [0, 1, 2, 3], "set", [5.0])
    cfg = RecoveryConfig(projection="none", budget=6.0, steps=20, delta_layer=0, drift_threshold=math.inf, n_probes=24, probe_every=5)
    _, _, free = _solve(tiny_lm, [spec], flips, cfg, layer=0)
    _, obj, jac = _solve(tiny_lm, [spec], flips, dataclasses.replace(cfg, projection="jacobian"), layer=0)
    from engine.recovery import metrics

    with torch.no_grad():
        d_free = metrics.drift(obj.evaluate(free.rows, free.gen).z, obj.z_def).mean()
        d_jac = metrics.drift(obj.evaluate(jac.rows, jac.gen).z, obj.z_def).mean()
    assert d_free > 1e-3
    assert d_jac < 0.5 * d_free


def test_soft_suffix_baseline_runs_and_improves_loss(tiny_lm, tiny_jumprelu, flips):
    from engine.recovery.driver import recover_flips

    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    cfg = RecoveryConfig(method="soft-suffix", steps=15, suffix_tokens=4, max_new_tokens=6, drift_threshold=math.inf)
    results = [r for r, _ in recover_flips(tiny_lm, [spec], flips[:2], cfg)]
    assert len(results) == 2
    for r in results:
        assert r.loss_history[-1] < r.loss_history[0]
        assert r.within_threshold is True  # no threshold
    # a threshold no suffix step meets (each moves the clamped features): the last step is kept, and flagged
    tight = [r for r, _ in recover_flips(tiny_lm, [spec], flips[:1], dataclasses.replace(cfg, steps=3, drift_threshold=1e-12))]
    assert tight[0].best_step == -1 and tight[0].within_threshold is False


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"budget": 0.0}, "budget"),
        ({"budget": -3.0}, "budget"),
        ({"budget": float("nan")}, "budget"),
        ({"steps": 0}, "steps"),
        ({"projection": "sideways"}, "unknown projection"),
        ({"where": "everywhere"}, "--where"),
        ({"lr": float("inf")}, "learning rate"),
    ],
)
def test_bad_recovery_config(kwargs, msg):
    with pytest.raises(LabError, match=msg):
        RecoveryConfig(**kwargs)


def test_recover_cli_bad_runs(tmp_path, capsys):
    import json

    from engine.cli.main import main

    assert main(["recover", "--run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["recover", "--run", str(tmp_path / "empty")]) == 2
    assert "no flips.jsonl" in capsys.readouterr().err
    run = tmp_path / "novalid"
    run.mkdir()
    (run / "flips.jsonl").write_text(json.dumps({"id": 0, "prompt": "x", "base_text": "y", "clamped_text": "z", "valid": False}) + "\n")
    (run / "config.json").write_text(json.dumps({"model": "tiny", "clamps": []}))
    assert main(["recover", "--run", str(run)]) == 2
    assert "no valid flips" in capsys.readouterr().err
    assert main(["sweep", "--run", str(run), "--budgets", "1,x"]) == 2
    assert "--budgets" in capsys.readouterr().err


def test_recover_and_sweep_cli_write_documented_files(tmp_path, capsys):
    import json

    from engine.cli.main import main

    run = tmp_path / "run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "3", "--model", "tiny", "--sae", "tiny",
                 "--features", "0,1,2", "--value", "8", "--max-new-tokens", "8", "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    for r in rows:  # the tiny model's gibberish never refuses; mark them valid to exercise recovery
        r["valid"] = True
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["recover", "--run", str(run), "--steps", "5", "--max-new-tokens", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    record = run / "recoveries" / out["name"]
    assert out["dir"] == str(record) and out["valid"] == "judge"
    summary = json.loads((record / "recovery_summary.json").read_text())
    for key in ("n_valid", "non_refusal_recovery", "base_like_recovery", "strict_base_like_recovery", "mean_drift",
                "mean_floor_violation", "ci"):
        assert key in summary
    rec = [json.loads(x) for x in (record / "recovery.jsonl").read_text().splitlines()]
    assert len(rec) == 3 and {"recovered_text", "drift", "floor_violation", "delta_rel_norm", "loss_history"} <= set(rec[0])
    assert len(list((record / "deltas").glob("*.safetensors"))) == 3
    assert json.loads((record / "recovery_config.json").read_text())["flip_ids"] == [0, 1, 2]
    assert main(["sweep", "--run", str(run), "--name", "s1", "--budgets", "0,2,5", "--steps", "3", "--max-new-tokens", "4"]) == 0
    sweep = json.loads((run / "recoveries" / "s1" / "sweep.json").read_text())
    assert [p["budget"] for p in sweep["points"]] == [0.0, 2.0, 5.0]
    assert (run / "recoveries" / "s1" / "budget_2" / "recovery.jsonl").is_file()
    assert sweep["points"][0]["mean_delta_rel_norm"] == 0.0


def test_recovery_targets_the_base_stop_token(tiny_lm):
    """A base answer that ended on a stop token is followed by it in the targets; a cut-off one is not."""
    from engine.recovery.problem import target_answer

    stop = max(tiny_lm.stop_ids)
    text = "the river runs long"
    ids = tiny_lm.encode_answer(text)
    assert target_answer(tiny_lm, {"base_text": text, "base_stop_id": stop}, 48) == ids + [stop]
    assert target_answer(tiny_lm, {"base_text": text, "base_stop_id": None}, 48) == ids
    assert target_answer(tiny_lm, {"base_text": text}, 48) == ids
    # cut by answer_tokens: the stop token lies beyond the window, so it is not a target
    assert target_answer(tiny_lm, {"base_text": text, "base_stop_id": stop}, len(ids)) == ids
    problem = build_problem(tiny_lm, [], [{"id": 0, "prompt": "hi", "base_text": text, "base_stop_id": stop}], 48, 1)
    assert problem.targets[0][problem.target_mask[0]].tolist() == ids + [stop]


def test_recovery_never_computes_weight_gradients(tiny_lm, tiny_jumprelu, flips):
    """Weights are frozen at load, so a recovery backward fills δ's gradient and nothing else."""
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0])
    _solve(tiny_lm, [spec], flips, RecoveryConfig(budget=20.0, steps=3))
    params = list(tiny_lm.model.parameters()) + list(tiny_jumprelu.sae.parameters())
    assert params and not any(p.requires_grad or p.grad is not None for p in params)
