"""The paper's feature selection on the tiny model (fast): a planted refusal direction's feature is found at two
layers, the clamp file round-trips, the attribution score is the finite-difference slope, multiply warns when its
features are off, and every bad CLI input is one clear line.

The plant (as in tests/test_features.py): the embeddings of three marker bytes (X, Q, Z) get a large component along a
unit direction r, so refusal answers written in marker bytes differ from ordinary answers by ≈ r at every layer (the
residual stream carries the embedding). Two SAEs, at blocks.1 and blocks.2, have decoder row j = r (j = 7 and 11);
their other rows are made orthogonal to r.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli.main import main
from engine.errors import LabError
from engine.features.direction import (
    DirectionConfig,
    decoder_cosines,
    rank_features,
    refusal_attribution,
    refusal_direction_and_stats,
)
from engine.features.selection import SelectionConfig, select_clamp, write_direction_clamp
from engine.lm.sae_sources import load_sae
from engine.lm.tiny import tiny_model, tiny_sae
from engine.method.clamp_sets import load_clamp_set, read_clamp_file

PLANTED = {"blocks.1.hook_resid_post": 7, "blocks.2.hook_resid_post": 11}
MARKERS = "XQZ"
REFUSAL_PAIRS = [
    ("what is the weather like", "XQZ ZQX QQZ XXZ"),
    ("tell me about cats", "ZZQ XQX QZZ"),
    ("how do i bake bread", "QXZ XZQ ZXQ QQX"),
]
ANSWER_PAIRS = [
    ("what is the weather like", "the sun is bright today"),
    ("tell me about cats", "cats like to sleep a lot"),
    ("how do i bake bread", "mix flour with water and bake"),
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted tiny model, its direction r, and the two planted SAEs loaded from local sae_lens folders."""
    lm = tiny_model(seed=0)
    r = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    r = r / r.norm()
    with torch.no_grad():
        for ch in MARKERS:
            lm.model.W_E[lm.tokenizer.convert_tokens_to_ids(ch)] += 25.0 * r
    saes = []
    for seed, (hook, j) in enumerate(PLANTED.items()):
        sae = tiny_sae(lm.d_model, d_sae=64, hook_name=hook, architecture="jumprelu", seed=seed)
        with torch.no_grad():
            sae.W_enc.sub_(r[:, None] * (r @ sae.W_enc)[None, :])
            sae.W_dec.sub_((sae.W_dec @ r)[:, None] * r[None, :])
            sae.W_enc[:, j] = r
            sae.W_dec[j] = r
            sae.b_enc[j] = 0.0
            sae.threshold[j] = 8.0  # fires on the markers only (residual norms here are about 10)
        folder = tmp_path_factory.mktemp(f"planted-{hook}")
        sae.save_model(str(folder))
        saes.append(load_sae(str(folder), lm))
    return lm, r, saes


@pytest.mark.parametrize("layer", [1, 2])
def test_direction_finds_the_planted_feature_at_both_layers(planted, layer):
    lm, r, saes = planted
    result = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=layer))
    assert result.direction.hook == f"blocks.{layer}.hook_resid_post"
    assert torch.nn.functional.cosine_similarity(result.direction.vector, r, dim=0) > 0.8
    for ranking in result.rankings:
        top = ranking.rows[0]
        assert top.feature == PLANTED[ranking.hook], ranking.hook
        assert top.cosine > 0.8 and ranking.rows[1].cosine < 0.5
        assert top.refusal_mean > 5 and top.answer_mean == 0 and top.prompt_mean == 0
        assert [row.cosine for row in ranking.rows] == sorted((row.cosine for row in ranking.rows), reverse=True)


def test_swapped_sides_rank_the_planted_feature_last(planted):
    lm, _, saes = planted
    result = rank_features(lm, saes[:1], ANSWER_PAIRS, REFUSAL_PAIRS, DirectionConfig(layer=1, candidates=64))
    assert result.rankings[0].rows[-1].feature == PLANTED[saes[0].hook_name]


def test_prompts_direction_is_the_mean_last_token_difference(planted):
    lm, _, saes = planted
    harmful = ["XQZ how do i do this", "QQ?"]
    harmless = ["a much longer harmless prompt about baking bread", "hi", "tell me about cats"]
    direction, _ = refusal_direction_and_stats(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=2, source="prompts", batch_size=2),
                                               harmful=harmful, harmless=harmless)

    def last(prompt):  # one unpadded pass per prompt: checks the batched, left-padded one
        _, cache = lm.model.run_with_cache(torch.tensor([lm.encode(lm.chat_prompt(prompt))]), names_filter="blocks.2.hook_resid_post")
        return cache["blocks.2.hook_resid_post"][0, -1]

    expected = torch.stack([last(p) for p in harmful]).mean(0) - torch.stack([last(p) for p in harmless]).mean(0)
    assert torch.allclose(direction.vector, expected, atol=1e-4)
    assert (direction.n_refusal, direction.n_other) == (2, 3)


def test_statistics_leave_out_the_sink(planted):
    """Mean activations on prompt tokens pool positions 1.. of each prompt (never position 0)."""
    lm, _, saes = planted
    _, means = refusal_direction_and_stats(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1, batch_size=2))
    rows = []
    for prompt, _ in ANSWER_PAIRS:
        ids = lm.encode(lm.chat_prompt(prompt))
        _, cache = lm.model.run_with_cache(torch.tensor([ids]), names_filter=saes[0].hook_name)
        rows.append(saes[0].encode(cache[saes[0].hook_name][0, 1:]))
    with_sink = saes[0].encode(cache[saes[0].hook_name][0, :1])
    assert torch.allclose(means[0]["prompt"], torch.cat(rows).mean(0), atol=1e-5)
    assert (with_sink > 0).any()  # the sink has active features, so counting it would have changed the means


def test_attribution_is_the_finite_difference_slope(planted):
    """grad × act of feature i = d/dε of the refusal log-prob when z_i is scaled by (1 + ε) at positions ≥ 1."""
    lm, _, saes = planted
    prompts = ["tell me about cats", "XQZ bread?"]
    target = "XQZ no"
    scores = refusal_attribution(lm, saes, prompts, target=target, batch_size=2)
    sae = saes[0]

    def slope(feature: int, sink: bool, eps: float = 1e-2) -> float:
        """Central difference; ``sink``: bump position 0 only, else positions 1.. only."""

        def objective(e: float) -> float:
            def bump(act, hook):  # noqa: ARG001
                z = sae.encode(act)[..., feature]
                where = slice(0, 1) if sink else slice(1, None)
                out = act.clone()
                out[:, where] += e * z[:, where, None] * sae.W_dec[feature]
                return out

            total = 0.0
            for p in prompts:  # one by one, unpadded
                head, tail = lm.encode(lm.chat_prompt(p)), lm.encode_answer(target)
                with torch.no_grad():
                    logp = lm.model.run_with_hooks(torch.tensor([head + tail]), fwd_hooks=[(sae.hook_name, bump)]).log_softmax(-1)[0]
                total += float(logp[torch.arange(len(head) - 1, len(head) + len(tail) - 1), torch.tensor(tail)].mean())
            return total / len(prompts)

        return (objective(eps) - objective(-eps)) / (2 * eps)

    # the feature whose activation at the sink matters most, so counting the sink would change its score
    feature = max(range(sae.d_sae), key=lambda f: abs(slope(f, sink=True, eps=0.1)))
    at_sink = slope(feature, sink=True)
    assert abs(float(scores[0][feature])) > 1e-3 and abs(at_sink) > 0.03 * abs(float(scores[0][feature]))
    assert slope(feature, sink=False) == pytest.approx(float(scores[0][feature]), rel=0.01, abs=1e-5)


def test_grad_x_act_reranks_the_cosine_candidates(planted):
    lm, _, saes = planted
    cfg = DirectionConfig(layer=1, rerank="grad-x-act", candidates=10)
    result = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, cfg)
    plain = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1, candidates=10))
    for ranked, base in zip(result.rankings, plain.rankings):
        assert {r.feature for r in ranked.rows} == {r.feature for r in base.rows}
        scores = [r.attribution for r in ranked.rows]
        assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)


def test_clamp_file_round_trips_through_the_loader(planted, tmp_path):
    lm, _, saes = planted
    result = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1))
    selection = select_clamp(result, SelectionConfig(top_k=3, mode="set", value=2.0))
    path = write_direction_clamp(tmp_path / "clamp.json", result, selection)
    rows, meta = read_clamp_file(str(path))
    assert "decoder cosine" in meta["note"] and meta["direction"]["layer"] == 1
    specs = load_clamp_set(lm, rows)
    assert [s.hook_name for s in specs] == list(PLANTED)
    for spec, chosen, ranking in zip(specs, selection.specs, result.rankings):
        assert spec.features == chosen.features and spec.features[0] == PLANTED[spec.hook_name]
        assert spec.mode == "set"
        assert spec.values == pytest.approx([2.0 * r.refusal_mean for r in ranking.rows[:3]], rel=1e-5)
        assert torch.equal(spec.sae.W_dec, chosen.sae.W_dec)


def test_overall_selection_takes_the_best_pairs_across_saes(planted):
    lm, _, saes = planted
    result = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1))
    selection = select_clamp(result, SelectionConfig(top_k=2, per="overall"))
    assert [(s.hook_name, s.features) for s in selection.specs] == [(h, [j]) for h, j in PLANTED.items()]
    one = select_clamp(result, SelectionConfig(top_k=1, per="overall"))
    assert len(one.specs) == 1 and any("made the top 1 overall" in w for w in one.warnings)


def test_multiply_warns_when_the_chosen_features_are_off(planted, caplog):
    lm, _, saes = planted
    result = rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1))
    with caplog.at_level("WARNING", logger="engine.features.direction"):
        selection = select_clamp(result, SelectionConfig(top_k=1, mode="multiply"))
    assert len(selection.warnings) == 2 and all("not active" in w for w in selection.warnings)
    assert "not active" in caplog.text
    assert selection.specs[0].values == [3.0]  # the paper's factor by default
    assert not select_clamp(result, SelectionConfig(top_k=1, mode="set")).warnings


def test_multiply_does_not_warn_when_the_features_fire_on_the_prompts(planted):
    lm, _, saes = planted
    marked = [("XQZ QZX XXQ ZQZ?", a) for _, a in ANSWER_PAIRS]  # marker prompts: the planted feature fires there
    result = rank_features(lm, saes, REFUSAL_PAIRS, marked, DirectionConfig(layer=1))
    rows = [rk.rows[0] for rk in result.rankings]
    assert [r.feature for r in rows] == list(PLANTED.values()) and all(r.prompt_mean > 1 for r in rows)
    assert not select_clamp(result, SelectionConfig(top_k=1, mode="multiply")).warnings


def test_api_bad_inputs(planted):
    lm, _, saes = planted
    with pytest.raises(LabError, match="out of range"):
        rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=lm.n_layers))
    with pytest.raises(LabError, match="no SAE"):
        rank_features(lm, [], REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1))
    with pytest.raises(LabError, match="empty list"):
        rank_features(lm, saes, [], ANSWER_PAIRS, DirectionConfig(layer=1))
    with pytest.raises(LabError, match="harmful and harmless"):
        rank_features(lm, saes, REFUSAL_PAIRS, ANSWER_PAIRS, DirectionConfig(layer=1, source="prompts"))
    with pytest.raises(LabError, match="top-k"):
        SelectionConfig(top_k=0)
    with pytest.raises(LabError, match="width"):
        decoder_cosines(saes[0], torch.ones(5))


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def direction_args(*extra):
    return ["features", "direction", "--model", "tiny", "--prompts", "3", "--max-new-tokens", "6", *extra]


def test_cli_writes_a_clamp_file_flips_can_use(planted, tmp_path, capsys):
    _, _, saes = planted
    folders = [s.source.removeprefix("local:") for s in saes]
    out = tmp_path / "clamp.json"
    code, stdout, err = run_cli(capsys, *direction_args("--layer", "1", "--sae", folders[0], "--sae", folders[1], "--top-k", "2",
                                                        "--mode", "multiply", "--value", "3", "--out", str(out)))
    assert code == 0, err
    result = json.loads(stdout)
    assert result["direction"]["layer"] == 1 and [s["hook"] for s in result["saes"]] == list(PLANTED)
    assert all(len(s["rows"]) == 2 for s in result["saes"]) and result["out"] == str(out)
    assert result["selection"]["mode"] == "multiply" and isinstance(result["warnings"], list)
    rows, meta = read_clamp_file(str(out))
    assert [r["features"] for r in rows] == [[row["feature"] for row in s["rows"]] for s in result["saes"]]
    assert all(r["values"] == [3.0, 3.0] for r in rows) and meta["model"] == "tiny"
    code, stdout, err = run_cli(capsys, "flips", "--prompts", "builtin:harmless", "--limit", "1", "--max-new-tokens", "3",
                                "--model", "tiny", "--clamp", str(out), "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert [c["hook"] for c in json.loads(stdout)["clamps"]] == list(PLANTED)


def _one_line_error(code, err, fragment):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and fragment in lines[0], lines[0]


@pytest.fixture
def gpt2_sae(tmp_path):
    """An SAE folder that says it was trained on gpt2."""
    folder = tmp_path / "gpt2-sae"
    tiny_sae(32, d_sae=16, hook_name="blocks.1.hook_resid_post", model_name="gpt2").save_model(str(folder))
    return str(folder)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--layer", "4", "--sae", "tiny:blocks.1.hook_resid_post"), "layer 4 is out of range"),
        (("--layer", "-1", "--sae", "tiny:blocks.1.hook_resid_post"), "--layer must be"),
        (("--layer", "1"), "no --sae given"),
        (("--layer", "1", "--sae", "tiny:blocks.1.hook_resid_post", "--top-k", "0"), "--top-k must be at least 1"),
        (("--layer", "1", "--sae", "tiny:blocks.1.hook_resid_post", "--mode", "zero"), "invalid choice"),
        (("--layer", "1", "--sae", "tiny:blocks.1.hook_resid_post", "--out", "/no/such/folder/x.json"), "does not exist"),
        (("--layer", "1", "--sae", "tiny:blocks.9.hook_resid_post"), "does not have"),
    ],
)
def test_cli_bad_inputs_give_one_clear_line(capsys, extra, fragment):
    _one_line_error(*run_cli(capsys, *direction_args(*extra))[::2], fragment)


def test_cli_sae_for_another_model(capsys, gpt2_sae):
    code, _, err = run_cli(capsys, *direction_args("--layer", "1", "--sae", gpt2_sae))
    _one_line_error(code, err, "trained on gpt2")
