"""The headless contract: `info`, `flips`, and one clear line for every bad input."""

from __future__ import annotations

import json

import pytest

from engine.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def flips_args(tmp_path, *extra, prompts="builtin:harmless"):
    return ["flips", "--prompts", prompts, "--out", str(tmp_path / "run"), "--model", "tiny", "--sae", "tiny",
            "--max-new-tokens", "4", "--limit", "2", *extra]


def test_info_json(capsys, monkeypatch):
    monkeypatch.setenv("SAE_LAB_OFFLINE", "1")
    from engine.lm.hub import hub_reachable

    hub_reachable.cache_clear()
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    info = json.loads(out)
    assert info["default_model"]["id"] == "SmolLM2-135M-Instruct"
    assert info["registry_saes"]["default"] == []
    assert any(r["release"] == "gpt2-small-res-jb" for r in info["registry_saes"]["gpt2"])
    assert info["hub_reachable"] is False
    assert "cuda" in info["gpu"]
    hub_reachable.cache_clear()


def test_flips_on_tiny_model_writes_documented_files(tmp_path, capsys):
    code, out, err = run_cli(capsys, *flips_args(tmp_path, "--features", "0,1", "--mode", "set", "--value", "40"))
    assert code == 0, err
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "flips.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for key in ("id", "prompt", "base_text", "clamped_text", "base_refusal", "clamped_refusal", "valid"):
        assert key in rows[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_prompts"] == 2 and summary["features"] == [0, 1] and summary["mode"] == "set"
    assert summary["n_valid"] == sum(r["valid"] for r in rows)
    config = json.loads((run / "config.json").read_text())
    assert config["clamps"][0]["values"] == [40.0, 40.0] and "refusal_phrases" in config["judge"]
    assert json.loads(out)["n_prompts"] == 2


def _one_line_error(code, err, fragment):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and fragment in lines[0], lines[0]


@pytest.fixture
def narrow_sae(tmp_path):
    from engine.lm.tiny import tiny_sae

    folder = tmp_path / "narrow"
    tiny_sae(16, hook_name="blocks.1.hook_resid_post").save_model(folder)
    return folder


@pytest.fixture
def wrong_hook_sae(tmp_path):
    from engine.lm.tiny import tiny_sae

    folder = tmp_path / "wronghook"
    tiny_sae(32, hook_name="blocks.9.hook_resid_post").save_model(folder)
    return folder


def test_bad_inputs_each_give_one_clear_line(tmp_path, capsys, narrow_sae, wrong_hook_sae, monkeypatch):
    monkeypatch.setenv("SAE_LAB_OFFLINE", "1")
    from engine.lm.hub import hub_reachable

    hub_reachable.cache_clear()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{oops")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("text\nhello\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = [
        (["--model", "no-such-model"], "unknown model"),
        (["--sae", "gpt2-small-res-jb/blocks.99.nope"], "has no SAE id"),
        (["--sae", "no-such-release/x"], "unknown SAE"),
        (["--sae", str(narrow_sae)], "width mismatch"),
        (["--sae", str(wrong_hook_sae)], "does not have"),
        (["--features", "0,999"], "out of range"),
        (["--features", "0,x"], "not an integer"),
        (["--features", "0", "--value", "nan"], "finite"),
        (["--features", "0", "--value", "inf"], "finite"),
        (["--features", "0", "--mode", "clip", "--value", "1"], "unknown clamp mode"),
        (["--features", "auto"], "no preset.json"),
    ]
    for extra, fragment in cases:
        code, _, err = run_cli(capsys, *flips_args(tmp_path, *extra))
        _one_line_error(code, err, fragment)
    file_cases = [
        (str(tmp_path / "missing.json"), "does not exist"),
        (str(empty), "no prompts"),
        (str(bad_json), "not valid JSON"),
        (str(no_col), "no prompt, instruction or goal column"),
    ]
    for prompts, fragment in file_cases:
        code, _, err = run_cli(capsys, *flips_args(tmp_path, "--features", "0", "--value", "1", prompts=prompts))
        _one_line_error(code, err, fragment)
    code, _, err = run_cli(capsys, *flips_args(tmp_path, "--features", "0", "--value", "1"), "--limit", "0")
    _one_line_error(code, err, "--limit")
    args = flips_args(tmp_path, "--features", "0", "--value", "1")
    args[args.index("--out") + 1] = str(blocker / "run")
    code, _, err = run_cli(capsys, *args)
    _one_line_error(code, err, "not writable")
    code, _, err = run_cli(capsys, *flips_args(tmp_path, "--model", "gpt2", "--features", "0", "--value", "1"))
    _one_line_error(code, err, "gpt2 is not in the Hugging Face cache")  # offline: the warm-cache route is tried first
    code, _, err = run_cli(capsys, *flips_args(tmp_path, "--max-new-tokens", "0"))
    _one_line_error(code, err, "at least 1")
    code, _, err = run_cli(capsys, "flips")
    _one_line_error(code, err, "required")
    hub_reachable.cache_clear()


def test_hub_probe_answers_quickly_when_network_is_absent(monkeypatch):
    import time

    import requests

    from engine.lm.hub import hub_reachable

    def refuse(*a, **k):
        raise requests.ConnectionError("no route")

    monkeypatch.delenv("SAE_LAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(requests, "head", refuse)
    hub_reachable.cache_clear()
    t = time.monotonic()
    assert hub_reachable() is False
    assert time.monotonic() - t < 5
    hub_reachable.cache_clear()
