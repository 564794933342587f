from __future__ import annotations

import pytest

from engine.errors import LabError
from engine.generation import GenerationConfig, generate

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
