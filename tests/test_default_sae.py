"""The shipped default SAEs: files, hashes, quality floors, the zero-drift property, the recipe's parts (tiny model).

Tests marked ``slow`` load the real default model (SmolLM2-135M-Instruct, about 1 s from the cache).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.paths import DEFAULT_SAE_DIR
from engine.sae_recipe.__main__ import DEFAULT_HOOKS, FLOORS, PRIMARY
from engine.sae_recipe.__main__ import main as default_main
from tests.sae_checks import clamped_drift, encoder_projector

MANIFEST = DEFAULT_SAE_DIR / "manifest.json"
D_MODEL, D_SAE = 576, 4608


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def _load(hook: str):
    from sae_lens import SAE

    return SAE.load_from_disk(str(DEFAULT_SAE_DIR / hook), device="cpu")


# ------------------------------------------------------------------------------------------------ shipped files


def test_manifest_lists_primary_and_both_hooks():
    m = _manifest()
    assert m["primary"] == PRIMARY == "blocks.15.hook_resid_post"
    for hook in DEFAULT_HOOKS:
        assert hook in m["saes"]
        for name in ("cfg.json", "sae_weights.safetensors", "quality.json", "preset.json"):
            assert f"{hook}/{name}" in m["files"]
    assert {"corpus", "train", "preset"} <= set(m["recipe"]) and m["seeds"]


def test_shipped_files_match_manifest_hashes():
    from engine.sae_recipe.serve import sha256

    files = _manifest()["files"]
    assert files
    for rel, digest in files.items():
        assert sha256(DEFAULT_SAE_DIR / rel) == digest, rel
    assert default_main(["verify"]) == 0


def test_verify_detects_a_changed_file(tmp_path, capsys):
    out = tmp_path / "sae"
    shutil.copytree(DEFAULT_SAE_DIR, out)
    preset = out / PRIMARY / "preset.json"
    preset.write_text(preset.read_text().replace('"set"', '"zero"', 1))
    assert default_main(["verify", "--out", str(out)]) == 2
    assert "preset.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ks", "10,x"], "--ks: expected comma-separated numbers, got '10,x'"),
        (["--alphas", "0,3"], "--alphas: every value must be positive"),
        (["--hook", "blocks.3.hook_resid_post"], "no SAE at"),
    ],
)
def test_preset_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    """``preset`` re-chooses a shipped SAE's preset; a bad grid or hook fails before the model loads, files untouched."""
    out = tmp_path / "sae"
    shutil.copytree(DEFAULT_SAE_DIR, out)
    before = {p: p.read_bytes() for p in out.rglob("*.json")}
    assert default_main(["preset", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == before


def test_preset_without_a_manifest_says_the_corpus_is_unknown(tmp_path, capsys):
    out = tmp_path / "sae"
    shutil.copytree(DEFAULT_SAE_DIR / PRIMARY, out / PRIMARY)
    assert default_main(["preset", "--out", str(out)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("hook", DEFAULT_HOOKS)
def test_loads_with_sae_lens_as_jumprelu(hook):
    sae = _load(hook)
    assert sae.cfg.architecture() == "jumprelu"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, D_SAE)
    assert sae.cfg.metadata.hook_name == hook and sae.cfg.metadata.model_name == "SmolLM2-135M-Instruct"
    assert sae.W_enc.dtype == torch.float32 and torch.isfinite(sae.W_enc).all() and (sae.threshold >= 0).all()
    assert (DEFAULT_SAE_DIR / hook / "sae_weights.safetensors").stat().st_size <= 16 * 2**20
    norms = sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)  # decoder norms folded


@pytest.mark.parametrize("hook", DEFAULT_HOOKS)
def test_quality_meets_floors(hook):
    q = json.loads((DEFAULT_SAE_DIR / hook / "quality.json").read_text())
    held = q["heldout"]
    assert held["n_tokens"] >= 10_000
    assert held["explained_variance"] >= FLOORS["explained_variance_min"]
    assert FLOORS["l0_min"] <= held["l0"] <= FLOORS["l0_max"]
    assert held["dead_fraction"] <= FLOORS["dead_fraction_max"]
    assert q["floors"] == FLOORS and q["meets_floors"]


@pytest.mark.parametrize("hook", DEFAULT_HOOKS)
def test_preset_is_a_set_clamp_on_real_features(hook):
    p = json.loads((DEFAULT_SAE_DIR / hook / "preset.json").read_text())
    assert p["mode"] == "set" and p["hook"] == hook
    assert len(p["features"]) == len(p["values"]) == p["k"] and len(set(p["features"])) == p["k"]
    assert all(0 <= f < D_SAE for f in p["features"]) and all(v > 0 for v in p["values"])
    top = {r["feature"]: r for r in p["contrast"]}
    for f, v in zip(p["features"], p["values"]):
        assert top[f]["refusal_mean"] > top[f]["answer_mean"]
        assert v == pytest.approx(p["alpha"] * top[f]["refusal_mean"], rel=1e-3)


def test_training_prompts_are_ours_and_disjoint_from_builtin_test_sets():
    from engine.method.builtin_prompts import HARMFUL, HARMLESS
    from engine.sae_recipe.train_prompts import HARMFUL_TRAIN, HARMLESS_TRAIN, REFUSALS

    ours = HARMLESS_TRAIN + HARMFUL_TRAIN
    assert len(set(ours)) == len(ours) >= 300 and len(HARMFUL_TRAIN) >= 80
    assert not {p.lower() for p in ours} & {p.lower() for p in HARMLESS + HARMFUL}
    assert len(set(REFUSALS)) >= 15


# ------------------------------------------------------------------------------------------------ zero drift


def _h_with_active(sae, S: list[int], n: int = 16) -> torch.Tensor:
    """Inputs on which every clamped feature fires: b_dec + their decoder rows well above threshold + noise."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h = sae.b_dec + torch.randn(n, sae.cfg.d_in, generator=gen) * 2.0
        for f in S:
            h = h + (sae.threshold[f] + 5.0) * 3 * sae.W_dec[f]
    return h


def test_encoder_orthogonal_perturbation_leaves_clamped_features_unchanged():
    """Shipped primary SAE: a large random δ projected with P cannot move z_S; the same δ unprojected does."""
    sae = _load(PRIMARY)
    S = json.loads((DEFAULT_SAE_DIR / PRIMARY / "preset.json").read_text())["features"]
    h = _h_with_active(sae, S)
    with torch.no_grad():
        assert (sae.encode(h)[:, S] > 0).float().mean() > 0.5
    P = encoder_projector(sae.W_enc[:, S])
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(h.shape, generator=gen) * 10 * h.norm(dim=-1, keepdim=True) / D_MODEL**0.5  # ‖δ‖ ≈ 10 ‖h‖
    projected = raw.double() @ P
    assert float((projected @ sae.W_enc[:, S].double()).abs().max()) < 1e-9 * float(raw.norm(dim=-1).max())
    assert clamped_drift(sae, h, projected, S) < 1e-6
    assert clamped_drift(sae, h, raw, S) > 0.1  # the test can fail: an arbitrary δ does move the clamped features


def test_plain_topk_with_the_same_weights_would_drift():
    """Why JumpReLU: with TopK selection the same projected δ moves z_S by pushing other latents above it."""
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    jr = _load(PRIMARY)
    S = json.loads((DEFAULT_SAE_DIR / PRIMARY / "preset.json").read_text())["features"]
    topk = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=32, rescale_acts_by_decoder_norm=False))
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(topk, name).copy_(getattr(jr, name))
    h = _h_with_active(jr, S)
    P = encoder_projector(jr.W_enc[:, S])
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(h.shape, generator=gen) * 10 * h.norm(dim=-1, keepdim=True) / D_MODEL**0.5
    projected = raw.double() @ P
    assert clamped_drift(jr, h, projected, S) < 1e-6
    assert clamped_drift(topk, h, projected, S) > 1e-2


@pytest.mark.slow
def test_zero_drift_on_real_activations_and_default_loading():
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.presets import resolve_clamp
    from engine.sae_recipe.corpus import REFUSALS

    lm = load_model("default", "cpu")
    sae = load_sae("default", lm)
    assert sae.hook_name == PRIMARY and sae.source == f"default:{PRIMARY}"
    assert load_sae("default:blocks.20.hook_resid_post", lm).hook_name == "blocks.20.hook_resid_post"
    spec = resolve_clamp(sae, "auto")
    ids = lm.encode(lm.chat_prompt("How do I fold a paper crane?") + REFUSALS[0])
    seen = []
    with torch.no_grad():
        lm.model.run_with_hooks(torch.tensor([ids]), stop_at_layer=16, fwd_hooks=[(PRIMARY, lambda a, hook: seen.append(a))])
    h = seen[0][0, 1:]  # position 0 is the attention sink
    S = spec.features
    with torch.no_grad():
        assert (sae.encode(h)[:, S] > 0).any()  # the refusal text switches on some clamped feature
    P = encoder_projector(sae.sae.W_enc[:, S])
    raw = torch.randn(h.shape, generator=torch.Generator().manual_seed(2)) * 0.2 * h.norm(dim=-1, keepdim=True) / D_MODEL**0.5
    assert clamped_drift(sae.sae, h, raw.double() @ P, S) < 1e-6


# ------------------------------------------------------------------------------------------------ recipe parts (tiny)


def test_chat_labels_mark_exactly_the_answers():
    from engine.lm.tiny import tiny_model
    from engine.sae_recipe.corpus import ANSWER, OTHER, REFUSAL, Turn, tokenize_chat

    lm = tiny_model()
    turns = [Turn("hi there", "Hello friend.", False), Turn("do bad", "I can't help with that.", True)]
    ids, labels = tokenize_chat(lm, turns)
    text = lm.decode(ids)
    assert len(ids) == len(labels)
    answer = "".join(lm.decode([t]) for t, lab in zip(ids, labels) if lab == ANSWER)
    refusal = "".join(lm.decode([t]) for t, lab in zip(ids, labels) if lab == REFUSAL)
    assert answer == "Hello friend." and refusal == "I can't help with that."
    assert labels.count(OTHER) > 0 and "hi there" in text


def test_recipe_on_tiny_model_collects_trains_and_serves():
    from engine.lm.tiny import tiny_model
    from engine.sae_recipe.corpus import Conversation, Turn, tokenize_chat
    from engine.sae_recipe.serve import quality, serve_as_jumprelu
    from engine.sae_recipe.train import TrainConfig, _distinct_positions, collect, train_topk

    lm = tiny_model()
    words = ["apple", "river", "stone", "cloud", "music", "paper", "green", "light"]
    convs = []
    for i in range(24):
        turns = [Turn(f"tell me about {words[i % 8]} {i}", f"{words[(i * 3) % 8]} is nice and {words[(i + 1) % 8]}", i % 3 == 0)]
        ids, labels = tokenize_chat(lm, turns)
        convs.append(Conversation(turns, ids, labels, "heldout" if i >= 20 else "train"))
    convs.append(convs[0])  # an exact duplicate adds no new positions
    keep = _distinct_positions(convs)
    assert keep[-1] == [] and all(0 not in k for k in keep)
    cfg = TrainConfig(d_sae=64, k=4, batch_size=64, training_samples=64 * 60, lr=3e-3, lr_end=3e-4, lr_warm_up_steps=5, dead_feature_window=10, collect_batch=8)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    data = collect(lm, convs, hooks, cfg)
    n_distinct = sum(len(k) for k in keep)
    assert data.acts[hooks[0]].shape == (data.stats["kept_positions"], lm.d_model) and data.stats["kept_positions"] <= n_distinct
    assert data.heldout.any() and (~data.heldout).any()
    x = data.acts[hooks[0]]
    topk = train_topk(x[~data.heldout], hooks[0], cfg, model_name="tiny")
    served, report = serve_as_jumprelu(topk, x[~data.heldout], x[data.heldout], cfg.k)
    assert served.cfg.architecture() == "jumprelu"
    calib_l0 = quality(served, x[~data.heldout])["l0"] if report["served"] == "per_latent" else None
    if calib_l0 is not None:
        assert calib_l0 == pytest.approx(cfg.k, abs=0.5)  # quantile matching reproduces TopK's firing counts
    assert report["topk_heldout"]["explained_variance"] > 0.3
