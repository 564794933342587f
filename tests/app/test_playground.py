"""The steering playground (AppTest, tiny model): streams base and clamped answers, adds them to flips runs, and refuses
a prompt over the model's context with its length."""

from __future__ import annotations

from engine.services import jobs
from engine.store import catalogue
from engine.store.files import read_jsonl
from tests.app.apphelpers import goto, new_app, problems, wait_job


def _clamped_playground():
    at = new_app()
    goto(at, "features")
    at.text_input(key="index_text").input("1, 2, 3")
    at.button(key="index_add").click().run()
    goto(at, "playground")
    assert not problems(at)
    return at


def _generate(at, prompt: str, max_new: str = "4"):
    at.text_area(key="pg_prompt").input(prompt)
    at.text_input(key="pg_max_new").input(max_new).run()
    at.button(key="pg_start").click().run()


def _html(at) -> str:
    return " ".join(str(h.proto.body) for h in at.get("html"))


def test_playground_streams_both_answers_and_adds_them_to_flips_runs(lab_env):
    at = _clamped_playground()
    assert "Clamped with" in " ".join(m.value for m in at.markdown)
    _generate(at, "What is rain?")
    job = wait_job("playground", timeout=120)
    assert job.status == "done", job.error
    events = job.events()
    # streamed token by token: each side's events grow one token at a time, the sides interleaved
    for side in ("base", "clamped"):
        counts = [e["n_tokens"] for e in events if e["side"] == side]
        assert counts[: len(counts) - 1] == list(range(1, len(counts))) and len(counts) >= 2
    assert events[0]["side"] == "base" and events[1]["side"] == "clamped"
    at.run()
    assert not problems(at)
    result = job.result
    assert result.complete
    body = _html(at)
    import html

    shown = [html.escape(result.sides[side].text[:20]) for side in ("base", "clamped") if result.sides[side].text.strip()]
    assert shown and all(t in body for t in shown)
    assert [b for b in at.button if b.key == "pg_new_go"] or [r for r in at.radio if r.key == "pg_add_where"]
    assert at.radio(key="pg_add_where").value == "A new flips run"  # no flips run exists yet: a new one is offered first

    # a new flips run of the prompt (the one writer of a fresh run answers it again: the same texts)
    at.radio(key="pg_add_where").set_value("A new flips run").run()
    at.button(key="pg_new_go").click().run()
    flips_job = wait_job("flips")
    assert flips_job.status == "done", flips_job.error
    at.run()
    assert not problems(at)
    name = flips_job.meta["run"]
    [row] = catalogue.read_records(name, "flips.jsonl")
    assert row["prompt"] == "What is rain?"
    assert row["base_text"] == result.sides["base"].text and row["clamped_text"] == result.sides["clamped"].text

    # and the same prompt again, appended to that run: one more record, the first one untouched
    before = (catalogue.run_path(name) / "flips.jsonl").read_bytes()
    at.radio(key="pg_add_where").set_value("An existing flips run").run()
    at.selectbox(key="pg_add_run").set_value(name).run()
    at.button(key="pg_add_go").click().run()
    assert not problems(at)
    assert any("Added as prompt #1" in s.value for s in at.success)
    rows = read_jsonl(catalogue.run_path(name) / "flips.jsonl")
    assert len(rows) == 2 and (catalogue.run_path(name) / "flips.jsonl").read_bytes().startswith(before)
    assert rows[1]["added_from"] == "playground" and rows[1]["base_text"] == result.sides["base"].text


def test_adding_to_a_run_with_another_answer_length_is_refused_in_words(lab_env):
    at = _clamped_playground()
    _generate(at, "What is rain?", max_new="3")
    wait_job("playground")
    at.run()
    at.radio(key="pg_add_where").set_value("A new flips run").run()
    at.button(key="pg_new_go").click().run()
    name = wait_job("flips").meta["run"]
    _generate(at, "What is snow?", max_new="5")
    wait_job("playground")
    at.run()
    at.radio(key="pg_add_where").set_value("An existing flips run").run()
    at.selectbox(key="pg_add_run").set_value(name).run()
    at.button(key="pg_add_go").click().run()
    errors = [e.value for e in at.error]
    assert any("Not added" in e and "generates 3 new tokens, these answers 5" in e for e in errors), errors
    assert len(read_jsonl(catalogue.run_path(name) / "flips.jsonl")) == 1
    assert not any("--" in e for e in errors)


def test_a_prompt_over_the_context_is_refused_with_its_length(lab_env):
    at = _clamped_playground()
    before = {j.id for j in jobs.find_jobs("playground")}
    from engine.lm.loading import load_model

    lm = load_model("tiny", "cpu")
    long_prompt = "river " * lm.model.cfg.n_ctx
    n = len(lm.encode(lm.chat_prompt(long_prompt)))
    _generate(at, long_prompt)
    errors = [e.value for e in at.error]
    assert any(f"is {n} tokens long" in e and f"context of {lm.model.cfg.n_ctx} tokens" in e for e in errors), errors
    assert {j.id for j in jobs.find_jobs("playground")} == before  # no job started
    assert not at.exception


def test_a_bad_temperature_keeps_generate_off_with_the_fields_message(lab_env):
    at = _clamped_playground()
    at.text_area(key="pg_prompt").input("What is rain?").run()
    assert not at.button(key="pg_start").disabled
    at.toggle(key="pg_sample").set_value(True).run()
    for typed, words in (("0", "Temperature must be positive, got 0"), ("abc", "Temperature must be a number, got 'abc'")):
        at.text_input(key="pg_temperature").input(typed).run()
        assert any(words in e.value for e in at.error), [e.value for e in at.error]
        assert at.button(key="pg_start").disabled
    at.text_input(key="pg_temperature").input("0.7").run()
    assert not at.button(key="pg_start").disabled and not at.error
