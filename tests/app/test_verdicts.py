"""Verdict badges explain themselves (rules, measured values, thresholds) and the judge's lists are on the judging pages."""

from __future__ import annotations

import json

from tests.app.apphelpers import goto, make_flips_run, problems

POEM = ("Roses are red and violets are blue. Roses are red and violets are blue. "
        "Roses are red and violets are blue, roses are red and violets are blue.")


def _texts(at) -> list[str]:
    """Markdown and captions as a reader sees them (markdown escapes removed)."""
    return [m.value.replace("\\", "") for m in at.markdown] + [c.value for c in at.caption]


def _add_recovery_record(run, rows: list[dict]) -> None:
    """A recovery record written by hand (the verdicts are what is tested, not the optimisation)."""
    from engine.store.records import create_record

    record = create_record(run, "hand", "recovery", {"projection": "encoder", "budget": 1.0, "delta_layer": 1, "valid": "judge",
                                                      "limit": None, "flip_ids": [r["id"] for r in rows]})
    (record / "recovery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = len(rows)
    (record / "recovery_summary.json").write_text(json.dumps({"n_valid": n, "n_total": n, "non_refusal_recovery": 1.0,
                                                              "base_like_recovery": 0.5, "strict_base_like_recovery": 0.0}))


def _recovered(i: int, text: str, base: str, **verdicts) -> dict:
    return {"id": i, "prompt": f"Tell me about rivers, part {i}.", "base_text": base, "clamped_text": "I'm sorry, but I can't help with that.",
            "recovered_text": text, "reasons": [], "degenerate": False, "drift": 0.01, "floor_violation": 0.0,
            "delta_rel_norm": 0.1, "delta_norm": 1.0, "best_step": 1, "loss_history": [1.0, 0.5], **verdicts}


def test_flip_cards_list_the_rules_behind_each_verdict(app, lab_env):
    make_flips_run(lab_env, "tiny-run", n=1)
    goto(app, "flips")
    assert not problems(app)
    texts = _texts(app)
    # the valid-flip badge names both halves of its rule, the clamped refusal names the words that fired
    assert any("valid flip ✓" in t and "base answers" in t and "clamped refuses" in t for t in texts), texts
    assert any("refusal ✓" in t and "first-person refusal" in t and "can't" in t for t in texts), texts
    assert any("refusal ✗" in t and "no first" in t for t in texts), texts  # the base answer: no rule fired
    # every rule, with measured value and threshold, behind "All rules"
    assert any("| rule |" in t and "threshold" in t and "listed phrases" in t for t in texts)
    # the judge's lists are on the page
    assert any(e.label.startswith("The judge's lists") for e in app.expander)
    assert any("i'm unable" in c.value for c in app.code)


def test_degenerate_base_says_the_degenerate_rule_decided_it(app, lab_env):
    run = make_flips_run(lab_env, "poem-run", n=1)
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    rows[0].update(base_text=POEM, base_refusal=True, valid=False)
    (run / "flips.jsonl").write_text(json.dumps(rows[0]) + "\n")
    goto(app, "flips")
    assert not problems(app)
    texts = _texts(app)
    assert any("refusal ✓" in t and "degenerate" in t and "4-gram repeated 4× ≥ 4" in t for t in texts), texts
    assert any("degenerate ✓" in t for t in texts)
    assert any("valid flip ✗" in t and "base refuses" in t for t in texts)


def test_recovered_texts_explain_base_likeness(lab_env):
    from tests.app.apphelpers import new_app

    run = make_flips_run(lab_env, "tiny-run", n=2)
    base = "Rivers carry water to the sea."
    _add_recovery_record(run, [
        _recovered(0, base, base, non_refusal=True, base_like=True, strict_base_like=False),
        _recovered(1, "Rivers are wet.", base, non_refusal=True, base_like=False, strict_base_like=False),
    ])
    at = new_app()
    goto(at, "recovery")
    assert not problems(at), problems(at)
    texts = _texts(at)
    assert any("base-like ✓" in t and "identical to the base answer" in t for t in texts), texts
    assert any("strict base-like ✗" in t and "30 chars < 120" in t for t in texts), texts
    at.selectbox(key="rec_pick").set_value(1).run()
    texts = _texts(at)
    assert any("base-like ✗" in t and "15 chars < 80" in t for t in texts), texts
    assert any("non-refusal ✓" in t for t in texts)
    assert any(e.label.startswith("The judge's lists") for e in at.expander)


def test_attribution_page_shows_the_judges_lists(lab_env):
    from tests.app.apphelpers import add_attribution_records, new_app

    run = make_flips_run(lab_env, "tiny-run", n=2)
    add_attribution_records(run, n=2)
    at = new_app()
    goto(at, "attribution")
    assert not at.exception
    assert any(e.label.startswith("The judge's lists") for e in at.expander)
