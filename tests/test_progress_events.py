"""Honest progress: flips, recovery and attribution report units of work as they finish, with a true phase."""

from __future__ import annotations

import json

import pytest

from engine.method.clamp import ClampSpec
from engine.method.flips import write_flips_run
from engine.method.generation import GenerationConfig
from engine.method.judge import JudgeConfig
from engine.services import jobs
from engine.services.progress import ProgressEvent, StepCounter

PROMPTS = ["hi there", "tell me a story", "why is it so", "count to ten", "name a colour"]


def _monotone(events: list[ProgressEvent]) -> bool:
    return all(a.done <= b.done for a, b in zip(events, events[1:]))


def test_flips_report_answers_per_batch_and_base_answers_before_their_records(tiny_lm, tiny_jumprelu, tmp_path):
    timeline: list = []
    (tmp_path / "run").mkdir()
    spec = ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [8.0, 8.0, 8.0])
    summary = write_flips_run(tiny_lm, [spec], PROMPTS, GenerationConfig(max_new_tokens=4, batch_size=2), JudgeConfig(),
                              tmp_path / "run", {"source": "test"}, on_record=lambda r: timeline.append(("record", r["id"])),
                              on_progress=lambda ev: timeline.append(("progress", ev)))
    assert summary["n_prompts"] == 5
    events = [e for kind, e in timeline if kind == "progress"]
    assert _monotone(events) and all(e.total == 10 and e.unit == "answers" for e in events)
    # one report as each base batch and each clamped batch finishes (3 batches), plus one as each batch starts
    assert [e.done for e in events] == [0, 2, 4, 4, 6, 8, 8, 9, 10]
    assert [e.phase for e in events[:3]] == ["base answers", "clamped answers", "base answers"]
    assert events[-1].phase == "saving"
    # the first batch's base answers arrive (as partial items) before its first record
    first_items = next(i for i, (kind, e) in enumerate(timeline) if kind == "progress" and e.items)
    first_record = next(i for i, (kind, _) in enumerate(timeline) if kind == "record")
    assert first_items < first_record
    assert [it["id"] for it in timeline[first_items][1].items] == [0, 1]
    assert "base_text" in timeline[first_items][1].items[0]


def test_job_report_keeps_phase_unit_and_partial_items():
    job = jobs.Job(kind="flips")
    job.report(ProgressEvent("clamped answers", 2, 10, "answers", "batch 1/5", [{"id": 0}, {"id": 1}]))
    assert job.progress == (2, 10) and job.phase == "clamped answers" and job.unit == "answers"
    assert job.message == "batch 1/5" and [p["id"] for p in job.partial] == [0, 1]
    job.report(ProgressEvent("base answers", 4, 10, "answers"))
    assert len(job.partial) == 2 and job.phase == "base answers"


def test_step_counter_counts_steps_not_events():
    seen: list[ProgressEvent] = []
    counter = StepCounter(total_prompts=2, steps=3, on_progress=seen.append)
    counter.phase("preparing", "batch 1/1", ())
    for step in range(4):  # steps 0..3: step 0 is the start, 3 the evaluation of the last step
        for pid in (7, 8):
            counter(pid, step)
    assert seen[0].phase == "preparing" and seen[0].done == 0
    assert [e.done for e in seen[1:]] == [1, 2, 3, 4, 5, 6]
    assert all(e.phase == "optimising" for e in seen[1:])
    counter(7, 3)  # a repeated event adds nothing
    assert len(seen) == 7


@pytest.fixture(scope="module")
def flips_run(tiny_lm, tmp_path_factory):
    from engine.cli.main import main

    run = tmp_path_factory.mktemp("progress") / "run"
    assert main(["flips", "--prompts", "builtin:harmless", "--limit", "2", "--model", "tiny", "--sae", "tiny",
                 "--features", "0,1,2", "--value", "8", "--max-new-tokens", "6", "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    for r in rows:
        r["valid"] = True
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_recovery_phase_sequence_and_steps(tiny_lm, flips_run):
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery

    seen: list[ProgressEvent] = []
    cfg = RecoveryConfig(steps=4, budget=10.0, max_new_tokens=4, batch_size=1)
    run_recovery(flips_run, cfg, lm=tiny_lm, on_progress=seen.append, name="phases")
    assert _monotone(seen) and all(e.total == 2 * 4 and e.unit == "prompt-steps" for e in seen)
    phases = [e.phase for e in seen]
    collapsed = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert collapsed == ["preparing", "optimising", "generating recovered answers", "preparing", "optimising",
                         "generating recovered answers", "saving"]
    assert seen[-1].done == 8
    # "optimising" reports advance step by step: batch 1 (prompt 0, 4 steps) then batch 2 (prompt 1, 4 steps)
    assert [e.done for e in seen if e.phase == "optimising"] == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]  # phase start, then each step
    gen1 = next(e for e in seen if e.phase == "generating recovered answers")
    assert gen1.done == 4 and gen1.detail == "batch 1/2"


def test_attribution_reports_each_component_replay(tiny_lm, flips_run):
    from engine.attribution.components import COMPONENTS
    from engine.attribution.driver import run_attribution
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery

    run_recovery(flips_run, RecoveryConfig(steps=1, budget=10.0, max_new_tokens=3), lm=tiny_lm, name="for-attr")
    seen: list[ProgressEvent] = []
    run_attribution(flips_run, 3, lm=tiny_lm, recovery="for-attr", on_progress=seen.append)
    c = len(COMPONENTS)
    assert _monotone(seen) and all(e.total == 2 * c and e.unit == "replays" for e in seen)
    # one report before the batch, then one per component replayed (2 examples in one batch: +2 each)
    assert [e.done for e in seen] == [2 * k for k in range(c + 1)]
    assert seen[0].phase == f"replaying {COMPONENTS[0]}" and seen[-1].phase == "judging"
