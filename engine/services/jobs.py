"""Background jobs: long work (flips, recovery, sweeps, attribution) off the UI's script thread.

A :class:`Job` is a worker thread plus a cancel event, a thread-safe event log, a status and a result or an
error message. Jobs live in a process-wide registry, so a page that was left (page switch, browser reload, a
second tab) can find a running job again by its id, or by its kind and metadata (``find_jobs``).

Rules the worker obeys (see docs/ARCHITECTURE.md):

* it never touches the UI — it only appends events (``job.log``) and sets its result;
* it turns grad mode on itself (grad mode is per thread);
* a :class:`~engine.errors.LabError` becomes the job's error message as is; running out of memory becomes a
  short actionable message; anything else is logged with its traceback and shown as one line.

Nothing here imports streamlit.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from engine.errors import LabError
from engine.lm.gpu import is_out_of_memory, memory_status
from engine.services.progress import ProgressEvent

logger = logging.getLogger(__name__)

JobStatus = Literal["running", "done", "cancelled", "failed"]

MAX_EVENTS = 200_000
"""Events kept per job; beyond this the oldest are dropped (a long sweep stays bounded in memory)."""
MAX_PARTIAL = 1000
"""Partial results kept per job (the newest)."""
MAX_FINISHED_JOBS = 50
"""Finished jobs kept in the registry; older finished ones are forgotten (their outputs stay on disk)."""


@dataclass
class Job:
    """One background task. Read it from any thread; only its worker writes to it."""

    kind: str
    """What it does, e.g. ``flips``, ``recovery``, ``sweep``, ``attribution``."""
    meta: dict = field(default_factory=dict)
    """Who it belongs to (e.g. ``{"run": "2025-…-flips"}``); used to find it again."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: JobStatus = "running"
    error: str | None = None
    result: Any = None
    progress: tuple[int, int] | None = None
    """(done, total) when the worker knows it."""
    message: str = ""
    """A one-line note of what the worker is doing now."""
    phase: str = ""
    """The engine's phase now (``base answers``, ``optimising``…), from its last :class:`ProgressEvent`."""
    unit: str = ""
    """What ``progress`` counts (``answers``, ``steps``, ``replays``); empty: records."""
    partial: list = field(default_factory=list)
    """Partial results reported with progress (flips: base answers whose clamped answers are pending)."""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _events: list = field(default_factory=list, repr=False)
    _dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------ worker side

    def log(self, event: Any) -> None:
        """Append one event (a dataclass or a dict); callable from the worker as an ``on_event`` callback."""
        row = dataclasses.asdict(event) if dataclasses.is_dataclass(event) and not isinstance(event, type) else dict(event)
        with self._lock:
            self._events.append(row)
            if len(self._events) > MAX_EVENTS:
                drop = len(self._events) - MAX_EVENTS
                del self._events[:drop]
                self._dropped += drop

    def set_progress(self, done: int, total: int, message: str = "") -> None:
        self.progress = (int(done), int(total))
        if message:
            self.message = message

    def report(self, event: ProgressEvent) -> None:
        """Take one engine progress report (an ``on_progress`` callback): units done, the phase, partial results."""
        with self._lock:
            if event.items:
                self.partial = [*self.partial, *event.items][-MAX_PARTIAL:]
            self.phase, self.unit = event.phase, event.unit
            self.progress = (int(event.done), int(event.total))
            self.message = event.detail

    # ------------------------------------------------------------------------------------------ reader side

    def events(self, since: int = 0) -> list[dict]:
        """A copy of the events numbered ``since`` and later (numbering counts dropped events too)."""
        with self._lock:
            start = max(0, since - self._dropped)
            return list(self._events[start:])

    @property
    def n_events(self) -> int:
        with self._lock:
            return self._dropped + len(self._events)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def request_cancel(self) -> None:
        """Ask the worker to stop; it does so at its next check (the engine checks once per step)."""
        self.cancel.set()
        if self.running:
            self.message = "cancelling…"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker ends; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def summary(self) -> dict:
        return {
            "id": self.id, "kind": self.kind, "meta": dict(self.meta), "status": self.status, "error": self.error,
            "progress": self.progress, "message": self.message, "phase": self.phase, "unit": self.unit, "started": self.started, "finished": self.finished,
            "n_events": self.n_events, "gpu_memory": gpu.to_json() if (gpu := memory_status()) else None,
        }

    @property
    def memory_line(self) -> str:
        """The GPU's memory in one short line while CUDA is in use, else an empty string (for a status display)."""
        gpu = memory_status()
        return gpu.line() if gpu is not None else ""


_REGISTRY: dict[str, Job] = {}
_REGISTRY_LOCK = threading.Lock()
_COUNTER = itertools.count()


def _describe(exc: BaseException) -> str:
    """The one line a user sees for a failed job."""
    if isinstance(exc, LabError):
        return str(exc)
    if is_out_of_memory(exc):  # the drivers raise OutOfMemory (a LabError naming the batch size); this is the rest
        return "out of memory: try a smaller batch size, fewer prompts or fewer steps (or a smaller model)"
    return f"internal error ({type(exc).__name__}: {exc}); the traceback is in the server log"


def _run(job: Job, fn: Callable[[Job], Any]) -> None:
    torch.set_grad_enabled(True)  # grad mode is per thread; recovery needs it on in this one
    try:
        job.result = fn(job)
        job.status = "cancelled" if job.cancel.is_set() else "done"
    except BaseException as exc:  # noqa: BLE001 - every failure must end the job with a message, never kill the server
        if isinstance(exc, LabError):
            logger.info("job %s (%s) failed: %s", job.id, job.kind, exc)
        else:
            logger.exception("job %s (%s) failed", job.id, job.kind)
        job.error = _describe(exc)
        job.status = "failed"
    finally:
        job.finished = time.time()
        if job.status != "running" and job.message == "cancelling…":
            job.message = ""
        _forget_old()


def start_job(kind: str, fn: Callable[[Job], Any], meta: dict | None = None) -> Job:
    """Run ``fn(job)`` in a daemon thread and register the job; returns at once.

    ``fn`` reports through ``job.log`` / ``job.set_progress``, honours ``job.cancel`` and returns the result.
    """
    job = Job(kind=kind, meta=dict(meta or {}))
    thread = threading.Thread(target=_run, args=(job, fn), name=f"job-{kind}-{job.id}", daemon=True)
    job._thread = thread
    with _REGISTRY_LOCK:
        _REGISTRY[job.id] = job
        job.meta.setdefault("_seq", next(_COUNTER))
    thread.start()
    logger.info("started job %s (%s) %s", job.id, kind, meta or {})
    return job


def get_job(job_id: str | None) -> Job | None:
    if not job_id:
        return None
    with _REGISTRY_LOCK:
        return _REGISTRY.get(job_id)


def find_jobs(kind: str | None = None, running_only: bool = False, **meta: Any) -> list[Job]:
    """Registered jobs matching ``kind`` and every ``meta`` item, newest first."""
    with _REGISTRY_LOCK:
        jobs = list(_REGISTRY.values())
    out = [
        j for j in jobs
        if (kind is None or j.kind == kind) and (not running_only or j.running) and all(j.meta.get(k) == v for k, v in meta.items())
    ]
    return sorted(out, key=lambda j: j.meta.get("_seq", 0), reverse=True)


def latest_job(kind: str | None = None, **meta: Any) -> Job | None:
    """The newest job of ``kind`` with ``meta``, running or not (None when there is none)."""
    found = find_jobs(kind, **meta)
    return found[0] if found else None


def cancel_all(timeout: float = 10.0) -> None:
    """Cancel every running job and wait for them (tests, shutdown)."""
    for job in find_jobs(running_only=True):
        job.request_cancel()
    for job in find_jobs():
        job.wait(timeout)


def _forget_old() -> None:
    with _REGISTRY_LOCK:
        finished = sorted((j for j in _REGISTRY.values() if not j.running), key=lambda j: j.meta.get("_seq", 0))
        for job in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            _REGISTRY.pop(job.id, None)
