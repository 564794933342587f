"""Cross-layer recovery on the tiny model with SAEs at two layers: δ at ℓ₁ = 1, clamps at ℓ₁ and ℓ₂ = 2."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.errors import LabError
from engine.lm.saes import LoadedSAE
from engine.lm.tiny import tiny_sae
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.recovery import metrics
from engine.recovery.config import RecoveryConfig
from engine.recovery.objective import DeltaObjective
from engine.recovery.optimize import optimize_delta
from engine.recovery.problem import build_problem
from engine.store.records import get_record

PROMPTS = ["hi there", "tell me a story", "why is it so"]
L1, L2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def two_layer_specs(tiny_lm):
    s1 = LoadedSAE(tiny_sae(tiny_lm.d_model, 64, L1, seed=1), f"tiny:{L1}", L1)
    s2 = LoadedSAE(tiny_sae(tiny_lm.d_model, 64, L2, seed=7), f"tiny:{L2}", L2)
    return [ClampSpec(s1, [0, 1, 2], "set", [8.0]), ClampSpec(s2, [0, 1, 2, 3], "set", [5.0])]


@pytest.fixture(scope="module")
def flips(tiny_lm):
    base = list(generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=10)))
    return [{"id": i, "prompt": p, "base_text": b.text, "clamped_text": ""} for i, (p, b) in enumerate(zip(PROMPTS, base))]


def _solve(lm, specs, flips, cfg, layer=1):
    problem = build_problem(lm, specs, flips, cfg.answer_tokens, layer)
    objective = DeltaObjective(lm, specs, problem)
    return objective, optimize_delta(objective, cfg, torch.full((len(flips),), cfg.budget))


def _layer_drift(obj, res, hook):
    with torch.no_grad():
        z = obj.evaluate(res.rows, res.gen).z
    return float(obj.drift_by_layer(z)[hook].mean())


BASE = RecoveryConfig(projection="none", budget=6.0, steps=20, lr=0.1, drift_threshold=math.inf, correction_steps=0, drift_penalty=0.0,
                      correction="adam")
"""The paper's scheme unless a test says otherwise (the lab's default correction is gauss-newton)."""


def test_encoder_at_delta_layer_holds_it_while_the_later_layer_moves(tiny_lm, two_layer_specs, flips):
    """With the encoder projection of ℓ₁'s features only (no Jacobian, no penalty), ℓ₁'s pre-activations stay put
    and ℓ₂'s clamped features drift: the later layer really is unprotected by the encoder projection."""
    cfg = dataclasses.replace(BASE, projection="jacobian", n_probes=1, probe_every=10_000, max_probes=1)
    obj, res = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, probe_every=10_000))
    s1 = two_layer_specs[0]
    problem = obj.problem
    pert = obj.perturbation(res.rows, res.gen)
    with torch.no_grad():
        pre_def = s1.sae.pre_acts(problem.h_def)[..., s1.features]
        pre_rec = s1.sae.pre_acts(problem.h_def + pert)[..., s1.features]
    assert float((pre_rec - pre_def).abs().max()) < 1e-4 * float(pre_def.abs().max())
    assert _layer_drift(obj, res, L1) < 1e-5
    assert float(pert.abs().max()) > 0.1  # δ is not trivially zero
    assert _layer_drift(obj, res, L2) > 1e-3  # while layer 2's clamped features do move


def test_encoder_projection_is_refused_with_clamps_above_delta(tiny_lm, two_layer_specs, flips):
    with pytest.raises(LabError, match="choose the jacobian projection"):
        _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(BASE, projection="encoder"))


def test_jacobian_reduces_later_layer_drift_against_none(tiny_lm, two_layer_specs, flips):
    obj, free = _solve(tiny_lm, two_layer_specs, flips, BASE)
    _, jac = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(BASE, projection="jacobian", n_probes=24, probe_every=1,
                                                                           correction_steps=3, drift_penalty=200.0))
    d_free, d_jac = _layer_drift(obj, free, L2), _layer_drift(obj, jac, L2)
    assert d_free > 1e-3
    assert d_jac < 0.5 * d_free, (d_jac, d_free)  # the stated factor: at least halved
    assert _layer_drift(obj, jac, L1) < 1e-5  # and ℓ₁ stays exact


def test_adaptive_basis_spans_the_constraint_so_a_projected_step_leaves_later_features_fixed(tiny_lm, two_layer_specs, flips):
    """First-order invariant: a direction with the estimated row space of J removed does not move ℓ₂'s features.
    The adaptive basis (probes until a block adds < 1 % new energy) makes that hold; the paper's 8 + 1 probes do not."""
    from engine.recovery.jacobian import flatten, jacobian_basis, remove_span, unflatten_into

    problem = build_problem(tiny_lm, two_layer_specs, flips, 48, 1)
    obj = DeltaObjective(tiny_lm, two_layer_specs, problem)
    rows = torch.zeros_like(problem.h_def)
    gen = torch.zeros(problem.h_def.shape[0], problem.h_def.shape[-1])
    v_rows = torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)) * problem.prompt_rows[..., None]
    v_gen = torch.randn(gen.shape, generator=torch.Generator().manual_seed(1))

    def moved(cfg) -> tuple[float, int]:
        basis, used = jacobian_basis(obj, rows, gen, cfg, torch.Generator().manual_seed(2))
        pr, pg = v_rows.clone(), v_gen.clone()
        unflatten_into(remove_span(flatten(pr, pg), basis), pr, pg)
        eps = 0.05 / float(flatten(pr, pg).norm())
        with torch.no_grad():
            z_step = obj.evaluate_z(eps * pr, eps * pg).z[..., obj.later_cols]
        z0 = obj.z_def[..., obj.later_cols]
        return float((z_step - z0).norm() / 0.05), used

    probes_cfg = dataclasses.replace(BASE, projection="jacobian", n_probes=8)
    adaptive_cfg = dataclasses.replace(probes_cfg, jacobian_basis="adaptive", max_probes=400, probe_tol=0.001)
    fixed_rate, fixed_used = moved(probes_cfg)
    adaptive_rate, adaptive_used = moved(adaptive_cfg)
    exact_rate, exact_used = moved(dataclasses.replace(probes_cfg, jacobian_basis="exact"))
    assert fixed_used == 9 and adaptive_used > fixed_used
    assert fixed_rate > 1e-2  # 9 probes leave most of the constraint's row space in the step
    assert adaptive_rate < 0.1 * fixed_rate, (adaptive_rate, fixed_rate, adaptive_used)
    # every row of J: |S₂| features × the pooled positions of the longest prompt; first order holds to ~1e-3
    assert exact_used == len(obj.later_cols) * int(problem.pooled.sum(1).max())
    assert exact_rate < 0.01 * fixed_rate, (exact_rate, fixed_rate)


def test_drift_penalty_is_in_the_loss(tiny_lm, two_layer_specs, flips):
    """The penalty's gradient drives δ: the same run with λ > 0 takes a different second step and ends with less drift.
    (At δ = 0 the drift and the penalty's gradient vanish, so the first step is the same.)"""
    cfg = dataclasses.replace(BASE, steps=1)
    obj, plain = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, steps=2))
    _, penalised = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, steps=2, drift_penalty=1e4))
    assert penalised.loss_history[0][:2] == pytest.approx(plain.loss_history[0][:2])  # same δ after step 1
    assert penalised.loss_history[0][2] != pytest.approx(plain.loss_history[0][2], abs=1e-6)  # step 2 differs
    _, strong = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(BASE, drift_penalty=1e4))
    _, none = _solve(tiny_lm, two_layer_specs, flips, BASE)
    assert _layer_drift(obj, strong, L2) < 0.5 * _layer_drift(obj, none, L2)


def test_adaptive_penalty_raises_lambda_until_the_drift_threshold_holds(tiny_lm, two_layer_specs, flips):
    """A weak fixed λ lets layer 2 drift past the threshold step after step; the adaptive schedule starts from the
    same λ and grows it per prompt while the drift is over, so far fewer steps end over the threshold."""
    cfg = dataclasses.replace(BASE, projection="jacobian", n_probes=1, drift_penalty=1.0, drift_threshold=0.05, steps=30,
                              constraint_positions="answer")
    obj, fixed = _solve(tiny_lm, two_layer_specs, flips, cfg)
    _, adaptive = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, penalty_schedule="adaptive"))
    def steps_over(res) -> int:
        return sum(v > 0.05 for h in res.drift_per_layer_history for v in h[L2])

    assert steps_over(fixed) >= 10  # the weak λ does not hold the threshold by itself
    assert steps_over(adaptive) < 0.5 * steps_over(fixed)
    with pytest.raises(LabError, match="penalty growth factor must be greater than 1"):
        dataclasses.replace(cfg, penalty_growth=1.0).check()


def test_per_layer_drift_combines_to_the_pooled_drift(tiny_lm, two_layer_specs, flips):
    obj, res = _solve(tiny_lm, two_layer_specs, flips, BASE)
    with torch.no_grad():
        z = obj.evaluate(res.rows, res.gen).z
    pooled = metrics.drift(z, obj.z_def)
    per = obj.drift_by_layer(z)
    for b in range(len(flips)):
        norms = {h: float(obj.z_def[b][..., c].norm()) for h, c in obj.groups.items()}
        combined = metrics.pooled_from_layers({h: float(v[b]) for h, v in per.items()}, norms)
        assert combined == pytest.approx(float(pooled[b]), rel=1e-4)
    assert set(per) == {L1, L2}


def test_recovery_records_and_summary_carry_per_layer_figures(tiny_lm, two_layer_specs, flips):
    from engine.recovery.driver import recover_flips

    cfg = dataclasses.replace(BASE, projection="jacobian", steps=3, max_new_tokens=4, n_probes=2, correction_steps=1)
    results = [r.to_json() for r, _ in recover_flips(tiny_lm, two_layer_specs, flips[:2], cfg)]
    for r in results:
        assert set(r["drift_per_layer"]) == set(r["drift_per_layer_all_positions"]) == set(r["floor_violation_per_layer"]) == {L1, L2}
        assert {h: len(v) for h, v in r["drift_per_layer_history"].items()} == {L1: 4, L2: 4}  # steps 0..3
        assert r["within_threshold"] is True  # no threshold in BASE
    summary = metrics.summarize(results)
    assert summary["kept_over_threshold"] == 0
    assert set(summary["drift_per_layer"]) == {L1, L2}
    assert summary["drift_per_layer"][L2] == pytest.approx(sum(r["drift_per_layer"][L2] for r in results) / 2)


def test_delta_layer_must_be_in_range_and_not_above_the_lowest_clamp(tiny_lm, two_layer_specs, flips):
    from engine.recovery.driver import recover_flips

    for layer, msg in ((2, "above the lowest clamp"), (9, "outside the model's layers"), (-1, "outside the model's layers")):
        with pytest.raises(LabError, match=msg):
            list(recover_flips(tiny_lm, two_layer_specs, flips[:1], dataclasses.replace(BASE, delta_layer=layer)))


def test_cli_cross_layer_recover_and_attribute_through_the_delta_layer_sae(tmp_path, capsys):
    """flips with a two-layer clamp file → jacobian recovery → attribution through the SAE at δ's layer; with δ below
    every clamp, attribution asks for an SAE at δ's layer and uses the one given."""
    import json
    import shutil

    from engine.cli.main import main

    clamp = tmp_path / "clamp.json"
    clamp.write_text(json.dumps([{"sae": f"tiny:{L1}", "features": [0, 1, 2], "mode": "set", "values": [8.0]},
                                 {"sae": f"tiny:{L2}", "features": [0, 1], "mode": "set", "values": [5.0]}]))
    run = tmp_path / "run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "2", "--model", "tiny", "--clamp", str(clamp),
                 "--max-new-tokens", "6", "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    (run / "flips.jsonl").write_text("".join(json.dumps({**r, "valid": True}) + "\n" for r in rows))  # gibberish never refuses
    low = tmp_path / "low"
    shutil.copytree(run, low)
    capsys.readouterr()
    assert main(["recover", "--run", str(run), "--projection", "encoder", "--steps", "2"]) == 2
    assert "choose the jacobian projection" in capsys.readouterr().err
    recover = ["--projection", "jacobian", "--steps", "3", "--max-new-tokens", "4", "--n-probes", "2", "--correction-steps", "1"]
    assert main(["recover", "--run", str(run), *recover]) == 0, capsys.readouterr().err
    summary = json.loads((get_record(run).path / "recovery_summary.json").read_text())
    assert set(summary["drift_per_layer"]) == {L1, L2} and summary["config"]["delta_layer"] == 1
    assert main(["attribute", "--run", str(run), "--top-k", "3"]) == 0, capsys.readouterr().err
    attr = [json.loads(x) for x in (get_record(run).path / "attribution.jsonl").read_text().splitlines()]
    assert len(attr) == 2 and attr[0]["layer"] == 1
    assert main(["recover", "--run", str(low), *recover, "--delta-layer", "0"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["attribute", "--run", str(low)]) == 2
    assert "pass --sae" in capsys.readouterr().err
    assert main(["attribute", "--run", str(low), "--sae", "tiny:blocks.0.hook_resid_post", "--top-k", "3"]) == 0
    summary = json.loads((get_record(low).path / "attribution_summary.json").read_text())
    assert summary["sae"] == "tiny:blocks.0.hook_resid_post" and summary["components"]["clamped"]["mean_base_logprob_gain"] == 0.0
    assert main(["recover", "--run", str(low), "--delta-layer", "2"]) == 2
    assert "above the lowest clamp" in capsys.readouterr().err
    # a budget sweep on the two-layer clamp: each point carries the per-layer drift, B = 0 holds every clamp exactly
    assert main(["sweep", "--run", str(run), *recover, "--budgets", "0,3", "--name", "sw"]) == 0, capsys.readouterr().err
    points = json.loads((get_record(run, "sw", "sweep").path / "sweep.json").read_text())["points"]
    assert [p["budget"] for p in points] == [0.0, 3.0]
    assert all(set(p["drift_per_layer"]) == {L1, L2} and p["kept_over_threshold"] == 0 for p in points)
    assert points[0]["drift_per_layer"] == {L1: 0.0, L2: 0.0} and points[1]["drift_per_layer"][L1] < 1e-4


def test_ksweep_reclamps_and_reflips_per_k(tmp_path, capsys):
    """The K sweep clamps the top-K direction pairs for each K and recomputes the flips (valid set) per K."""
    import json

    from engine.cli.main import main

    out = tmp_path / "ks"
    args = ["ksweep", "--prompts", "builtin:harmless", "--limit", "2", "--ks", "3,1", "--out", str(out), "--model", "tiny",
            "--sae", f"tiny:{L1}", "--sae", f"tiny:{L2}", "--layer", "1", "--direction-prompts", "3", "--candidates", "4",
            "--projection", "jacobian", "--steps", "2", "--max-new-tokens", "4"]
    assert main(args) == 0, capsys.readouterr().err
    sweep = json.loads((out / "ksweep.json").read_text())
    assert [p["k"] for p in sweep["points"]] == [1, 3]
    for p in sweep["points"]:
        config = json.loads((out / f"k_{p['k']}" / "config.json").read_text())
        assert sum(len(c["features"]) for c in config["clamps"]) == p["k"]
        assert p["n_prompts"] == 2 and (out / f"k_{p['k']}" / "flips.jsonl").is_file()
    assert main([*args[:6], "0,2", *args[7:]]) == 2 and "at least 1" in capsys.readouterr().err
    bad = list(args)
    bad[bad.index("3,1")] = "9"
    assert main(bad) == 2 and "exceeds the" in capsys.readouterr().err
    # the direction's prompt sources are read before the model loads: a missing file fails at once, nothing written
    for flag in ("--harmless", "--harmful"):
        missing = [*args, "--source", "prompts", flag, str(tmp_path / "nope.json")]
        missing[missing.index(str(out))] = str(tmp_path / "ks2")
        assert main(missing) == 2 and "nope.json" in capsys.readouterr().err
        assert not (tmp_path / "ks2").exists()


def test_gauss_newton_restoration_holds_the_later_layer_far_tighter_than_adam_corrections(tiny_lm, two_layer_specs, flips):
    """The stronger variant: after each step, the smallest δ change that cancels the later clamps' drift to first
    order (CG on AAᵀ). Same steps, same corrections count: the layer-2 drift ends ≥ 5× below the paper's Adam
    corrections (measured 0.00026 against 0.0063 at 20 steps), and layer 1 stays exactly held."""
    cfg = dataclasses.replace(BASE, projection="jacobian", steps=10, correction_steps=2)
    obj, adam = _solve(tiny_lm, two_layer_specs, flips, cfg)
    _, gn = _solve(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, correction="gauss-newton", cg_iters=20))
    assert _layer_drift(obj, gn, L2) < 0.2 * _layer_drift(obj, adam, L2), (_layer_drift(obj, gn, L2), _layer_drift(obj, adam, L2))
    assert _layer_drift(obj, gn, L1) < 1e-5
    assert gn.loss_history[0][-1] < gn.loss_history[0][0]  # it still recovers


def test_pre_clamp_pre_activations_are_what_the_restoration_holds(tiny_lm, two_layer_specs, flips):
    """Holding the later features' pre-activations before their clamp holds the clamped activations after it: a δ
    that leaves the former unchanged (to float precision) leaves the drift the metrics read at ~0."""
    from engine.recovery.restoration import GaussNewtonRestorer

    cfg = dataclasses.replace(BASE, projection="jacobian", correction="gauss-newton", cg_iters=60, correction_steps=6, gn_damping=1e-6)
    problem = build_problem(tiny_lm, two_layer_specs, flips[:1], 48, 1)
    obj = DeltaObjective(tiny_lm, two_layer_specs, problem)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(problem.h_def.shape, generator=g) * 0.3 * problem.prompt_rows[..., None]
    gen = torch.randn(1, problem.h_def.shape[-1], generator=g) * 0.3
    from engine.recovery.optimize import check_projection

    enc = check_projection(obj, cfg)
    params = [enc(rows), enc(gen)]
    restorer = GaussNewtonRestorer(obj, params, cfg, enc, torch.full((1,), 1e3))
    with torch.no_grad():
        before = float(obj.drift_by_layer(obj.evaluate(*params).z)[L2])
    first = float(restorer.restore_once()[0])
    restorer()
    left = float(restorer.restore_once()[0])
    with torch.no_grad():
        after = float(obj.drift_by_layer(obj.evaluate(*params).z)[L2])
    assert left < 0.05 * first, (first, left)
    assert after < 0.1 * before, (before, after)


def test_probe_basis_is_reestimated_with_adam_corrections_and_estimated_once_with_gauss_newton(tiny_lm, two_layer_specs, flips, monkeypatch):
    """With Adam corrections the random-probe basis is re-estimated every probe_every steps (the paper's cadence
    when 1); with the Gauss–Newton restoration, which holds the constraint itself every step, once at δ = 0."""
    import engine.recovery.optimize as optimize

    calls = []
    real = optimize.jacobian_basis

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(optimize, "jacobian_basis", counting)
    cfg = dataclasses.replace(BASE, projection="jacobian", steps=6, probe_every=2, n_probes=2, correction_steps=1)
    _solve(tiny_lm, two_layer_specs, flips[:1], cfg)
    assert len(calls) == 3  # steps 0, 2, 4
    calls.clear()
    _solve(tiny_lm, two_layer_specs, flips[:1], dataclasses.replace(cfg, correction="gauss-newton", cg_iters=2))
    assert len(calls) == 1


def test_the_default_cross_layer_settings_are_the_gauss_newton_restoration_on_answer_positions():
    """The documented defaults (docs/RECOVERY.md) that met the drift target on the default model."""
    d = RecoveryConfig(projection="jacobian")
    assert (d.correction, d.cg_iters, d.correction_steps, d.restore_below, d.gn_damping, d.constraint_positions) == (
        "gauss-newton", 8, 6, 0.5, 1e-3, "answer")


def _restorer(lm, specs, flips, cfg, scale=0.3):
    """A restorer over two prompts whose δ is random (encoder-projected), and its params."""
    from engine.recovery.optimize import check_projection
    from engine.recovery.restoration import GaussNewtonRestorer

    problem = build_problem(lm, specs, flips[:2], 48, 1)
    obj = DeltaObjective(lm, specs, problem)
    g = torch.Generator().manual_seed(0)
    enc = check_projection(obj, cfg)
    rows = enc(torch.randn(problem.h_def.shape, generator=g) * scale * problem.prompt_rows[..., None])
    gen = enc(torch.randn(2, problem.h_def.shape[-1], generator=g) * scale)
    params = [rows, gen]
    return GaussNewtonRestorer(obj, params, cfg, enc, torch.full((2,), 1e3)), params


def test_restoration_leaves_an_inactive_prompt_untouched_and_moves_the_active_one(tiny_lm, two_layer_specs, flips):
    cfg = dataclasses.replace(BASE, projection="jacobian", correction="gauss-newton", cg_iters=10, correction_steps=1)
    restorer, params = _restorer(tiny_lm, two_layer_specs, flips, cfg)
    before = [t.clone() for t in params]
    restorer.restore_once(torch.tensor([False, True]))
    assert all(torch.equal(t[0], b[0]) for t, b in zip(params, before))
    assert not torch.equal(params[0][1], before[0][1])


def test_restoring_only_the_active_rows_solves_them_as_the_whole_batch_would(tiny_lm, two_layer_specs, flips):
    """The systems are independent per prompt, so solving the active rows alone (restore-until-held) moves an active
    prompt as a solve of the whole batch moves it. Three CG iterations: float32 CG amplifies the last-bit differences of
    a smaller batch's matmuls as it converges (at 10 iterations the two steps differ by 0.3 %, at 3 by 1e-7)."""
    cfg = dataclasses.replace(BASE, projection="jacobian", correction="gauss-newton", cg_iters=3, correction_steps=1)
    whole, p_whole = _restorer(tiny_lm, two_layer_specs, flips, cfg)
    part, p_part = _restorer(tiny_lm, two_layer_specs, flips, cfg)
    before = p_part[0][1].clone()
    r_whole = whole.restore_once()
    r_part = part.restore_once(torch.tensor([False, True]))
    assert not torch.equal(p_part[0][1], before)  # the active prompt moved, so the comparison can fail
    assert float(r_part[0]) == 0.0 and torch.allclose(r_part[1], r_whole[1], rtol=1e-5)
    for a, b in zip(p_whole, p_part):
        torch.testing.assert_close(b[1], a[1], rtol=1e-4, atol=1e-5)


def test_restoration_repeats_until_the_held_drift_is_under_its_share_of_the_threshold(tiny_lm, two_layer_specs, flips, monkeypatch):
    """restore_below: iterations stop as soon as every prompt's held drift is under restore_below × threshold, and
    none run when it already is; 0 runs all of them."""
    from engine.recovery.restoration import GaussNewtonRestorer

    cfg = dataclasses.replace(BASE, projection="jacobian", correction="gauss-newton", cg_iters=20, correction_steps=6,
                              drift_threshold=0.05, restore_below=0.5)
    restorer, _ = _restorer(tiny_lm, two_layer_specs, flips, cfg)
    start = restorer.held_drift()
    assert bool((start > 0.025).any()), start  # something to restore, so the test can fail
    used = restorer()
    after = restorer.held_drift()
    assert 1 <= used < 6 and bool((after <= 0.025).all()), (used, start, after)
    assert restorer() == 0  # already held: no iteration at all
    calls = []
    monkeypatch.setattr(GaussNewtonRestorer, "restore_once", lambda self, active=None, damping=None: calls.append(active))
    always, _ = _restorer(tiny_lm, two_layer_specs, flips, dataclasses.replace(cfg, restore_below=0.0, correction_steps=3))
    assert always() == 3 and calls == [None, None, None]


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_restore_below_outside_zero_to_one_is_refused(value):
    with pytest.raises(LabError, match="restore-below share"):
        RecoveryConfig(restore_below=value)


def test_each_further_restoration_in_a_step_is_damped_by_the_decay(tiny_lm, two_layer_specs, flips, monkeypatch):
    """gn_damping_decay (Levenberg–Marquardt): the i-th Gauss–Newton iteration within a step solves at
    gn_damping × decay^i, through the real solve, and a larger damping gives a shorter step."""
    from engine.recovery.restoration import GaussNewtonRestorer

    cfg = dataclasses.replace(BASE, projection="jacobian", correction="gauss-newton", cg_iters=4, correction_steps=3,
                              restore_below=0.0, gn_damping=0.2, gn_damping_decay=0.1)
    seen, solve = [], GaussNewtonRestorer._solve

    def recording(self, damping):
        seen.append(damping)
        return solve(self, damping)

    monkeypatch.setattr(GaussNewtonRestorer, "_solve", recording)
    restorer, _ = _restorer(tiny_lm, two_layer_specs, flips, cfg)
    assert restorer() == 3
    assert seen == pytest.approx([0.2, 0.02, 0.002])
    moved = []
    for mu in (1e-3, 10.0):
        r, p = _restorer(tiny_lm, two_layer_specs, flips, cfg)
        before = p[0].clone()
        r.restore_once(damping=mu)
        moved.append(float((p[0] - before).norm()))
    assert moved[1] < moved[0], moved


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_a_damping_decay_outside_zero_to_one_is_refused(value):
    with pytest.raises(LabError, match="damping decay must be above 0 and at most 1"):
        RecoveryConfig(gn_damping_decay=value)


def test_keep_best_keeps_the_lowest_loss_step_within_the_threshold_and_says_when_none_was(tiny_lm, two_layer_specs, flips):
    """Keep-best: among the eligible steps (the answer stage) whose held drift is within the threshold, the lowest-loss
    one is kept, even when the unconstrained best step is over it; a prompt with no such step is flagged (the boundary
    stage makes δ = 0 ineligible here)."""
    cfg = dataclasses.replace(BASE, steps=8, boundary_steps=3)
    problem = build_problem(tiny_lm, two_layer_specs, flips, cfg.answer_tokens, 1)
    obj = DeltaObjective(tiny_lm, two_layer_specs, problem, "answer")  # held drift = layer 2's over the answer rows

    def solve(threshold):
        return optimize_delta(obj, dataclasses.replace(cfg, drift_threshold=threshold), torch.full((len(flips),), cfg.budget))

    free = solve(math.inf)
    assert all(free.within_threshold)
    b = 0
    held = free.drift_per_layer_history[b][L2]  # per step, the same trajectory whatever the threshold (keep-best only reads)
    loss = free.loss_history[b]
    eligible = range(3, cfg.steps + 1)
    assert free.best_step[b] == min(eligible, key=lambda t: loss[t])
    # a threshold just under the free best step's drift, so that step is excluded and a lower-drift one qualifies
    others = sorted(held[t] for t in eligible if held[t] < held[free.best_step[b]])
    assert others, "every eligible step drifts at least as much as the unconstrained best: pick another prompt or steps"
    thr = (held[free.best_step[b]] + others[-1]) / 2
    res = solve(thr)
    qualifying = [t for t in eligible if held[t] <= thr]
    assert res.within_threshold[b] and res.best_step[b] == min(qualifying, key=lambda t: loss[t]) != free.best_step[b]
    with torch.no_grad():
        kept = obj.constrained_drift(obj.evaluate(res.rows, res.gen).z)
    assert float(kept[b]) <= thr + 1e-5
    # below every eligible step's drift: nothing qualifies, the lowest-loss eligible step is kept and flagged
    over = solve(min(held[t] for t in eligible) / 10)
    assert not over.within_threshold[b] and over.best_step[b] == free.best_step[b]


def test_records_and_summary_report_a_delta_kept_over_the_threshold():
    rows = [{"non_refusal": True, "base_like": True, "strict_base_like": True, "drift": 0.1, "floor_violation": 0.0,
             "delta_rel_norm": 0.1, "within_threshold": w} for w in (True, False, None)]
    assert metrics.summarize(rows)["kept_over_threshold"] == 1
