"""Ready configurations: the paper's file parses and round-trips, every bad key is named, ``flips --config`` lists
what is missing from the cache in seconds (no model load), flags given on the command line win, ``recover --config``
fills the recovery options. Tiny model, no hub."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.cli.main import build_parser, main
from engine.errors import LabError
from engine.method.run_config import CONFIG_DIR, config_files, missing_downloads, parse_run_config, read_run_config

PAPER = CONFIG_DIR / "paper-refusal-gemma-2-2b-it.json"


@pytest.fixture
def offline_cache(hf_cache, monkeypatch):
    """An empty Hugging Face cache and an unreachable hub."""
    from engine.lm.hub import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    yield hf_cache
    hub_reachable.cache_clear()


def test_paper_config_parses_round_trips_and_holds_the_papers_settings():
    cfg = read_run_config(PAPER)
    assert PAPER in config_files()
    assert parse_run_config(json.loads(json.dumps(cfg.to_json())), PAPER) == cfg
    assert (cfg.model, cfg.clamp.mode, cfg.clamp.value, cfg.generation.max_new_tokens) == ("gemma-2-2b-it", "multiply", 3.0, 128)
    rc = cfg.recovery_config()
    assert (rc.budget, rc.steps, rc.boundary_steps, rc.answer_tokens, rc.max_new_tokens) == (40.0, 100, 20, 48, 128)
    assert (rc.projection, rc.drift_threshold, rc.effective_drift_penalty, rc.n_probes, rc.correction_steps) == ("jacobian", 0.03, 200.0, 8, 5)
    assert (rc.correction, rc.probe_every, rc.constraint_positions) == ("adam", 1, "answer")  # the paper's scheme, not the lab's default


def test_paper_config_names_registry_saes_that_exist_and_their_files():
    from engine.lm.sae_registry import resolve

    cfg = read_run_config(PAPER)
    layers = cfg.feature_search["layers"]
    refs = [resolve(cfg.sae.spec(layer)) for layer in layers]
    assert {r.repo_id for r in refs} == {"google/gemma-scope-2b-pt-res"}
    assert all("width_65k" in r.folder for r in refs)
    assert cfg.search_downloads == [f"{r.repo_id}/{r.folder}/params.npz" for r in refs]
    assert all(cfg.sae.hook_template.format(layer=layer) == f"blocks.{layer}.hook_resid_post" for layer in layers)


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key colour"),
    ({"model": 3}, "model must be a string, got 3"),
    ({"clamp": {"mode": "scale"}}, "clamp.mode: unknown clamp mode"),
    ({"clamp": {"factor": 3}}, "unknown key clamp.factor"),
    ({"clamp": {"value": "three"}}, "clamp.value must be a number"),
    ({"generation": {"batch_size": 0}}, "generation.batch_size must be at least 1"),
    ({"generation": {"greedy": False}}, "generation.greedy"),
    ({"recovery": {"stepz": 3}}, "unknown key recovery.stepz"),
    ({"recovery": {"steps": "many"}}, "recovery.steps: steps must be a number"),
    ({"recovery": {"budget": -1}}, "recovery.budget: budget B must be a positive"),
    ({"downloads": ["config.json"]}, "downloads: 'config.json' is not REPO_OWNER/REPO_NAME/FILE"),
    ({"downloads": "google/x/y"}, "downloads must be a list"),
    ({"notes": [1]}, "notes must be a list of strings"),
])
def test_bad_config_values_name_their_key(change, message):
    data = {"name": "t", "model": "tiny", **change}
    with pytest.raises(LabError, match=message):
        parse_run_config(data)


def test_bad_config_files(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        read_run_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LabError, match="not valid JSON"):
        read_run_config(tmp_path / "bad.json")
    with pytest.raises(LabError, match="needs 'model'"):
        parse_run_config({"name": "x"})


def test_flips_config_without_a_built_clamp_file_says_how_to_build_it(tmp_path, offline_cache, capsys):
    code = main(["flips", "--config", str(PAPER), "--prompts", "builtin:harmful", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "paper-refusal-gemma-2-2b-it.clamp.json" in err and "features direction" in err


def test_flips_config_with_files_missing_lists_them_in_seconds_without_loading_the_model(tmp_path, offline_cache, capsys,
                                                                                          monkeypatch):
    data = json.loads(PAPER.read_text())
    rows = [{"sae": data["sae"]["release"] + "/" + data["sae"]["id_template"].format(layer=layer), "features": feats,
             "mode": "set", "values": [1.0] * len(feats)} for layer, feats in ((3, [1, 2]), (12, [5]))]
    (tmp_path / "clamp.json").write_text(json.dumps({"clamps": rows}))
    data["clamp"]["file"] = "clamp.json"  # beside the config
    (tmp_path / "paper.json").write_text(json.dumps(data))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("engine.lm.loading.load_model", no_model)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    get_pretrained_saes_directory()  # the import is process start-up, paid by every command; the timer is for the check
    start = time.perf_counter()
    code = main(["flips", "--config", str(tmp_path / "paper.json"), "--prompts", "builtin:harmful", "--out", str(tmp_path / "run")])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2 and elapsed < 10, (code, elapsed, err)
    assert err.count("\n") == 0 and "download these 11 files first" in err
    assert "google/gemma-2-2b-it/config.json" in err and "google/gemma-2-2b-it/model-00001-of-00002.safetensors" in err
    # only the SAEs of the clamped layers, not the 26 the feature search needs
    assert "layer_3/width_65k/average_l0_89/params.npz" in err and "layer_12/width_65k/average_l0_72/params.npz" in err
    assert err.count("params.npz") == 2


def tiny_config(tmp_path: Path, **generation) -> Path:
    rows = [{"sae": "tiny:blocks.1.hook_resid_post", "features": [0, 3], "mode": "set", "values": [6.0, 7.0]},
            {"sae": "tiny:blocks.2.hook_resid_post", "features": [1], "mode": "set", "values": [2.0]}]
    (tmp_path / "tiny.clamp.json").write_text(json.dumps({"clamps": rows}))
    cfg = {"name": "tiny-test", "model": "tiny", "prompts": "builtin:harmless", "clamp": {"file": "tiny.clamp.json",
           "mode": "multiply", "value": 3.0}, "generation": {"max_new_tokens": 5, "batch_size": 2, **generation},
           "recovery": {"budget": 7.5, "steps": 3, "lr": 0.05}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def test_flips_runs_from_a_config_with_its_clamp_mode_and_value(tmp_path, capsys):
    config = tiny_config(tmp_path)
    code = main(["flips", "--config", str(config), "--out", str(tmp_path / "a"), "--limit", "2"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["model"], saved["max_new_tokens"], saved["batch_size"], saved["prompts"]) == ("tiny", 5, 2, "builtin:harmless")
    assert [(c["mode"], c["values"]) for c in saved["clamps"]] == [("multiply", [3.0, 3.0]), ("multiply", [3.0])]


def test_flips_flags_given_win_over_the_config_even_at_their_defaults(tmp_path):
    from engine.cli.config_option import apply_flips_config

    config = tiny_config(tmp_path)
    args = build_parser().parse_args(["flips", "--config", str(config), "--out", str(tmp_path / "b"),
                                      "--max-new-tokens", "64", "--prompts", "builtin:harmful"])
    apply_flips_config(args)
    # 64 is the flag's default, yet given on the command line it wins over the config's 5; unset flags take the config's
    assert (args.max_new_tokens, args.prompts, args.batch_size, args.model) == (64, "builtin:harmful", 2, "tiny")
    assert args.clamp == str(tmp_path / "tiny.clamp.json")
    args = build_parser().parse_args(["flips", "--config", str(config), "--out", str(tmp_path / "c"), "--sae", "tiny"])
    apply_flips_config(args)
    assert args.clamp is None  # a single SAE given: the config's clamp file is not forced on it


def test_flips_without_prompts_or_config_is_a_clear_error(tmp_path, capsys):
    assert main(["flips", "--out", str(tmp_path / "r"), "--model", "tiny"]) == 2
    assert "flips needs --prompts" in capsys.readouterr().err


def test_recover_config_fills_recovery_options_and_flags_win(tmp_path):
    from engine.cli.config_option import apply_recover_config
    from engine.cli.recovery import dataclass_from_args
    from engine.recovery.config import RecoveryConfig

    config = tiny_config(tmp_path)
    args = build_parser().parse_args(["recover", "--run", str(tmp_path), "--config", str(config), "--steps", "60"])
    apply_recover_config(args)
    rc = dataclass_from_args(RecoveryConfig, args)
    assert (rc.budget, rc.lr, rc.steps) == (7.5, 0.05, 60)  # 60 is the default, given on the command line: it wins
    args = build_parser().parse_args(["recover", "--run", str(tmp_path), "--config", str(PAPER)])
    apply_recover_config(args)
    assert dataclass_from_args(RecoveryConfig, args) == read_run_config(PAPER).recovery_config()


def test_missing_downloads_with_everything_cached_is_empty(tmp_path, offline_cache):
    cfg = parse_run_config({"name": "x", "model": "m", "downloads": ["acme/model/config.json"],
                            "clamp": {"file": "preset:whatever"}})
    assert missing_downloads(cfg, None) == ["acme/model/config.json"]
    snap = offline_cache / "models--acme--model" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (offline_cache / "models--acme--model" / "refs").mkdir()
    (offline_cache / "models--acme--model" / "refs" / "main").write_text("a" * 40)
    assert missing_downloads(cfg, None) == []
