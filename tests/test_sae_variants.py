"""``python -m engine.sae_recipe variants``: recipe variants compared on the same cached activations (tiny model)."""

from __future__ import annotations

import json

import pytest

from engine.errors import LabError
from engine.sae_recipe.__main__ import main as recipe_main

RUN = ["variants", "--model", "tiny", "--variant", "d_sae=16,k=4", "--variant", "d_sae=32,k=4,resample_every=5"]


def test_variants_write_one_row_each_with_served_and_refit_quality_and_resume(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert recipe_main([*RUN, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["settings"]["d_sae"], r["settings"].get("resample_every", 0)) for r in rows] == [(16, 0), (32, 5)]
    for r in rows:
        for q in (r["topk"], r["served"], r["served_chat"], r["refit"]["heldout"], r["refit"]["heldout_chat"]):
            assert set(q) == {"explained_variance", "l0", "dead_fraction", "n_tokens"} and q["n_tokens"] > 0
        # the refit is a least-squares fit of the same codes on the training positions: held-out EV does not collapse
        assert r["refit"]["heldout"]["explained_variance"] > r["served"]["explained_variance"] - 0.1
        assert r["refit"]["heldout"]["l0"] == pytest.approx(r["served"]["l0"], abs=0.05)  # same gates
        for kind in ("served", "refit"):
            assert (tmp_path / "work" / "variants" / r["folder"].rsplit("/", 1)[1] / kind / "sae_weights.safetensors").is_file()
    before = out.read_text()
    capsys.readouterr()
    # resume: the finished rows are kept byte for byte and nothing is retrained
    assert recipe_main([*RUN, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert out.read_text() == before


@pytest.mark.parametrize("variant, message", [
    ("k=4,width=8", "KEY=VALUE with KEY one of"), ("k", "KEY=VALUE"), ("k=four", "k must be a whole number"),
    ("lr=fast", "lr must be a number"), ("d_sae=0", "d_sae must be positive"), ("k=-3", "k must be positive"),
])
def test_bad_variants_are_clear_errors(variant, message):
    from engine.sae_recipe.variants import parse_variant

    with pytest.raises(LabError, match=message):
        parse_variant(variant)


def test_bad_variant_input_on_the_command_line_exits_before_loading(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert recipe_main(["variants", "--model", "tiny", "--variant", "d_sae=8,k=16", "--work", str(tmp_path), "--out", str(out)]) == 2
    assert "larger than the width 8" in capsys.readouterr().err
    assert recipe_main(["variants", "--model", "gpt2", "--variant", "k=4"]) == 2
    assert "not 'gpt2'" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "acts").exists()
