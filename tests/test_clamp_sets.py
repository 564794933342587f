"""Clamp sets across SAEs at several layers: files, presets, the run's config, and every bad input."""

from __future__ import annotations

import json

import pytest
import torch

from engine.errors import LabError
from engine.method.clamp import clamped, defend
from engine.method.clamp_sets import check_rows, load_clamp_set, read_clamp_file, write_clamp_file

L1, L2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
ROWS = [{"sae": f"tiny:{L1}", "features": [0, 3], "mode": "set", "values": [6.0, 7.0]},
        {"sae": f"tiny:{L2}", "features": [1], "mode": "multiply", "values": [3.0]}]


def test_multi_layer_clamp_applies_every_clamp_and_removes_all_hooks(tiny_lm):
    specs = load_clamp_set(tiny_lm, ROWS)
    assert [s.hook_name for s in specs] == [L1, L2]
    seen: dict[str, torch.Tensor] = {}

    def probe(act, hook):
        seen[hook.name] = act.detach().clone()

    tokens = torch.tensor([[1, 70, 71, 72, 73]])
    hooks = [(L1, probe), (L2, probe)]
    with clamped(tiny_lm, specs, hooks), torch.no_grad():
        tiny_lm.model(tokens)
    with tiny_lm.model.hooks(fwd_hooks=hooks), torch.no_grad():
        tiny_lm.model(tokens)  # the same pass without clamps overwrites `seen` with plain activations
    plain = dict(seen)
    with clamped(tiny_lm, specs, hooks), torch.no_grad():
        tiny_lm.model(tokens)
    for spec in specs:
        assert not torch.allclose(seen[spec.hook_name], plain[spec.hook_name]), spec.hook_name  # each clamp acted
    both = dict(seen)
    with clamped(tiny_lm, specs[:1], hooks), torch.no_grad():
        tiny_lm.model(tokens)  # layer 1 clamped only: `seen[L2]` is layer 2's input under layer 1's clamp
    torch.testing.assert_close(both[L1], defend(plain[L1], specs[0]))
    torch.testing.assert_close(both[L2], defend(seen[L2], specs[1]))
    assert sum(len(hp.fwd_hooks) for hp in tiny_lm.model.hook_dict.values()) == 0


def test_clamp_file_round_trips_through_config(tmp_path, capsys):
    from engine.cli.main import main
    from engine.lm.loading import load_model
    from engine.store.context import open_run

    clamp = tmp_path / "clamp.json"
    clamp.write_text(json.dumps(ROWS))
    run = tmp_path / "run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "2", "--model", "tiny", "--clamp", str(clamp),
                 "--max-new-tokens", "3", "--out", str(run)]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert [(c["hook"], c["features"], c["mode"], c["values"]) for c in config["clamps"]] == [
        (L1, [0, 3], "set", [6.0, 7.0]), (L2, [1], "multiply", [3.0])]
    ctx = open_run(run, lm=load_model("tiny", "cpu"))
    assert [(s.hook_name, s.features, s.mode, s.values) for s in ctx.specs] == [
        (L1, [0, 3], "set", [6.0, 7.0]), (L2, [1], "multiply", [3.0])]
    # a file written from those specs reads back to the same set
    again, meta = read_clamp_file(str(write_clamp_file(tmp_path / "again.json", ctx.specs, {"note": "round trip"})))
    assert meta == {"note": "round trip"}
    assert [(r["features"], r["mode"], r["values"]) for r in again] == [([0, 3], "set", [6.0, 7.0]), ([1], "multiply", [3.0])]


def test_bad_clamp_sets_each_give_a_clear_error(tiny_lm, tmp_path):
    from engine.lm.tiny import tiny_sae

    other = tmp_path / "gpt2-sae"
    tiny_sae(tiny_lm.d_model, hook_name=L1, model_name="gpt2").save_model(other)
    cases = [
        ([], "empty"),
        ({"clamps": []}, "empty"),
        ([{"sae": f"tiny:{L1}", "features": []}], "non-empty 'features'"),
        ([{"features": [1]}], "needs an 'sae'"),
        ([{"sae": f"tiny:{L1}", "features": [1], "mode": "clip", "values": [1]}], "unknown clamp mode"),
    ]
    for data, fragment in cases:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(data))
        with pytest.raises(LabError, match=fragment):
            read_clamp_file(str(path))
    with pytest.raises(LabError, match="clamped twice"):
        load_clamp_set(tiny_lm, check_rows([ROWS[0], {**ROWS[0], "features": [3], "values": [1.0]}], "x"))
    with pytest.raises(LabError, match="trained on gpt2"):
        load_clamp_set(tiny_lm, check_rows([{"sae": str(other), "features": [1], "values": [1.0]}], "x"))
    with pytest.raises(LabError, match="does not exist"):
        read_clamp_file(str(tmp_path / "missing.json"))
    with pytest.raises(LabError, match="no clamp preset 'nope'"):
        read_clamp_file("preset:nope")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(LabError, match="not valid JSON"):
        read_clamp_file(str(tmp_path / "bad.json"))


def test_clamp_cli_refuses_single_sae_flags_beside_it(tmp_path, capsys):
    from engine.cli.main import main

    clamp = tmp_path / "clamp.json"
    clamp.write_text(json.dumps(ROWS))
    code = main(["flips", "--prompts", "builtin:harmless", "--model", "tiny", "--clamp", str(clamp), "--features", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "drop --features" in capsys.readouterr().err
