"""The SAE-quality study (engine.study) on the tiny model with two tiny SAEs: the table, resume, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import threading
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.errors import LabError
from engine.study.config import COLUMNS, StudyConfig

FAST = StudyConfig(preset_ks=(2,), preset_alphas=(4.0,), preset_prompts=3, preset_max_new_tokens=8, top_k=3,
                   recovery={"steps": 3, "max_new_tokens": 8})
"""Study settings small enough for seconds on the tiny model."""
FAST_FLAGS = ["--preset-ks", "2", "--preset-alphas", "4", "--preset-prompts", "3", "--preset-max-new-tokens", "8",
              "--top-k", "3", "--steps", "3", "--max-new-tokens", "8"]
SHIPPED_QUALITY = {"heldout": {"explained_variance": 0.875, "l0": 31.5, "dead_fraction": 0.125, "n_tokens": 999}}


def make_saes(folder: Path) -> tuple[Path, Path]:
    """Two tiny SAE folders at blocks.1: ``a`` (64 latents) ships a preset.json and a quality.json, ``b`` (128) nothing."""
    from engine.lm.tiny import tiny_sae

    a, b = folder / "sae-a", folder / "sae-b"
    tiny_sae(32, d_sae=64, hook_name="blocks.1.hook_resid_post", seed=1).save_model(str(a))
    tiny_sae(32, d_sae=128, hook_name="blocks.1.hook_resid_post", seed=2).save_model(str(b))
    (a / "preset.json").write_text(json.dumps({"features": [0, 1, 2], "mode": "set", "values": [8.0, 8.0, 8.0], "alpha": 4.0}))
    (a / "quality.json").write_text(json.dumps(SHIPPED_QUALITY))
    return a, b


def make_source_run(folder: Path) -> Path:
    from engine.cli.main import main

    run = folder / "source-run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "3", "--model", "tiny", "--sae", "tiny",
                 "--features", "0,1,2", "--value", "8", "--max-new-tokens", "8", "--out", str(run)]) == 0
    return run


@contextmanager
def tiny_refusals():
    """The tiny model's random bytes read as degenerate refusals to the judge. As in test_attribution (which marks
    every flip valid), every flip the study makes counts as valid, and the preset search's contrast reads the
    model's own answers as ordinary answers (only in ``contrast_pairs``)."""
    import engine.method.flips as flips_mod
    import engine.method.judge as judge_mod

    real_flips, real_judge = flips_mod.run_flips, judge_mod.judge

    def all_valid(*args, **kwargs):
        for rec in real_flips(*args, **kwargs):
            yield dataclasses.replace(rec, valid=True, base_refusal=False, clamped_refusal=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flips_mod, "run_flips", all_valid)
        mp.setattr(judge_mod, "judge", lambda text, cfg=None: dataclasses.replace(real_judge(text, cfg), refusal=False))
        yield


@pytest.fixture(scope="module")
def study_env(tmp_path_factory, tiny_lm):
    folder = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_LAB_DATA", str(folder / "data"))
        a, b = make_saes(folder)
        run = make_source_run(folder)
        yield types.SimpleNamespace(folder=folder, a=a, b=b, run=run, lm=tiny_lm)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_study_writes_the_documented_table(study_env, capsys):
    from engine.cli.main import main
    from engine.store import catalogue

    with tiny_refusals():
        rc = main(["study", "sae-quality", "--run", str(study_env.run), "--sae", str(study_env.a), "--sae", str(study_env.b),
                   "--name", "table", *FAST_FLAGS])
    assert rc == 0, capsys.readouterr().err
    folder = Path(json.loads(capsys.readouterr().out)["dir"])
    table = json.loads((folder / "study.json").read_text())
    assert table["columns"] == COLUMNS
    assert (folder / "study.csv").read_text().splitlines()[0].split(",") == list(COLUMNS)
    rows = table["rows"]
    assert [r["sae"] for r in rows] == [str(study_env.a), str(study_env.b)]
    assert [r["d_sae"] for r in rows] == [64, 128]
    for r in rows:
        assert list(r) == list(COLUMNS) and r["status"] == "done"
        numbers = ["explained_variance", "l0", "dead_fraction", "recovered", "wall_seconds",
                   *(c for c in COLUMNS if c.startswith(("share_", "gain_")))]
        assert all(_finite(r[c]) for c in numbers), {c: r[c] for c in numbers}
        assert all(0 <= r[c] <= 1 for c in COLUMNS if c.startswith("share_"))
        assert 0 <= r["dead_fraction"] <= 1 and r["l0"] > 0 and r["n_valid_flips"] == r["n_prompts"] == 3
        # the encoder projection keeps the clamped latents still, so the clamped part restores nothing
        assert abs(r["gain_clamped"]) < 1e-3
        # every step is a normal run of the store, with the study's recovery and its attribution
        info = catalogue.get_run(r["run"])
        record = info.record("study")
        assert record.complete and record.attribution_summary["n"] == 3
        assert info.config["source"] == "study" and info.config["clamps"][0]["hook"] == "blocks.1.hook_resid_post"
    a, b = rows
    assert (a["quality_source"], a["explained_variance"], a["dead_fraction"]) == ("quality.json", 0.875, 0.125)
    assert b["quality_source"] == "measured" and b["quality_tokens"] > 0
    assert (a["preset_source"], a["clamp_k"]) == ("preset.json", 3)
    assert (b["preset_source"], b["clamp_k"], b["clamp_alpha"]) == ("search", 2, 4.0)
    assert catalogue.get_run(a["run"]).config["clamps"][0]["features"] == [0, 1, 2]
    assert (folder / "study.html").stat().st_size > 0


def test_measured_quality_matches_the_recipe(tiny_jumprelu):
    """Two implementations of EV / L0 / dead fraction agree (the study's and the recipe's)."""
    import torch

    from engine.sae_recipe.serve import quality
    from engine.study.measure import measure_quality

    x = 3 * torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    ours, recipe = measure_quality(tiny_jumprelu, x), quality(tiny_jumprelu.sae, x)
    assert (ours.explained_variance, ours.l0, ours.dead_fraction) == (recipe["explained_variance"], recipe["l0"], recipe["dead_fraction"])
    with pytest.raises(LabError, match="at least two tokens"):
        measure_quality(tiny_jumprelu, x[:1])


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_a_cancel_finishes_without_redoing_the_first(study_env, monkeypatch):
    import engine.method.flips as flips_mod
    from engine.store.catalogue import runs_root
    from engine.study.quality_study import run_study

    cancel = threading.Event()
    with tiny_refusals():
        first = run_study(study_env.run, [str(study_env.a), str(study_env.b)], FAST, name="resumed", lm=study_env.lm,
                          cancel=cancel, on_row=lambda row: cancel.set())
    assert first.cancelled and [r["status"] for r in first.rows] == ["done", "not started"]
    done_run = runs_root() / first.rows[0]["run"]
    before = _hashes(done_run)
    state_before = (first.path / "saes" / "1" / "state.json").read_text()
    calls: list[str] = []
    real = flips_mod.write_flips_run

    def counting(lm, specs, *args, **kwargs):
        calls.append(specs[0].sae.source)
        return real(lm, specs, *args, **kwargs)

    monkeypatch.setattr(flips_mod, "write_flips_run", counting)
    with tiny_refusals():
        second = run_study(study_env.run, None, FAST, name="resumed", resume=True, lm=study_env.lm)
    assert not second.cancelled and [r["status"] for r in second.rows] == ["done", "done"]
    assert calls == [f"local:{study_env.b}"]  # only the second SAE was flipped
    assert _hashes(done_run) == before  # the first SAE's run, recovery and attribution are untouched
    assert (first.path / "saes" / "1" / "state.json").read_text() == state_before
    assert second.rows[0] == first.rows[0]
    table = json.loads((second.path / "study.json").read_text())
    assert len(table["rows"]) == 2
    # other settings are refused, naming what differs; a finished study's name is not reused without resume
    with pytest.raises(LabError, match="cannot resume the study 'resumed'.*top_k"):
        run_study(study_env.run, None, dataclasses.replace(FAST, top_k=2), name="resumed", resume=True, lm=study_env.lm)
    with pytest.raises(LabError, match="study named 'resumed' already exists"):
        run_study(study_env.run, [str(study_env.a)], FAST, name="resumed", lm=study_env.lm)


def test_bad_input_fails_clearly_before_anything_is_written(study_env, tmp_path, capsys, monkeypatch):
    from engine.cli.main import main
    from engine.lm.tiny import tiny_sae
    from engine.study.quality_study import studies_root

    before = sorted(p.name for p in studies_root().iterdir())
    # an unknown run
    assert main(["study", "sae-quality", "--run", str(tmp_path / "nope"), "--sae", str(study_env.a)]) == 2
    assert "there is no flips run" in capsys.readouterr().err
    # an SAE made for another model
    other = tmp_path / "gpt2-sae"
    tiny_sae(32, d_sae=64, hook_name="blocks.1.hook_resid_post", model_name="gpt2").save_model(str(other))
    assert main(["study", "sae-quality", "--run", str(study_env.run), "--sae", str(study_env.a), "--sae", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"SAE {str(other)!r}" in err and "trained on gpt2" in err
    # no SAEs, and the ladder is empty / not part of this version
    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "empty-cache"))  # no ladder built there
    assert main(["study", "sae-quality", "--run", str(study_env.run)]) == 2
    err = capsys.readouterr().err
    assert "no SAE of the width ladder is built yet" in err and "engine.sae_recipe ladder --model tiny" in err
    assert "--sae" in err
    monkeypatch.setitem(sys.modules, "engine.sae_recipe.ladder", None)  # import fails
    assert main(["study", "sae-quality", "--run", str(study_env.run)]) == 2
    assert "has no width ladder" in capsys.readouterr().err
    # a bad grid, and a bad study name
    assert main(["study", "sae-quality", "--run", str(study_env.run), "--sae", str(study_env.a), "--preset-ks", "0"]) == 2
    assert "numbers of features K ≥ 1" in capsys.readouterr().err
    assert main(["study", "sae-quality", "--run", str(study_env.run), "--sae", str(study_env.a), "--name", "../x"]) == 2
    assert "not a usable study name" in capsys.readouterr().err
    assert sorted(p.name for p in studies_root().iterdir()) == before


def test_ladder_entries_become_the_study_saes(monkeypatch):
    from engine.study.quality_study import resolve_saes

    entry = types.SimpleNamespace(spec="default:ladder/w4608-k32", name="w4608-k32", k=32,
                                  quality={"heldout": {"explained_variance": 0.9, "l0": 30.0, "dead_fraction": 0.1}})
    asked: list = []
    fake = types.SimpleNamespace(built_ladder=lambda model=None: asked.append(model) or [entry])
    monkeypatch.setitem(sys.modules, "engine.sae_recipe.ladder", fake)
    [sae] = resolve_saes(None, "default")
    assert (sae.spec, sae.name, sae.k, sae.quality) == ("default:ladder/w4608-k32", "w4608-k32", 32, entry.quality)
    resolve_saes(None, "tiny")
    assert asked == ["default", "tiny"]  # the ladder of the run's model
    with pytest.raises(LabError, match="built for the default model only, not gpt2"):
        resolve_saes(None, "gpt2")
    assert [s.spec for s in resolve_saes(["tiny", "tiny"], "gpt2")] == ["tiny"]  # given specs win, once each


def test_study_of_the_built_tiny_ladder(study_env, tmp_path, monkeypatch, capsys):
    """With no --sae, every built ladder SAE of the run's model is studied, with the ladder's own preset and quality."""
    from engine.cli.main import main
    from engine.sae_recipe.__main__ import main as recipe_main

    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "cache"))
    assert recipe_main(["ladder", "--model", "tiny", "--widths", "32,16", "--ks", "4", "--work", str(tmp_path / "work")]) == 0
    capsys.readouterr()
    with tiny_refusals():
        assert main(["study", "sae-quality", "--run", str(study_env.run), "--name", "ladder", *FAST_FLAGS]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["sae"], r["d_sae"], r["k"]) for r in rows] == [("default:ladder/tiny-w16-k4", 16, 4), ("default:ladder/tiny-w32-k4", 32, 4)]
    for r in rows:
        shipped = json.loads((tmp_path / "cache" / "ladder" / r["name"] / "quality.json").read_text())
        preset = json.loads((tmp_path / "cache" / "ladder" / r["name"] / "preset.json").read_text())
        assert (r["quality_source"], r["explained_variance"], r["l0"]) == ("quality.json", shipped["explained_variance"], shipped["l0"])
        assert (r["preset_source"], r["clamp_k"]) == ("preset.json", len(preset["features"]))
        assert r["status"] == "done" and all(0 <= r[c] <= 1 for c in COLUMNS if c.startswith("share_"))


def test_every_column_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "STUDY.md").read_text()
    missing = [c for c in COLUMNS if f"| `{c}` |" not in text]
    assert not missing, f"docs/STUDY.md does not describe {missing}"
