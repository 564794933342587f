"""The playground's token streaming (engine.method.streaming): same tokens as ``generate``, clamped and plain."""

from __future__ import annotations

import threading

import pytest

from engine.errors import LabError
from engine.method.clamp import ClampSpec
from engine.method.generation import GenerationConfig, generate
from engine.method.streaming import check_prompt_fits, stream_side_by_side


def _finals(steps) -> dict:
    out = {}
    for s in steps:
        out[s.side] = s
    return out


@pytest.mark.parametrize("cfg", [GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.3, seed=5)],
                         ids=["greedy", "sampled"])
def test_streamed_tokens_equal_generate(tiny_lm, tiny_jumprelu, cfg):
    prompt = "tell me a story about a long river"
    spec = ClampSpec(tiny_jumprelu, list(range(16)), "set", [20.0])
    steps = list(stream_side_by_side(tiny_lm, prompt, [spec], cfg))
    final = _finals(steps)
    [base] = generate(tiny_lm, [prompt], cfg)
    [clamped] = generate(tiny_lm, [prompt], cfg, specs=[spec])
    assert final["base"].token_ids == base.token_ids and final["base"].text == base.text
    assert final["clamped"].token_ids == clamped.token_ids and final["clamped"].text == clamped.text
    assert final["base"].stop_id == base.stop_id and final["clamped"].stop_id == clamped.stop_id
    assert final["base"].done and final["clamped"].done
    # streamed: one step per token, each side's texts grow token by token, sides interleaved
    base_steps = [s for s in steps if s.side == "base"]
    assert [s.n_tokens for s in base_steps][: len(base.token_ids)] == list(range(1, len(base.token_ids) + 1))
    assert steps[0].side == "base" and steps[1].side == "clamped"
    # not vacuous: the clamp changes the answer, so a stream that ignored it would fail
    assert base.token_ids != clamped.token_ids


def test_no_hook_remains_when_the_consumer_stops(tiny_lm, tiny_jumprelu):
    spec = ClampSpec(tiny_jumprelu, [1, 2, 3], "set", [8.0])
    stream = stream_side_by_side(tiny_lm, "hi", [spec], GenerationConfig(max_new_tokens=8))
    next(stream)
    next(stream)  # a clamped token was made; the consumer now walks away
    assert not any(h.fwd_hooks for h in tiny_lm.model.hook_dict.values())
    assert tiny_lm.lock.acquire(blocking=False)  # the lock is free between tokens
    tiny_lm.lock.release()


def test_cancel_stops_the_stream(tiny_lm, tiny_jumprelu):
    spec = ClampSpec(tiny_jumprelu, [1], "set", [8.0])
    ev = threading.Event()
    out = []
    for s in stream_side_by_side(tiny_lm, "hi", [spec], GenerationConfig(max_new_tokens=20), cancel=ev):
        out.append(s)
        ev.set()
    assert len(out) == 1


def test_a_prompt_over_the_context_is_refused_with_its_length(tiny_lm, tiny_jumprelu):
    n_ctx = tiny_lm.model.cfg.n_ctx
    long_prompt = "river " * (n_ctx + 10)
    spec = ClampSpec(tiny_jumprelu, [1], "set", [8.0])
    with pytest.raises(LabError, match=rf"is \d+ tokens long.*context of {n_ctx} tokens") as err:
        list(stream_side_by_side(tiny_lm, long_prompt, [spec], GenerationConfig(max_new_tokens=4)))
    assert str(len(tiny_lm.encode(tiny_lm.chat_prompt(long_prompt)))) in str(err.value)
    # fits alone, but not with its answer: the message says how many new tokens would fit
    fit = len(tiny_lm.encode(tiny_lm.chat_prompt("hi")))
    with pytest.raises(LabError, match=rf"at most {n_ctx - fit} new tokens"):
        check_prompt_fits(tiny_lm, "hi", n_ctx)
    assert check_prompt_fits(tiny_lm, "hi", 4).n_prompt_tokens == fit


@pytest.mark.parametrize("prompt, specs_empty, match", [("  ", False, "empty"), ("hi", True, "clamp set is empty")])
def test_empty_prompt_or_clamp_set_is_refused(tiny_lm, tiny_jumprelu, prompt, specs_empty, match):
    specs = [] if specs_empty else [ClampSpec(tiny_jumprelu, [1], "set", [8.0])]
    with pytest.raises(LabError, match=match):
        list(stream_side_by_side(tiny_lm, prompt, specs, GenerationConfig(max_new_tokens=4)))


# ------------------------------------------------------------------------------------------------ add to a flips run


def _hashes(folder) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def flips_run(tmp_path, tiny_lm, tiny_jumprelu):
    from engine.method.flips import write_flips_run
    from engine.method.judge import JudgeConfig

    spec = ClampSpec(tiny_jumprelu, [1, 2, 3], "set", [8.0])
    gen = GenerationConfig(max_new_tokens=4, batch_size=2)
    run = tmp_path / "run"
    run.mkdir()
    write_flips_run(tiny_lm, [spec], ["hi", "why?"], gen, JudgeConfig(), run, {"model": "tiny", "source": "test"})
    return run, spec, gen


def test_adding_to_a_flips_run_appends_without_overwriting(tiny_lm, flips_run):
    import json

    from engine.method.flip_append import append_flip
    from engine.store.files import read_json, read_jsonl

    run, spec, gen = flips_run
    before = (run / "flips.jsonl").read_bytes()
    config_before = (run / "config.json").read_bytes()
    final = _finals(stream_side_by_side(tiny_lm, "tell me about rain", [spec], gen))
    row = append_flip(run, tiny_lm, [spec], gen, "tell me about rain", final["base"].text, final["clamped"].text, final["base"].stop_id)
    after = (run / "flips.jsonl").read_bytes()
    assert after.startswith(before) and len(after) > len(before)  # the earlier records are byte for byte where they were
    assert (run / "config.json").read_bytes() == config_before
    rows = read_jsonl(run / "flips.jsonl")
    assert [r["id"] for r in rows] == [0, 1, 2] and rows[-1] == json.loads(json.dumps(row))
    assert rows[-1]["base_text"] == final["base"].text and rows[-1]["added_from"] == "playground"
    assert read_json(run / "prompts.json") == ["hi", "why?", "tell me about rain"]
    summary = read_json(run / "summary.json")
    assert summary["n_prompts"] == 3 and summary["n_added"] == 1
    # a second one gets the next id; a resume of the run then finds nothing left to do and keeps every record
    append_flip(run, tiny_lm, [spec], gen, "and snow?", "Snow is cold.", "I'm sorry, but I can't help with that.")
    assert [r["id"] for r in read_jsonl(run / "flips.jsonl")] == [0, 1, 2, 3]
    assert read_jsonl(run / "flips.jsonl")[3]["valid"] is True
    from engine.method.flips import resume_flips_run

    resume_flips_run(run, tiny_lm)
    assert [r["id"] for r in read_jsonl(run / "flips.jsonl")] == [0, 1, 2, 3]


def test_adding_made_otherwise_is_refused_and_changes_nothing(tiny_lm, tiny_jumprelu, flips_run):
    from engine.method.flip_append import append_flip

    run, spec, gen = flips_run
    before = _hashes(run)
    other = ClampSpec(tiny_jumprelu, [1, 2], "set", [8.0])
    with pytest.raises(LabError, match="clamp set differs"):
        append_flip(run, tiny_lm, [other], gen, "x", "a", "b")
    with pytest.raises(LabError, match="generates 4 new tokens, these answers 8"):
        append_flip(run, tiny_lm, [spec], GenerationConfig(max_new_tokens=8), "x", "a", "b")
    with pytest.raises(LabError, match="sampled"):
        append_flip(run, tiny_lm, [spec], GenerationConfig(max_new_tokens=4, do_sample=True), "x", "a", "b")
    with pytest.raises(LabError, match="not a flips run"):
        append_flip(run.parent, tiny_lm, [spec], gen, "x", "a", "b")
    assert _hashes(run) == before
    # a run stopped half-way (fewer records than prompts) is refused: a resume continues from the prompt list
    lines = (run / "flips.jsonl").read_text().splitlines(keepends=True)
    (run / "flips.jsonl").write_text(lines[0])
    with pytest.raises(LabError, match="has 1 of its 2 prompts"):
        append_flip(run, tiny_lm, [spec], gen, "x", "a", "b")
