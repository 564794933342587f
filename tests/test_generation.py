from __future__ import annotations

import pytest

from engine.errors import LabError
from engine.method.generation import GenerationConfig, generate

PROMPTS = ["hi", "tell me a story about a long river", "why?", "count to ten please"]


def test_batched_greedy_equals_one_by_one(tiny_lm):
    batched = list(generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=4)))
    single = [next(generate(tiny_lm, [p], GenerationConfig(max_new_tokens=8, batch_size=1))) for p in PROMPTS]
    assert [g.index for g in batched] == [0, 1, 2, 3]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert all(len(g.token_ids) > 0 for g in batched)


def test_seeded_sampling_is_reproducible(tiny_lm):
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, seed=7)
    a = [g.token_ids for g in generate(tiny_lm, PROMPTS, cfg)]
    b = [g.token_ids for g in generate(tiny_lm, PROMPTS, cfg)]
    c = [g.token_ids for g in generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=10, do_sample=True, seed=8))]
    assert a == b and a != c


def test_cancel_stops_between_batches(tiny_lm):
    import threading

    ev = threading.Event()
    out = []
    for g in generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=2, batch_size=1), cancel=ev):
        out.append(g)
        ev.set()
    assert len(out) == 1


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"batch_size": 0}, {"do_sample": True, "temperature": 0.0}])
def test_bad_generation_config(kwargs):
    with pytest.raises(LabError):
        GenerationConfig(**kwargs)


def test_stop_token_is_recorded_and_not_part_of_the_answer(tiny_lm):
    """A prompt forced to emit the end-of-turn token at once gets an empty answer and that stop id."""

    stop = max(tiny_lm.stop_ids)
    w_stop = tiny_lm.model.W_U[:, stop].detach()  # [d_model]

    def force_stop(rows, batch):  # noqa: ARG001
        def hook(act, hook):  # noqa: ARG001
            act = act.clone()
            for b, row in enumerate(rows):
                if row == 1:
                    act[b, -1] = 1e4 * w_stop  # logit of `stop` ≫ every other logit
            return act

        return [("ln_final.hook_normalized", hook)]

    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    plain = list(generate(tiny_lm, PROMPTS, cfg))
    forced = list(generate(tiny_lm, PROMPTS, cfg, extra_hooks=force_stop))
    assert forced[1].token_ids == [] and forced[1].stop_id == stop
    for i in (0, 2, 3):
        assert (forced[i].token_ids, forced[i].stop_id) == (plain[i].token_ids, plain[i].stop_id)
        assert forced[i].stop_id is None or forced[i].stop_id in tiny_lm.stop_ids
        assert forced[i].stop_id is not None or len(forced[i].token_ids) == 6


def _naive_greedy(lm, prompt: str, max_new_tokens: int) -> list[int]:
    """Reference decode: no KV cache, the whole sequence re-run per token, full logits, one prompt at a time."""
    import torch

    ids = lm.encode(lm.chat_prompt(prompt))
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(lm.model(torch.tensor([ids + out], device=lm.device))[0, -1].argmax())
            if nxt in lm.stop_ids:
                break
            out.append(nxt)
    return out


def test_optimised_decode_equals_a_naive_reference(tiny_lm):
    """The batched KV-cache decode (last-position unembedding, token table, inference mode) gives the tokens of a
    cache-free full forward per step, prompt by prompt."""
    got = list(generate(tiny_lm, PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=3)))
    for prompt, g in zip(PROMPTS, got):
        assert g.token_ids == _naive_greedy(tiny_lm, prompt, 10)
    assert any(len(g.token_ids) == 10 for g in got)


def test_last_position_logits_equal_the_full_forward_with_a_softcap(tiny_lm, monkeypatch):
    """The decode unembeds only the last position; with a logit softcap (gemma-2) set, its logits still equal the
    full forward's last-position logits (so the cap is applied, once)."""
    import torch
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from engine.method.generation import _next_logits

    monkeypatch.setattr(tiny_lm.model.cfg, "output_logits_soft_cap", 0.5)
    batch = tiny_lm.batch([tiny_lm.encode("hi"), tiny_lm.encode("a longer prompt")])
    cache = TransformerLensKeyValueCache.init_cache(tiny_lm.model.cfg, tiny_lm.device, 2)
    with torch.no_grad():
        logits = _next_logits(tiny_lm.model, batch.tokens, batch.attention_mask, cache)
        full = tiny_lm.model(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
    assert logits.shape == full.shape and logits.abs().max() <= 0.5
    assert torch.allclose(logits, full, atol=1e-5)


def test_attention_weights_are_laid_out_copy_free_with_identical_logits(tiny_lm, monkeypatch):
    """engine/lm/fast.py stores W_Q/W_K/W_V/W_O as views of one [d_model, (head d_head)] block, so TransformerLens'
    per-call rearranges are views (no weight copy), while values, state_dict and logits stay exactly those of the
    plain layout."""
    import einops
    import torch

    from engine.lm import fast
    from engine.lm.tiny import tiny_model

    attn = tiny_lm.model.blocks[0].attn
    assert einops.rearrange(attn.W_Q, "h m d -> (h d) m").data_ptr() == attn.W_Q.data_ptr()
    w_o = einops.rearrange(attn.W_O, "h d m -> m (h d)")
    assert w_o.is_contiguous() and w_o.data_ptr() == attn.W_O.data_ptr()
    monkeypatch.setattr(fast, "_relayout_attention", lambda attn: None)
    plain = tiny_model(seed=0)
    assert plain.model.blocks[0].attn.W_Q.is_contiguous()
    ours, theirs = tiny_lm.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    toks = torch.tensor([tiny_lm.encode(tiny_lm.chat_prompt(p)) for p in ("count to ten please",)])
    with torch.no_grad():
        assert torch.equal(tiny_lm.model(toks), plain.model(toks))
