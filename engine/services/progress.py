"""Progress of an engine loop in units of work, shared by the dashboard's jobs, the CLI and the Ray driver.

An engine loop that takes long (flips, recovery, attribution) accepts ``on_progress`` and calls it each time a unit
of work **finishes**, with the phase it is in now: the dashboard's :meth:`engine.services.jobs.Job.report` shows it,
the CLI's :class:`engine.scale.streams.Progress` can too. Units per loop (docs/DASHBOARD.md, "Honest progress"):

* flips: answers generated, base and clamped (2 per prompt), reported per generated batch;
* recovery: optimisation steps done, summed over prompts (``steps`` per prompt), reported per step of a batch;
* attribution: component replays done (one per example and component), reported per replayed component of a batch.

Nothing here imports streamlit or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class ProgressEvent:
    """One report: ``done`` of ``total`` units finished; the loop is now in ``phase``."""

    phase: str
    """What the loop does now, in UI words (``base answers``, ``optimising``, ``replaying components``…)."""
    done: int
    """Units finished so far (counted from the start of the whole run, resumed units included)."""
    total: int
    """Units of the whole run."""
    unit: str
    """What a unit is (``answers``, ``steps``, ``replays``)."""
    detail: str = ""
    """Where in the run (``batch 1/2``, ``prompt #3, step 20``)."""
    items: list[dict] = field(default_factory=list)
    """Partial results that finished with this unit (flips: base answers whose clamped answers are pending)."""

    @property
    def line(self) -> str:
        """``base answers · 4/12 answers · batch 1/3``."""
        return " · ".join(p for p in (self.phase, f"{self.done}/{self.total} {self.unit}", self.detail) if p)


ProgressFn = Callable[[ProgressEvent], None]
"""The ``on_progress`` callback of an engine loop."""
PhaseFn = Callable[[str, str, Sequence[int]], None]
"""``on_phase(phase, detail, finished)``: a loop entered ``phase``; the prompt ids in ``finished`` are completely done."""


def report(on_progress: ProgressFn | None, phase: str, done: int, total: int, unit: str, detail: str = "",
           items: list[dict] | None = None) -> None:
    """Call ``on_progress`` when there is one."""
    if on_progress is not None:
        on_progress(ProgressEvent(phase, int(done), int(total), unit, detail, list(items or [])))


class StepCounter:
    """Optimisation steps done, from the per-prompt step events (local or streamed from Ray workers).

    Each prompt counts ``min(step, steps)`` once its event for ``step`` arrives (step 0 is the start; the extra
    evaluation pass after the last step adds nothing), so ``done`` reaches ``total`` exactly when every prompt is done.
    """

    def __init__(self, total_prompts: int, steps: int, on_progress: ProgressFn | None, done_prompts: int = 0):
        self.steps, self.on_progress = steps, on_progress
        self.total = total_prompts * steps
        self.base = done_prompts * steps
        self.seen: dict[int, int] = {}
        self.current = "optimising"

    @property
    def done(self) -> int:
        return self.base + sum(self.seen.values())

    def __call__(self, prompt_id: int, step: int) -> None:
        """One step event: prompt ``prompt_id`` reached ``step``."""
        before = self.seen.get(prompt_id, 0)
        now = min(int(step), self.steps)
        if now <= before:
            return
        self.seen[prompt_id] = now
        self.current = "optimising" if self.current in ("preparing", "optimising") else self.current
        report(self.on_progress, self.current, self.done, self.total, "prompt-steps", f"prompt #{prompt_id}, step {now}/{self.steps}")

    def phase(self, phase: str, detail: str, finished: Sequence[int] = ()) -> None:
        """A :data:`PhaseFn`: the loop entered ``phase``; ``finished`` prompts count all their steps (a zero-δ batch)."""
        for pid in finished:
            self.seen[int(pid)] = self.steps
        self.current = phase
        report(self.on_progress, phase, self.done, self.total, "prompt-steps", detail)
