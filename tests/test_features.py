"""Feature search on the tiny model (fast): a planted refusal feature is found, cards and by-text work, bad input fails.

The plant: the embeddings of three marker bytes (X, Q, Z) get a large component along a unit direction r, and
SAE feature PLANTED reads r. Refusal answers are written in marker bytes; the *prompts* of the ordinary pairs are
full of markers too, so a search that read prompt tokens instead of answer tokens would rank the feature last.
"""

from __future__ import annotations

import pytest
import torch

from engine.errors import LabError
from engine.features.cards import FeatureCard, feature_card, logit_effects
from engine.features.search import (
    ContrastRow,
    answer_activations,
    contrast_from_activations,
    contrast_search,
    features_for_text,
    token_activations,
)
from engine.lm.saes import LoadedSAE, check_fits
from engine.lm.tiny import tiny_model, tiny_sae

HOOK = "blocks.1.hook_resid_post"
PLANTED = 7
MARKERS = "XQZ"


@pytest.fixture(scope="module")
def planted():
    lm = tiny_model(seed=0)
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(lm.d_model, generator=gen)
    r = r / r.norm()
    with torch.no_grad():
        for ch in MARKERS:
            tok = lm.tokenizer.convert_tokens_to_ids(ch)
            lm.model.W_E[tok] += 25.0 * r
    sae = tiny_sae(lm.d_model, d_sae=64, hook_name=HOOK, architecture="jumprelu", seed=0)
    with torch.no_grad():
        # the other features ignore r, so only PLANTED reads the plant (residual norms here are about 10)
        sae.W_enc.sub_(r[:, None] * (r @ sae.W_enc)[None, :])
        sae.W_dec.sub_((sae.W_dec @ r)[:, None] * r[None, :])
        sae.W_enc[:, PLANTED] = r
        sae.W_dec[PLANTED] = r
        sae.b_enc[PLANTED] = 0.0
        sae.threshold[PLANTED] = 8.0
    return lm, LoadedSAE(sae, "tiny:planted", HOOK)


REFUSAL_PAIRS = [
    ("what is the weather like", "XQZ ZQX QQZ XXZ"),
    ("tell me about cats", "ZZQ XQX QZZ"),
    ("how do i bake bread", "QXZ XZQ ZXQ QQX"),
]
ANSWER_PAIRS = [
    ("XQZ QZX XXQ ZQZ?", "the sun is bright today"),
    ("ZQX XQZ QQZ?", "cats like to sleep a lot"),
    ("QZQ XZX ZZX?", "mix flour with water and bake"),
]


def test_contrast_search_finds_planted_feature(planted):
    lm, sae = planted
    rows = contrast_search(lm, sae, REFUSAL_PAIRS, ANSWER_PAIRS, top_n=5)
    assert all(isinstance(r, ContrastRow) for r in rows)
    assert rows[0].feature == PLANTED
    assert rows[0].refusal_mean > 4 * max(rows[0].answer_mean, 0.5)
    assert rows[0].refusal_freq > 0.5 and rows[0].answer_freq < 0.3
    assert [r.diff for r in rows] == sorted((r.diff for r in rows), reverse=True)


def test_contrast_swapped_sides_puts_planted_feature_last(planted):
    lm, sae = planted
    rows = contrast_search(lm, sae, ANSWER_PAIRS, REFUSAL_PAIRS, top_n=sae.d_sae)
    assert rows[-1].feature == PLANTED


def test_answer_activations_read_only_answer_tokens(planted):
    lm, sae = planted
    acts = answer_activations(lm, sae, [("XQZ XQZ XQZ", "plain words")])
    assert acts.shape == (len("plain words"), sae.d_sae)  # byte tokenizer: one token per character
    assert float(acts[:, PLANTED].max()) < 8.0


def test_features_for_text_and_token_activations(planted):
    lm, sae = planted
    hits = features_for_text(lm, sae, "hello XQZ world", top_n=3)
    assert hits[0].feature == PLANTED and hits[0].top_token in MARKERS
    assert hits[0].max_activation >= hits[-1].max_activation
    acts = token_activations(lm, sae, "ab XQ", PLANTED)
    assert [t for t, _ in acts] == list("ab XQ")
    assert acts[3][1] > 8.0 and acts[0][1] == 0.0


def test_feature_card(planted):
    lm, sae = planted
    corpus = ["the quiet river runs", "a XQZ marker here", "more text with Z in it", "nothing special"]
    card = feature_card(lm, sae, PLANTED, corpus, n_contexts=3, n_logits=4)
    assert isinstance(card, FeatureCard)
    assert card.top_contexts and all(c.token in MARKERS for c in card.top_contexts)
    assert card.top_contexts[0].activation >= card.top_contexts[-1].activation
    assert 0 < card.frequency < 0.5
    assert card.max_activation == pytest.approx(card.top_contexts[0].activation)
    assert len(card.top_logits) == 4 and len(card.bottom_logits) == 4
    assert card.top_logits[0].value >= card.top_logits[-1].value > card.bottom_logits[0].value
    assert card.neuronpedia_url is None


def test_logit_effects_match_direct_product(planted):
    lm, sae = planted
    top, bottom = logit_effects(lm, sae, 3, n=2)
    effect = sae.sae.W_dec[3] @ lm.model.W_U
    assert top[0].token_id == int(effect.argmax()) and top[0].value == pytest.approx(float(effect.max()), rel=1e-5)
    assert bottom[0].token_id == int(effect.argmin())


def test_neuronpedia_url_when_known(planted):
    lm, sae = planted
    named = LoadedSAE(sae.sae, "registry:x", HOOK, neuronpedia_id="gpt2-small/0-res-jb")
    card = feature_card(lm, named, 5, ["abc"], n_logits=1)
    assert card.neuronpedia_url == "https://www.neuronpedia.org/gpt2-small/0-res-jb/5"


@pytest.mark.parametrize("bad", [-1, 64, 10_000])
def test_unknown_feature_index(planted, bad):
    lm, sae = planted
    with pytest.raises(LabError, match="out of range"):
        feature_card(lm, sae, bad, ["text"])
    with pytest.raises(LabError, match="out of range"):
        token_activations(lm, sae, "text", bad)


def test_empty_inputs(planted):
    lm, sae = planted
    with pytest.raises(LabError, match="corpus is empty"):
        feature_card(lm, sae, 1, [])
    with pytest.raises(LabError, match="corpus is empty"):
        feature_card(lm, sae, 1, ["", "   "])
    with pytest.raises(LabError, match="empty"):
        contrast_search(lm, sae, [], ANSWER_PAIRS)
    with pytest.raises(LabError, match="empty"):
        features_for_text(lm, sae, "  ")
    with pytest.raises(LabError):
        contrast_from_activations(torch.zeros(0, 4), torch.zeros(3, 4))


def test_sae_for_another_model(planted):
    lm, _ = planted
    wide = LoadedSAE(tiny_sae(48, d_sae=16, hook_name=HOOK), "tiny:wide", HOOK)
    with pytest.raises(LabError, match="width"):
        feature_card(lm, wide, 0, ["abc"])
    other = LoadedSAE(tiny_sae(lm.d_model, d_sae=16, hook_name=HOOK, model_name="gpt2"), "local:x", HOOK)
    smol = type(lm)(name="SmolLM2-135M-Instruct", model=lm.model, tokenizer=lm.tokenizer, device=lm.device)
    with pytest.raises(LabError, match="trained on gpt2"):
        check_fits(other, smol)
    tiny_for_smol = LoadedSAE(tiny_sae(lm.d_model, d_sae=16, hook_name=HOOK), "tiny", HOOK)
    with pytest.raises(LabError, match="trained on tiny"):
        check_fits(tiny_for_smol, smol)
    missing_hook = LoadedSAE(tiny_sae(lm.d_model, d_sae=16, hook_name="blocks.9.hook_resid_post"), "tiny", "blocks.9.hook_resid_post")
    with pytest.raises(LabError, match="does not have"):
        contrast_search(lm, missing_hook, REFUSAL_PAIRS, ANSWER_PAIRS)


@pytest.mark.slow
def test_default_sae_refusal_feature_card_and_contrast():
    """On the real default model: the first preset feature's top contexts sit in refusals, and a contrast search on a
    few chats ranks it among the top features."""
    import json

    from engine.features.cards import default_corpus
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.paths import DEFAULT_SAE_DIR
    from engine.sae_recipe.train_prompts import HARMLESS_TRAIN

    lm = load_model("default", "cpu")
    sae = load_sae("default", lm)
    preset = json.loads((DEFAULT_SAE_DIR / sae.hook_name / "preset.json").read_text())
    first = preset["features"][0]
    corpus = [t for t in default_corpus(lm, limit=None) if "can't" in t or "cannot" in t][:12] + default_corpus(lm, limit=12)
    card = feature_card(lm, sae, first, corpus, n_contexts=5, n_logits=3)
    assert card.top_contexts and card.max_activation > 2.0
    refusal_words = ("sorry", "can't", "cannot", "unable", "apologize", "afraid", "not able", "decline", "won't")
    assert all(any(w in (c.before + c.token).lower() for w in refusal_words) for c in card.top_contexts)
    assert 0 < card.frequency < 0.2 and card.neuronpedia_url is None
    answers = json.loads((DEFAULT_SAE_DIR / "answers.json").read_text())["answers"]
    prompts = [p for p in HARMLESS_TRAIN if p in answers][:6]
    refusal_pairs = [(p, "I'm sorry, but I can't help with that.") for p in prompts]
    answer_pairs = [(p, answers[p]) for p in prompts]
    rows = contrast_search(lm, sae, refusal_pairs, answer_pairs, top_n=50)
    assert first in [r.feature for r in rows]
