"""The feature-card store on the tiny model (fast): precompute writes a store, a stored card equals the direct card,
a stale store is never served, cancel leaves a resumable state, quantile examples span the activation range."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import LabError
from engine.features.card_precompute import precompute_cards
from engine.features.card_store import CardStore, StoreConfig, find_store, store_key, store_path, visible_token
from engine.features.cards import feature_card, logit_effects
from engine.features.corpus import Corpus, CorpusConfig, card_corpus
from engine.lm.saes import LoadedSAE
from engine.lm.tiny import tiny_model, tiny_sae

HOOK = "blocks.1.hook_resid_post"
CFG = StoreConfig(n_top=4, n_quantile=5, before=3, after=2, chunk_texts=8, batch_size=4, chunk_features=16, n_neighbours=3, n_logits=4)
SMALL = CorpusConfig(chats=10, builtin=4, shared=0, pydoc=6, max_chars=80)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=0)


def _sae(lm, seed=0):
    return LoadedSAE(tiny_sae(lm.d_model, d_sae=40, hook_name=HOOK, seed=seed), f"tiny:{HOOK}", HOOK)


def test_precompute_writes_a_store_equal_to_direct_cards(lm):
    sae, corpus = _sae(lm), card_corpus(lm, SMALL)
    seen = []
    result = precompute_cards(lm, sae, corpus, CFG, progress=lambda d, n, w: seen.append((d, n)))
    assert result.status == "done" and not result.reused and result.path.is_file() and result.size_bytes > 0
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)  # progress only grows
    store = find_store(lm, sae, corpus.version, CFG)
    assert store is not None
    for f in (0, 7, 23):
        direct = feature_card(lm, sae, f, corpus.texts, n_contexts=CFG.n_top, n_logits=CFG.n_logits, batch_size=CFG.batch_size)
        card = store.card(f)
        assert card.density == pytest.approx(direct.frequency, abs=1e-6)
        assert card.n_tokens == direct.n_tokens
        assert card.max_activation == pytest.approx(direct.max_activation, rel=1e-5)
        assert card.mean_when_active == pytest.approx(direct.mean_when_active, rel=1e-4)
        got = [(e.text_index, e.position, e.tokens[e.center]) for e in card.top_examples]
        want = [(c.text_index, c.position, c.token) for c in direct.top_contexts]
        assert got == want
        assert [e.activation for e in card.top_examples] == pytest.approx([c.activation for c in direct.top_contexts], rel=1e-5)
        for e in card.top_examples:  # the heat-map window holds the example's own activation at its centre
            assert e.activations[e.center] == pytest.approx(e.activation, rel=2e-3)
        up, down = logit_effects(lm, sae, f, CFG.n_logits)
        assert [x.token_id for x in card.top_logits] == [x.token_id for x in up]
        assert [x.value for x in card.bottom_logits] == pytest.approx([x.value for x in down], rel=1e-5)
        assert sum(card.hist_counts) == round(card.density * card.n_tokens)
        w = sae.W_dec.float() / sae.W_dec.float().norm(dim=1, keepdim=True)
        cos = w @ w[f]
        cos[f] = -2
        assert [n.feature for n in card.neighbours] == torch.topk(cos, 3).indices.tolist()
    again = precompute_cards(lm, sae, corpus, CFG)
    assert again.reused and again.path == result.path and again.computed_chunks == 0


def test_a_stale_store_is_not_served(lm):
    sae, corpus = _sae(lm), card_corpus(lm, SMALL)
    path = precompute_cards(lm, sae, corpus, CFG).path
    other = _sae(lm, seed=1)  # same source name, other weights
    assert find_store(lm, other, corpus.version, CFG) is None
    with torch.no_grad():
        sae.W_dec[3] += 1.0  # the same object, changed in place
    assert find_store(lm, sae, corpus.version, CFG) is None
    assert find_store(lm, sae, "another-corpus", CFG) is None
    with pytest.raises(LabError, match="other SAE weights"):
        CardStore(path, expect_key=store_key(lm, sae, corpus.version, CFG))


def test_cancel_leaves_a_resumable_state(lm):
    sae, corpus = _sae(lm), card_corpus(lm, SMALL)
    cancel = threading.Event()

    def stop_after_two(done, total, what):
        if done == 2:
            cancel.set()

    first = precompute_cards(lm, sae, corpus, CFG, cancel=cancel, progress=stop_after_two)
    assert first.status == "cancelled" and not first.path.exists() and first.computed_chunks == 2
    assert find_store(lm, sae, corpus.version, CFG) is None
    # a crash mid-write leaves a temp file: it is ignored
    (first.path.with_suffix(".partial") / ".tmp-1-2-acts-00002.safetensors").write_bytes(b"torn")
    second = precompute_cards(lm, sae, corpus, CFG)
    assert second.status == "done" and second.resumed_chunks == 2 and second.computed_chunks > 0
    assert not first.path.with_suffix(".partial").exists()
    fresh_cache = store_path(sae, "x").parent.parent / "fresh"
    import os

    os.environ["SAE_LAB_CACHE"] = str(fresh_cache)  # the fixture's monkeypatch restores it
    whole = precompute_cards(lm, sae, corpus, CFG)
    a, b = CardStore(second.path).card(5), CardStore(whole.path).card(5)
    assert a == b


def test_quantile_examples_span_the_activation_range(lm):
    sae, corpus = _sae(lm), card_corpus(lm, SMALL)
    store = CardStore(precompute_cards(lm, sae, corpus, CFG).path)
    checked = 0
    for f in range(sae.d_sae):
        card = store.card(f)
        active = round(card.density * card.n_tokens)
        if active < 50:
            continue
        q = [e.quantile for e in card.quantile_examples]
        vals = [e.activation for e in card.quantile_examples]
        assert len(q) == CFG.n_quantile
        assert max(q) > 0.8 and min(q) < 0.2  # highest and lowest band both drawn
        assert vals == sorted(vals, reverse=True)
        assert min(vals) < 0.5 * card.max_activation  # reaches well below the top examples
        checked += 1
    assert checked >= 3


def test_bad_input(lm):
    sae = _sae(lm)
    corpus = card_corpus(lm, SMALL)
    store = CardStore(precompute_cards(lm, sae, corpus, CFG).path)
    for bad in (-1, 40, "3", True):
        with pytest.raises(LabError, match="out of range"):
            store.card(bad)
    with pytest.raises(LabError, match="at least 1"):
        precompute_cards(lm, sae, corpus, StoreConfig(n_top=0))
    with pytest.raises(LabError, match="longer than one token"):
        precompute_cards(lm, sae, Corpus(["a", "b"], ["x", "x"]), CFG)
    with pytest.raises(LabError, match="every source was left out"):
        card_corpus(lm, CorpusConfig(chats=0, builtin=0, shared=0, pydoc=0))
    broken = store.path.with_name("broken.safetensors")
    broken.write_bytes(b"not a store")
    with pytest.raises(LabError, match="cannot be read"):
        CardStore(broken)


def test_visible_token():
    assert visible_token(" the") == "␣the"
    assert visible_token("  x") == "␣␣x"
    assert visible_token("a\n") == "a⏎"
    assert visible_token("") == "∅"
    assert visible_token("plain") == "plain"


def test_corpus_reads_shared_data_in_place_and_versions_it(lm, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "p.json").write_text('[{"instruction": "Name a river."}, {"instruction": "Name a lake."}]')
    monkeypatch.setenv("SAE_LAB_CORPUS_DIR", str(folder))
    cfg = CorpusConfig(chats=2, builtin=0, shared=5, pydoc=0)
    with_shared = card_corpus(lm, cfg)
    assert with_shared.counts.get("shared:p.json") == 2
    monkeypatch.setenv("SAE_LAB_CORPUS_DIR", str(tmp_path / "absent"))
    without = card_corpus(lm, cfg)
    assert "shared:p.json" not in without.counts and without.version != with_shared.version


def test_flip_feature_activations_match_the_sae_and_refuse_empty_answers(lm):
    from engine.features.flip_features import flip_feature_activations
    from engine.features.search import _answer_ids, sae_activations
    from engine.method.clamp import ClampSpec

    sae = _sae(lm)
    spec = ClampSpec(sae, [2, 5, 9], "set", [3.0])
    view = flip_feature_activations(lm, [spec], "Tell me about rivers.", "Rivers flow.", "I can't help.")
    assert [r.feature for r in view.features] == [2, 5, 9]
    assert view.base.values.shape == (3, len(view.base.tokens)) and "".join(view.clamped.tokens) == "I can't help."
    ids, start = _answer_ids(lm, "Tell me about rivers.", "Rivers flow.")
    z = sae_activations(lm, sae, [ids])[0][start:, [2, 5, 9]].T
    assert torch.allclose(view.base.values, z, atol=1e-5)
    with pytest.raises(LabError, match="clamped answer is empty"):
        flip_feature_activations(lm, [spec], "p", "Rivers flow.", "  ")
    with pytest.raises(LabError, match="no clamped features"):
        flip_feature_activations(lm, [], "p", "a", "b")


def test_cli_precompute_writes_then_reuses_and_refuses_a_bad_sae(capsys):
    import json

    from engine.cli.main import main

    assert main(["features", "precompute", "--sae", "tiny", "--model", "tiny", "--device", "cpu"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "done" and not first["reused"] and first["size_bytes"] > 0
    assert first["corpus"]["per_source"] == {"chats": 12, "builtin": 4, "pydoc": 4}
    assert main(["features", "precompute", "--sae", "tiny", "--model", "tiny", "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] and again["store"] == first["store"] and again["computed_chunks"] == 0
    assert main(["features", "precompute", "--sae", "/no/such/folder", "--model", "tiny", "--device", "cpu"]) == 2
    assert "error:" in capsys.readouterr().err
