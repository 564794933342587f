"""Every number field of every job form is checked by the engine before a job can start.

For each field and each bad value (0 or a negative where not allowed, NaN, "abc", a huge or non-whole number): the
engine's message, worded for the page (the field's name, no ``--flag``), shows in the page, the start button is off,
and no job exists afterwards. Nothing is coerced: what was typed is what is refused.
"""

from __future__ import annotations

import pytest

from engine.services import jobs
from tests.app.apphelpers import goto, make_flips_run, new_app, problems

HUGE = "1e999"  # inf as a float; not a whole number


def _job_ids() -> set[str]:
    return {j.id for j in jobs.find_jobs()}  # the registry is process-wide: compare with what existed before


def _refuses(at, key: str, bad: list[str], start: str, says: str, good: str) -> None:
    """Type each of ``bad`` into the text box ``key``: the start button ``start`` is off and a message naming the field
    (``says``) is shown, with no command-line flag in it; ``good`` is typed back at the end and everything is on again."""
    for value in bad:
        at.text_input(key=key).input(value).run()
        assert not at.exception, (key, value, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert any(says in e for e in errors), (key, value, errors)
        assert not any("--" in e for e in errors), (key, value, errors)
        assert at.button(key=start).disabled, (key, value)
    at.text_input(key=key).input(good).run()
    assert not problems(at), (key, good, problems(at))
    assert not at.button(key=start).disabled, (key, good)


RECOVERY_FIELDS = [
    # key, bad values, how the message names it, a good value
    ("rec_budget", ["0", "-1", "nan", "abc", HUGE, "inf", ""], "Budget B", "40"),
    ("rec_steps", ["0", "-3", "nan", "abc", HUGE, "2.5"], "Steps", "60"),
    ("rec_lr", ["0", "-0.1", "nan", "abc", HUGE], "Learning rate", "0.1"),
    ("rec_limit:3", ["0", "-1", "nan", "abc", HUGE, "99999"], "Valid flips to recover", "3"),  # keyed by the set size
    ("rec_delta_layer:tiny-run", ["-1", "nan", "abc", HUGE, "99", "2"], "δ layer", "1"),
    ("rec_boundary", ["-1", "nan", "abc", HUGE, "61"], "Boundary steps", "0"),
    ("rec_answer_tokens", ["0", "-1", "nan", "abc", HUGE, "99999"], "Answer tokens", "48"),
    ("rec_max_new", ["0", "-1", "nan", "abc", HUGE, "99999"], "Recovered answer length", "64"),
    ("rec_batch", ["0", "-1", "nan", "abc", HUGE], "Batch size", "4"),
    ("rec_seed", ["-1", "nan", "abc", HUGE, "4294967296"], "Seed", "0"),
]
JACOBIAN_FIELDS = [
    ("rec_drift_penalty", ["-1", "nan", "abc", HUGE], "Drift penalty λ", "200"),
    ("rec_probes", ["0", "-1", "nan", "abc", HUGE], "Probes", "8"),
    ("rec_corr_steps", ["-1", "nan", "abc", HUGE], "Correction steps", "2"),
    ("rec_max_probes", ["0", "-1", "nan", "abc", HUGE], "Most probes", "64"),
    ("rec_probe_tol", ["0", "1", "-0.5", "nan", "abc", HUGE], "Probe tolerance", "0.1"),
    ("rec_probe_every", ["0", "-1", "nan", "abc", HUGE], "Probe interval", "5"),
    ("rec_corr_lr", ["0", "-1", "nan", "abc", HUGE], "Correction learning rate", "0.05"),
    ("rec_cg_iters", ["0", "-1", "nan", "abc", HUGE, "2.5"], "Conjugate-gradient iterations", "8"),
    ("rec_restore_below", ["-0.1", "1.5", "nan", "abc"], "Restore-below share", "0.5"),
    ("rec_gn_damping", ["0", "-1", "nan", "abc", HUGE], "Gauss–Newton damping", "0.001"),
    ("rec_gn_decay", ["0", "1.5", "-1", "nan", "abc"], "damping decay", "1"),
]


def test_recovery_form_refuses_every_bad_number_before_a_job(lab_env):
    make_flips_run(lab_env, "tiny-run", n=3)
    before = _job_ids()
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    assert not problems(at) and not at.button(key="start_recovery").disabled
    for key, bad, says, good in RECOVERY_FIELDS:
        _refuses(at, key, bad, "start_recovery", says, good)
    at.selectbox(key="rec_projection").set_value("jacobian").run()
    assert not problems(at)
    for key, bad, says, good in JACOBIAN_FIELDS:
        _refuses(at, key, bad, "start_recovery", says, good)
    # the very message of the issue: a budget of 0 is refused by the engine's rule, in the page's words
    at.text_input(key="rec_budget").input("0").run()
    assert "Budget B must be a positive finite number, got 0" in [e.value for e in at.error]
    assert at.button(key="start_recovery").disabled and at.button(key="start_sweep").disabled
    assert _job_ids() == before


def test_sweep_budgets_are_checked_before_a_job(lab_env):
    make_flips_run(lab_env, "tiny-run", n=3)
    before = _job_ids()
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    assert not at.button(key="start_sweep").disabled
    _refuses(at, "sweep_budgets", ["", "abc", "0, x", "-1", "0, nan", f"0, {HUGE}", " , "], "start_sweep", "udget", "0, 2, 5")
    at.text_input(key="sweep_budgets").input("0, -2").run()
    assert any(e.value.startswith("Budgets must be finite and ≥ 0, got -2") for e in at.error)
    assert _job_ids() == before


def test_flips_form_refuses_every_bad_number_before_a_job(lab_env):
    before = _job_ids()
    at = new_app()
    goto(at, "features")
    at.text_input(key="index_text").input("1, 2, 3")
    at.button(key="index_add").click().run()
    goto(at, "flips")
    assert not problems(at) and not at.button(key="start_flips").disabled
    for key, bad, says, good in [
        ("flips_limit", ["0", "-1", "nan", "abc", HUGE, "2.5"], "How many prompts", "8"),
        ("flips_max_new", ["0", "-1", "nan", "abc", HUGE, "99999"], "Max new tokens", "48"),
        ("flips_batch", ["0", "-1", "nan", "abc", HUGE], "Batch size", "4"),
        ("flips_seed", ["-1", "nan", "abc", HUGE, "4294967296"], "Seed", "0"),
    ]:
        _refuses(at, key, bad, "start_flips", says, good)
    assert _job_ids() == before


def test_attribution_k_is_checked_before_a_job(lab_env):
    from tests.app.apphelpers import add_recovery

    run = make_flips_run(lab_env, "tiny-run", n=2)
    add_recovery(run)
    before = _job_ids()
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "attribution")
    assert not problems(at) and not at.button(key="start_attribution").disabled
    # the tiny SAE at δ's layer has 64 features: k above that is refused before the job, naming the width
    _refuses(at, "attr_k", ["-1", "nan", "abc", HUGE, "1.5", "65"], "start_attribution", "k ", "0")
    at.text_input(key="attr_k").input("99999").run()
    assert any("k must be at most the SAE's width, d_sae = 64, got 99999" == e.value for e in at.error)
    assert _job_ids() == before


def test_feature_indices_and_clamp_values_are_checked_not_clamped(lab_env):
    at = new_app()
    goto(at, "features")
    rows_before = at.session_state["clamp"]["rows"]
    for text, says in (("auto", "“auto” means the SAE's shipped preset"), ("abc", "not an integer"), ("1.5", "not an integer"),
                       ("99999", "feature index 99999 is out of range: this SAE has features 0..63"),
                       ("-1", "out of range"), ("3, x", "not an integer")):
        at.text_input(key="index_text").input(text).run()
        errors = [e.value for e in at.error]
        assert any(says.lower() in e.lower() for e in errors), (text, errors)
        assert not any("or auto" in e or "--" in e for e in errors), (text, errors)  # no longer self-contradictory
        assert at.button(key="index_add").disabled
    at.text_input(key="index_text").input("1, 2").run()
    assert not problems(at)
    for value in ("nan", "abc", HUGE, "-inf", ""):
        at.text_input(key="index_value").input(value).run()
        assert any(e.value.startswith("Value") or "finite" in e.value for e in at.error), (value, [e.value for e in at.error])
        assert at.button(key="index_add").disabled
    at.text_input(key="index_value").input("-2.5").run()  # negative set values are allowed (docs/DASHBOARD.md)
    assert not problems(at)
    at.button(key="index_add").click().run()
    row = next(r for r in at.session_state["clamp"]["rows"] if r["sae"] == "tiny:blocks.1.hook_resid_post")
    assert row["values"][-2:] == [-2.5, -2.5] and row["features"][-2:] == [1, 2]
    assert rows_before != at.session_state["clamp"]["rows"]
    # the feature card's index is refused, not clamped to the last feature
    at.text_input(key="card_feature").input("99999").run()
    assert any("out of range: this SAE has features 0..63" in e.value for e in at.error)
    assert not any(b.key == "card_go" for b in at.button)


def test_contrast_search_settings_are_checked_before_a_job(lab_env):
    before = _job_ids()
    at = new_app()
    goto(at, "features")
    assert not at.button(key="contrast_go").disabled
    for key, bad, says, good in [
        ("contrast_prompts", ["0", "1", "-1", "nan", "abc", HUGE, "51"], "Prompts", "12"),
        ("contrast_tokens", ["0", "-1", "nan", "abc", HUGE, "99999"], "Answer tokens", "32"),
        ("contrast_k", ["0", "-1", "nan", "abc", HUGE, "65"], "Show the top", "20"),
    ]:
        _refuses(at, key, bad, "contrast_go", says, good)
    assert _job_ids() == before


def test_search_results_add_checks_how_many_and_the_value(lab_env):
    at = new_app()
    goto(at, "features")
    at.button(key="prompt_go").click().run()
    rows = at.session_state["prompt_rows:tiny"]
    assert rows
    for value in ("0", "-1", "nan", "abc", HUGE, str(len(rows) + 1)):
        at.text_input(key="prompt_n").input(value).run()
        assert any(e.value.startswith("How many") for e in at.error), (value, [e.value for e in at.error])
        assert at.button(key="prompt_add").disabled
    at.text_input(key="prompt_n").input("2").run()
    for value in ("nan", "abc", HUGE):
        at.text_input(key="prompt_scale").input(value).run()
        assert at.button(key="prompt_add").disabled
    at.text_input(key="prompt_scale").input("2").run()
    assert not problems(at) and not at.button(key="prompt_add").disabled


@pytest.mark.parametrize("text,kind,expected", [
    ("3", int, 3), (" 7 ", int, 7), ("-2", int, -2), ("0.5", float, 0.5), ("nan", float, "nan"), ("1e999", float, float("inf")),
])
def test_parse_number_keeps_what_was_typed(text, kind, expected):
    import math

    from ui.validate import parse_number

    got = parse_number(text, kind, "X")
    assert (math.isnan(got) if expected == "nan" else got == expected) and type(got) is kind


@pytest.mark.parametrize("text,kind", [("", int), ("abc", int), ("2.5", int), ("1e3", int), ("nan", int), ("abc", float), ("", float)])
def test_parse_number_refuses_with_the_label(text, kind):
    from engine.errors import LabError
    from ui.validate import parse_number

    with pytest.raises(LabError, match="^Steps "):
        parse_number(text, kind, "Steps")


def test_a_taken_recovery_name_is_refused_before_a_job(lab_env):
    from engine.lm.loading import load_model
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery

    run = make_flips_run(lab_env, "tiny-run", n=2)
    run_recovery(run, RecoveryConfig(steps=2, max_new_tokens=4, answer_tokens=8), lm=load_model("tiny", "cpu"), name="first")
    before = _job_ids()
    at = new_app()
    at.session_state["run"] = "tiny-run"
    goto(at, "recovery")
    at.text_input(key="rec_name").input("first").run()
    assert any("already has a recovery named `first`" in e.value for e in at.error)
    assert at.button(key="start_recovery").disabled
    at.text_input(key="rec_name").input("../x").run()
    assert any("not a usable recovery name" in e.value for e in at.error) and at.button(key="start_recovery").disabled
    at.text_input(key="rec_name").input("second").run()
    assert not problems(at) and not at.button(key="start_recovery").disabled
    assert _job_ids() == before
