"""The width ladder (``python -m engine.sae_recipe ladder``) and the recipe-v2 options, on the tiny model (seconds).

The ladder is built once per module into a temporary user cache (``SAE_LAB_CACHE``): two tiny SAEs of width 16 and
32 (k = 4) on a tiny corpus of the recipe's own prompts answered by the tiny model.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine.errors import LabError
from engine.sae_recipe.__main__ import main as recipe_main
from engine.sae_recipe.ladder import QUALITY_KEYS, built_ladder, ladder_folder, parse_sizes, rungs
from tests.sae_checks import clamped_drift, encoder_projector

NAMES = ["tiny-w16-k4", "tiny-w32-k4"]
BUILD = ["ladder", "--model", "tiny", "--widths", "32,16", "--ks", "4"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """A user cache holding the two tiny entries, and the work folder (answers, activations) they were built from."""
    cache, work = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_LAB_CACHE", str(cache))
        assert recipe_main([*BUILD, "--work", str(work)]) == 0
        yield {"cache": cache, "work": work, "mp": mp}


@pytest.fixture
def lm():
    from engine.lm.tiny import tiny_model

    return tiny_model()


def test_ladder_builds_two_entries_with_quality_and_preset(ladder):
    for name, width in zip(NAMES, (16, 32)):
        folder = ladder["cache"] / "ladder" / name
        q = json.loads((folder / "quality.json").read_text())
        assert set(QUALITY_KEYS) <= set(q), set(QUALITY_KEYS) - set(q)
        s = q["settings"]
        assert (s["d_sae"], s["k"], s["model"], s["hook"]) == (width, 4, "tiny", "blocks.1.hook_resid_post")
        assert s["train"]["d_sae"] == width and s["command"].startswith("python -m engine.sae_recipe ladder")
        assert q["explained_variance"] == q["heldout"]["explained_variance"] and 0 <= q["dead_fraction"] <= 1
        assert q["heldout"]["n_tokens"] > 100 and q["seconds"] > 0 and q["train_seconds"] > 0
        preset = json.loads((folder / "preset.json").read_text())
        assert preset["mode"] == "set" and preset["k"] == 2 and len(preset["features"]) == 2
        assert all(0 <= f < width for f in preset["features"])
        assert not any(p.name.startswith(".tmp") for p in (ladder["cache"] / "ladder").iterdir())


def test_second_run_skips_built_entries_without_loading_a_model(ladder, monkeypatch, capsys):
    import engine.lm.loading

    def no_model(*a, **k):
        raise AssertionError("a resumed ladder with every entry built must not load the model")

    monkeypatch.setattr(engine.lm.loading, "load_model", no_model)
    before = {n: (ladder["cache"] / "ladder" / n / "sae_weights.safetensors").stat().st_mtime_ns for n in NAMES}
    capsys.readouterr()
    assert recipe_main([*BUILD, "--work", str(ladder["work"])]) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [e["name"] for e in entries] == NAMES and not any(e["built_now"] for e in entries)
    assert before == {n: (ladder["cache"] / "ladder" / n / "sae_weights.safetensors").stat().st_mtime_ns for n in NAMES}


def test_built_ladder_lists_entries_in_width_order(ladder):
    entries = built_ladder()
    assert [e.name for e in entries] == NAMES
    assert [(e.d_sae, e.k) for e in entries] == [(16, 4), (32, 4)]
    assert entries[0].spec == "default:ladder/tiny-w16-k4" and entries[0].folder == ladder["cache"] / "ladder" / NAMES[0]
    assert entries[1].quality["settings"]["d_sae"] == 32 and entries[0].model == "tiny"
    assert built_ladder("tiny") == entries and built_ladder("default") == []


def test_default_ladder_spec_loads_each_entry(ladder, lm):
    from engine.lm.sae_sources import load_sae

    for name, width in zip(NAMES, (16, 32)):
        sae = load_sae(f"default:ladder/{name}", lm)
        assert sae.source == f"default:ladder/{name}" and sae.hook_name == "blocks.1.hook_resid_post"
        assert sae.sae.cfg.d_sae == width and sae.sae.cfg.architecture() == "jumprelu"


def test_features_auto_on_a_ladder_entry_uses_that_entrys_preset(ladder, lm):
    """``--features auto`` reads the ladder entry's own preset.json, not a shipped SAE's (it used to look in the
    shipped folder and find nothing)."""
    from engine.lm.sae_sources import load_sae
    from engine.method.presets import preset_path, resolve_clamp

    for name in NAMES:
        sae = load_sae(f"default:ladder/{name}", lm)
        assert preset_path(sae) == ladder["cache"] / "ladder" / name / "preset.json"
        preset = json.loads(preset_path(sae).read_text())
        assert resolve_clamp(sae, "auto").features == preset["features"]


def test_a_ladder_name_that_is_not_built_names_the_build_command(ladder, lm):
    from engine.lm.sae_sources import load_sae

    with pytest.raises(LabError) as err:
        load_sae("default:ladder/w9216-k32", lm)
    msg = str(err.value)
    assert "not built" in msg and "`python -m engine.sae_recipe ladder --widths 9216 --ks 32`" in msg
    assert "tiny-w16-k4, tiny-w32-k4" in msg
    with pytest.raises(LabError, match="--widths 64 --ks 8 --model tiny"):
        ladder_folder("tiny-w64-k8")
    with pytest.raises(LabError, match="not a ladder entry name"):
        ladder_folder("../w16-k4")


def test_a_crashed_build_leaves_no_visible_folder(ladder, monkeypatch):
    import engine.sae_recipe.serve as serve

    def half_write(sae, folder, files):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cfg.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(serve, "write_sae_folder", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        from engine.sae_recipe.ladder import LadderConfig, build_ladder

        build_ladder(LadderConfig(widths=(24,), ks=(4,), model="tiny", work=str(ladder["work"])))
    assert sorted(p.name for p in (ladder["cache"] / "ladder").iterdir()) == NAMES
    assert [e.name for e in built_ladder()] == NAMES


# ------------------------------------------------------------------------------------------------ zero drift


@pytest.mark.parametrize("name", NAMES)
def test_zero_drift_under_the_encoder_projection_on_a_ladder_entry(ladder, name):
    """Clamped z_S of a ladder SAE is unchanged by an encoder-orthogonal δ ten times ‖h‖; the raw δ moves it."""
    from sae_lens import SAE

    folder = ladder["cache"] / "ladder" / name
    sae = SAE.load_from_disk(str(folder), device="cpu")
    S = json.loads((folder / "preset.json").read_text())["features"] + [0, 1]
    S = sorted(set(S))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h = sae.b_dec + torch.randn(16, sae.cfg.d_in, generator=gen) * 0.1
        for f in S:
            h = h + (float(sae.threshold[f]) + 1.0) * 3 * sae.W_dec[f]
        assert (sae.encode(h)[:, S] > 0).float().mean() > 0.5
    P = encoder_projector(sae.W_enc[:, S])
    raw = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)) * 10 * h.norm(dim=-1, keepdim=True) / sae.cfg.d_in**0.5
    projected = raw.double() @ P
    assert clamped_drift(sae, h, projected, S) < 1e-6
    assert clamped_drift(sae, h, raw, S) > 0.1  # the test can fail: an arbitrary δ does move the clamped features


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("text, message", [
    ("16,abc", "whole numbers"), ("16.5", "whole numbers"), ("0", "must be positive"), ("-8", "must be positive"), (",", "no widths"),
])
def test_bad_widths_are_clear_errors(text, message):
    with pytest.raises(LabError, match=message):
        parse_sizes(text, "widths")


def test_k_larger_than_the_width_is_a_clear_error():
    with pytest.raises(LabError, match="k = 32 is larger than the width 16"):
        rungs((16, 64), (32,))
    assert rungs((64, 32), (4, 8)) == [(32, 4), (32, 8), (64, 4), (64, 8)]


def test_bad_ladder_input_on_the_command_line_exits_with_the_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path))
    assert recipe_main(["ladder", "--model", "tiny", "--widths", "16,x"]) == 2
    assert "widths must be whole numbers" in capsys.readouterr().err
    assert recipe_main(["ladder", "--model", "tiny", "--widths", "8", "--ks", "16"]) == 2
    assert "larger than the width 8" in capsys.readouterr().err
    assert recipe_main(["ladder", "--model", "gpt2", "--widths", "8", "--ks", "4"]) == 2
    assert "not 'gpt2'" in capsys.readouterr().err
    assert not (tmp_path / "ladder").exists() or not any((tmp_path / "ladder").iterdir())


def test_training_samples_name_the_entry_and_its_build_command():
    from engine.sae_recipe.ladder import LadderConfig, build_command, entry_name, recipe_configs

    name = entry_name(9216, 48, resample_every=50, general_text=400, training_samples=2_000_000)
    assert name == "w9216-k48-r50-g400-t2000000"
    assert build_command(name) == ("python -m engine.sae_recipe ladder --widths 9216 --ks 48 --resample-every 50 "
                                   "--general-text 400 --tokens 2000000")
    assert recipe_configs(LadderConfig(training_samples=2_000_000))[1].training_samples == 2_000_000
    assert recipe_configs(LadderConfig())[1].training_samples == 480_000
    refit = entry_name(9216, 48, refit_decoder=True)
    assert refit == "w9216-k48-f" and build_command(refit).endswith("--ks 48 --refit-decoder")
    assert recipe_configs(LadderConfig(refit_decoder=True))[1].refit_decoder and not recipe_configs(LadderConfig())[1].refit_decoder


def test_bad_training_sizes_on_the_command_line_are_clear_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path))
    assert recipe_main(["ladder", "--model", "tiny", "--widths", "16", "--ks", "4", "--tokens", "0"]) == 2
    assert "training samples must be positive" in capsys.readouterr().err
    out = tmp_path / "out"
    assert recipe_main(["train", "--k", "0", "--out", str(out), "--work", str(tmp_path / "w")]) == 2
    assert "--k must be a positive whole number" in capsys.readouterr().err
    assert recipe_main(["train", "--d-sae", "16", "--k", "32", "--out", str(out), "--work", str(tmp_path / "w")]) == 2
    assert "k = 32 is larger than the width 16" in capsys.readouterr().err
    assert not out.exists()  # refused before anything is written


# ------------------------------------------------------------------------------------------------ recipe v2


def _toy_activations(n: int = 6000, d: int = 32, m: int = 512, active: int = 4) -> torch.Tensor:
    """Sparse combinations of m random unit directions with skewed frequencies (many latents die in a short run)."""
    g = torch.Generator().manual_seed(0)
    D = torch.randn(m, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    p = torch.rand(m, generator=g) ** 3 + 1e-3
    idx = torch.multinomial(p.expand(n, m), active, generator=g)
    codes = torch.zeros(n, m).scatter_(1, idx, torch.rand(n, active, generator=g) * 2 + 0.5)
    return codes @ D + 0.05 * torch.randn(n, d, generator=g) + 3.0


def test_dead_latent_resampling_revives_latents_in_a_short_run():
    from engine.sae_recipe.serve import quality
    from engine.sae_recipe.train import TrainConfig, train_topk

    x = _toy_activations()
    train, held = x[:5000], x[5000:]
    base = dict(d_sae=256, k=4, batch_size=128, training_samples=128 * 150, lr=3e-3, lr_end=3e-4, lr_warm_up_steps=5, dead_feature_window=10)
    q = {every: quality(train_topk(train, "blocks.1.hook_resid_post", TrainConfig(**base, resample_every=every), model_name="tiny"), held)
         for every in (0, 20)}
    numbers = f"without resampling {q[0]}, with resampling every 20 steps {q[20]}"
    assert q[20]["dead_fraction"] <= q[0]["dead_fraction"] - 0.2, numbers
    assert q[20]["explained_variance"] >= q[0]["explained_variance"] - 0.02, numbers


def test_decoder_refit_keeps_every_gate_and_raises_explained_variance():
    """The refit changes only W_dec (plus a positive per-latent scale of the encoder): the same latents fire on
    held-out rows (up to fp16 rounding), an encoder-orthogonal δ still leaves the clamped latents exactly unchanged, and held-out EV rises."""
    from engine.sae_recipe.serve import quality, refit_decoder, serve_as_jumprelu
    from engine.sae_recipe.train import TrainConfig, train_topk

    x = _toy_activations()
    train, held = x[:5000], x[5000:]
    cfg = TrainConfig(d_sae=256, k=4, batch_size=128, training_samples=128 * 150, lr=3e-3, lr_end=3e-4, lr_warm_up_steps=5,
                      dead_feature_window=10, resample_every=20)
    served, _ = serve_as_jumprelu(train_topk(train, "blocks.1.hook_resid_post", cfg, model_name="tiny"), train, held, cfg.k)
    before, fired = quality(served, held), served.encode(held) > 0
    enc_before = served.W_enc.detach().clone()
    info = refit_decoder(served, train)
    after = quality(served, held)
    # the same gates up to fp16 rounding of the rescaled weights (a pre-activation within rounding of θ_i): measured 5 of 256 000
    changed = int(((served.encode(held) > 0) != fired).sum())
    assert changed <= 1e-4 * fired.numel(), changed
    assert after["explained_variance"] >= before["explained_variance"] + 0.01, (before, after)
    assert info["refit_live_latents"] > 0 and torch.allclose(served.W_dec.norm(dim=1), torch.ones(cfg.d_sae), atol=1e-2)
    assert not torch.allclose(served.W_enc, enc_before)  # the norms were folded into the encoder (the test can fail)
    S = torch.topk(fired.float().sum(0), 6).indices.tolist()  # the most active latents, so the drift is measured on live ones
    h = held[:32]
    P = encoder_projector(served.W_enc[:, S])
    raw = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)) * 10 * h.norm(dim=-1, keepdim=True) / h.shape[1] ** 0.5
    assert clamped_drift(served, h, raw.double() @ P, S) < 1e-6
    assert clamped_drift(served, h, raw, S) > 0.1


def test_v2_options_at_their_defaults_keep_the_recorded_settings():
    """Off by default, and left out of to_json then: the activation and checkpoint cache keys of today stay valid."""
    from engine.sae_recipe.corpus import CorpusConfig
    from engine.sae_recipe.train import TrainConfig

    assert set(CorpusConfig().to_json()) == {"n_train", "n_heldout", "refusal_rate", "harmful_rate", "turn_weights", "heldout_fraction",
                                             "answer_tokens", "seed"}
    assert "resample_every" not in TrainConfig().to_json() and TrainConfig(resample_every=25).to_json()["resample_every"] == 25
    assert CorpusConfig(general_text_passages=3).to_json()["general_text_passages"] == 3


def test_general_text_passages_are_labelled_other_and_split(ladder, lm):
    from engine.sae_recipe.corpus import OTHER, CorpusConfig, build_corpus
    from engine.sae_recipe.general_text import split_passages

    cfg = CorpusConfig(n_train=6, n_heldout=2, answer_tokens=8, general_text_passages=9, general_text_tokens=64)
    convs = build_corpus(lm, cfg, answer_cache=ladder["work"] / "answers.json")
    text = [c for c in convs if not c.turns]
    assert len(convs) - len(text) == 8
    assert [c.split for c in text].count("train") == 9 and [c.split for c in text].count("heldout") == 3
    assert all(len(c.ids) == len(c.labels) <= 64 and set(c.labels) == {OTHER} for c in text)
    pools = split_passages(cfg.general_text_sources, 256, cfg.heldout_fraction, cfg.seed)
    assert not set(pools["train"]) & set(pools["heldout"]) and len(pools["train"]) > 100
    assert lm.decode(text[0].ids) in pools["train"][0]


def test_general_text_bad_settings_are_clear_errors(lm):
    from engine.sae_recipe.corpus import CorpusConfig, general_text_sequences
    from engine.sae_recipe.general_text import documents

    with pytest.raises(LabError, match="unknown general text source 'wikipedia'"):
        documents(("wikipedia",))
    with pytest.raises(LabError, match="hold only"):
        general_text_sequences(lm, CorpusConfig(general_text_passages=100_000))


def test_activation_cache_is_read_without_pickle(ladder, monkeypatch):
    from engine.sae_recipe.pipeline import collected
    from engine.sae_recipe.train import TrainConfig

    path = next(ladder["work"].glob("acts-*.pt"))
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real_load(*a, **k))
    data = collected(None, [], ["blocks.1.hook_resid_post"], TrainConfig(), ladder["work"], path.stem.removeprefix("acts-"))
    assert seen == [{"weights_only": True}] and data.acts["blocks.1.hook_resid_post"].dtype == torch.float32


def test_the_recipe_shows_progress_bars_for_its_long_steps(tmp_path, monkeypatch, capfd):
    """Own answers, activation collection and SAE training each draw a progress bar on stderr (the JSON on stdout)."""
    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "cache"))
    assert recipe_main(["ladder", "--model", "tiny", "--widths", "8", "--ks", "4", "--work", str(tmp_path / "work")]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["entries"]
    frames = err.replace("\r", "\n").splitlines()  # tqdm redraws its line with carriage returns
    for bar in ("own answers", "collect activations", "train blocks."):
        assert any(f.startswith(bar) and "100%" in f for f in frames), bar
