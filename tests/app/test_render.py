"""Judge highlighting: deciding spans are marked, notes yield to them, whole-text rules become badges, HTML is escaped."""

from __future__ import annotations

from engine.method.judge import judge
from ui.render import highlighted


def test_deciding_span_wins_over_an_apology_note():
    text = "I'm sorry, but I can't help with that."
    html = highlighted(text, judge(text).to_json()["reasons"])
    assert 'title="refusal_statement"' in html and "apology_opening" not in html


def test_apology_alone_is_marked_as_a_note():
    text = "I'm sorry for the confusion. Tokyo is the capital of Japan."
    html = highlighted(text, judge(text).to_json()["reasons"])
    assert 'title="apology_opening"' in html and "refusal" not in html


def test_degenerate_text_gets_a_badge_and_model_text_is_escaped():
    text = "<b>no</b> I'm unable to assist. I'm unable to assist. I'm unable to assist. I'm unable to assist."
    html = highlighted(text, judge(text).to_json()["reasons"])
    assert "degenerate:" in html and 'class="badge"' in html
    assert "<b>no</b>" not in html and "&lt;b&gt;" in html


def test_empty_text():
    assert "(empty)" in highlighted("", judge("").to_json()["reasons"])
