"""The shipped multi-layer preset ``preset:default-multi``: its file agrees with how it was chosen, the manifest lists
it, its settings are checked, and (slow) it flips built-in prompts on the default model with both layers clamped."""

from __future__ import annotations

import json

import pytest

from engine.errors import LabError
from engine.method.clamp_sets import read_clamp_file
from engine.paths import DEFAULT_SAE_DIR
from engine.sae_recipe.multi_preset import HIGH, LOW, NAME, MultiPresetConfig, contrast_candidates

PRESET = DEFAULT_SAE_DIR / "presets" / f"{NAME}.json"
MIN_FLIPS = 4
"""Valid flips the slow test needs among its first 6 built-in harmless prompts."""


def _preset() -> dict:
    return json.loads(PRESET.read_text())


def test_preset_is_a_set_clamp_over_both_shipped_hooks():
    rows, meta = read_clamp_file(f"preset:{NAME}")
    assert [r["sae"] for r in rows] == [f"default:{LOW}", f"default:{HIGH}"]
    assert all(r["mode"] == "set" and len(r["features"]) == len(r["values"]) >= 1 for r in rows)
    assert meta["note"] and meta["command"].startswith("python -m engine.sae_recipe preset-multi")


def test_preset_values_follow_from_its_candidates_and_setting():
    """The clamp is the top K of each layer's recorded contrast rows at α × mean refusal activation (reproducible)."""
    data = _preset()
    assert data["candidates"] == "contrast"
    for row, (k, alpha) in zip(data["clamps"], ((data["k_15"], data["alpha_15"]), (data["k_20"], data["alpha_20"]))):
        cands = contrast_candidates(row["hook"])[:k]
        assert row["features"] == [c.feature for c in cands]
        assert row["values"] == pytest.approx([alpha * c.refusal_mean for c in cands], abs=1e-4)


def test_the_chosen_setting_is_the_best_of_its_grid():
    data = _preset()
    sel = data["selection"]
    cfg = sel["config"]
    grid = sel["grid"]
    product = len(cfg["ks_15"]) * len(cfg["alphas_15"]) * len(cfg["ks_20"]) * len(cfg["alphas_20"])
    assert sum(g["stage"] == "grid" for g in grid) == product and len(grid) == product + len(cfg["extra"])
    assert len(sel["validation_prompts"]) == 26 and all(g["n"] == 26 for g in grid)
    best = max(grid, key=lambda g: (g["fluent_refusals"], -g["degenerate"], -(g["alpha_15"] * g["k_15"] + g["alpha_20"] * g["k_20"])))
    assert {k: best[k] for k in ("k_15", "alpha_15", "k_20", "alpha_20")} == {k: data[k] for k in ("k_15", "alpha_15", "k_20", "alpha_20")}
    # both layers carry part of it: the whole clamp gives more fluent refusals than either layer's part alone
    for alone in sel["ablation"].values():
        assert alone["fluent_refusals"] < best["fluent_refusals"]
    assert sum(e["fluent_refusal"] for e in sel["examples"]) == best["fluent_refusals"]


def test_manifest_lists_the_preset_and_its_hash():
    from engine.sae_recipe.serve import sha256

    manifest = json.loads((DEFAULT_SAE_DIR / "manifest.json").read_text())
    assert manifest["files"][f"presets/{NAME}.json"] == sha256(PRESET)
    assert manifest["presets"][NAME]["k_15"] == _preset()["k_15"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"ks_15": ()}, "--ks-15"), ({"ks_20": (0,)}, "--ks-20"), ({"alphas_15": (-1.0,)}, "--alphas-15"), ({"candidates": "x"}, "unknown"),
     ({"extra": ((15, 3.0, 0, 2.0),)}, "--extra")],
)
def test_multi_preset_config_rejects_bad_grids(kwargs, fragment):
    with pytest.raises(LabError, match=fragment):
        MultiPresetConfig(**kwargs)


def test_settings_are_the_product_then_new_extras():
    cfg = MultiPresetConfig(ks_15=(10,), alphas_15=(3.0,), ks_20=(5, 10), alphas_20=(2.0,), extra=((10, 3.0, 5, 2.0), (15, 3.5, 5, 3.0)))
    assert [(s["k_15"], s["alpha_15"], s["k_20"], s["alpha_20"], s["stage"]) for s in cfg.settings()] == [
        (10, 3.0, 5, 2.0, "grid"), (10, 3.0, 10, 2.0, "grid"), (15, 3.5, 5, 3.0, "extra")]


@pytest.mark.slow
def test_default_multi_flips_builtin_prompts(default_lm):
    from engine.method.builtin_prompts import HARMLESS
    from engine.method.clamp_sets import load_clamp_set
    from engine.method.flips import run_flips
    from engine.method.generation import GenerationConfig

    rows, _ = read_clamp_file(f"preset:{NAME}")
    specs = load_clamp_set(default_lm, rows)
    assert [s.hook_name for s in specs] == [LOW, HIGH]
    records = list(run_flips(default_lm, specs, HARMLESS[:6], GenerationConfig(max_new_tokens=48, batch_size=6)))
    assert sum(r.valid for r in records) >= MIN_FLIPS, [r.clamped_text for r in records]
