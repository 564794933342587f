"""The driver's side of Ray: join or start a cluster, keep a pool of :class:`~engine.scale.worker.ShardWorker`
actors, hand them shards, and give the results back **in shard order** so the one writer (the driver) writes the
same files, in the same order, as a local run.

A worker that dies mid-shard (killed process, lost node, CUDA OOM) surfaces as an actor error on that shard's
future: the actor is replaced and the shard handed out again (at most ``max_retries`` times). A shard's records come
back whole or not at all, and only the driver writes, so no record is ever written twice. Ray is the scheduler; this
module only orders results and retries lost shards.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from engine.errors import LabError
from engine.scale.config import RAY_PIN, ExecutorConfig

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
_FORWARDED_ENV = ("SAE_LAB_DATA", "HF_HUB_OFFLINE", "HF_HOME", "SAE_LAB_DEFAULT_SAE")


def require_ray():
    try:
        import ray
    except ImportError:
        raise LabError(f"the Ray executor needs Ray: pip install {RAY_PIN} (scripts/setup.sh installs it)") from None
    return ray


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """One TCP connect to the head's address, so an unreachable cluster fails in seconds, not after Ray's retries."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LabError(f"the Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, ray://10.0.0.5:10001 or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise LabError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with `ray start --head` "
                       "or check the address") from None


def connect(exe: ExecutorConfig) -> bool:
    """Join ``exe.address`` or start a local cluster; returns True when this call started Ray (and should stop it)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = exe.address
    if address and address != "auto":
        check_reachable(address)
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "include_dashboard": False}
    if not address:  # a local cluster sized for the workers asked for
        kwargs["num_cpus"] = max(os.cpu_count() or 1, int(exe.workers * exe.cpus_per_worker + 0.999))
        # Ray starts workers at niceness 15, so beside any other job on the machine they lose the CPU to it: measured
        # here, two recovery workers got 47 % of a core each while a training job at niceness 5 took a whole one.
        # The workers are this command's own compute, not background work. (A joined cluster keeps its own setting.)
        kwargs["_system_config"] = {"worker_niceness": 0}
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
        raise LabError(f"cannot start or join Ray{f' at {address}' if address else ''}: {exc}") from None
    return True


@dataclass
class WorkerStats:
    """What one worker did (for the progress line's per-worker rates)."""

    pid: int
    shards: int = 0
    items: int = 0
    seconds: float = 0.0
    retired: bool = False
    """Replaced after it died."""


@dataclass
class _Slot:
    actor: Any
    stats: WorkerStats
    started: float = field(default_factory=time.time)


class RayPool:
    """``exe.workers`` actors for one run directory; use as a context manager (actors and a started Ray are stopped)."""

    live: ClassVar[list[RayPool]] = []
    """The pools open in this process (what a status view, or a test that kills a worker, looks at)."""

    def __init__(self, run_dir: Path, exe: ExecutorConfig, device: str | None = None, sae_spec: str | None = None):
        self.ray = require_ray()
        self.exe = exe.check()
        self.started_ray = connect(exe)
        from ray.util.queue import Queue

        from engine.scale.worker import ShardWorker

        self._cls = self.ray.remote(num_gpus=exe.gpus_per_worker, num_cpus=exe.cpus_per_worker, max_restarts=0)(ShardWorker)
        self._args = (str(Path(run_dir).resolve()), device, exe.threads or torch.get_num_threads(), sae_spec)
        self.queue = Queue()
        self.slots = [self._new_slot() for _ in range(exe.workers)]
        self.retired: list[WorkerStats] = []
        RayPool.live.append(self)

    def _new_slot(self) -> _Slot:
        actor = self._cls.remote(*self._args)
        try:
            pid = self.ray.get(actor.pid.remote(), timeout=600)
        except Exception as exc:  # noqa: BLE001
            raise LabError(f"a Ray worker could not start: {_cause(exc)}") from None
        return _Slot(actor, WorkerStats(pid))

    def pids(self) -> list[int]:
        return [s.stats.pid for s in self.slots]

    def stats(self) -> list[WorkerStats]:
        return [s.stats for s in self.slots] + self.retired

    def map_ordered(self, fn: Callable[..., Any], shards: Sequence[tuple], sizes: Sequence[int],
                    on_event: Callable[[dict], None] | None = None, cancel: threading.Event | None = None,
                    on_shard: Callable[[int, WorkerStats], None] | None = None) -> Iterator[Any]:
        """Run ``fn(worker, *args)`` for each shard's args on free workers; yield each result in shard order.

        ``sizes``: items per shard (for the per-worker rates). A cancel stops handing out shards; the finished ones
        that come first in order are still yielded.
        """
        ray = self.ray
        todo = list(range(len(shards)))  # shard indices not yet handed out (retries go to the front)
        attempts = [0] * len(shards)
        pending: dict[Any, tuple[int, _Slot]] = {}
        free = list(self.slots)
        done: dict[int, Any] = {}
        nxt = 0
        while nxt < len(shards):
            stopping = cancel is not None and cancel.is_set()
            while free and todo and not stopping:
                i, slot = todo.pop(0), free.pop(0)
                slot.started = time.time()
                pending[slot.actor.run.remote(fn, i, self.queue, *shards[i])] = (i, slot)
            if not pending:
                break  # cancelled, nothing in flight
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            self._drain(on_event)
            for fut in ready:
                i, slot = pending.pop(fut)
                try:
                    done[i] = ray.get(fut)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
                    attempts[i] += 1
                    if attempts[i] > self.exe.max_retries:
                        raise LabError(f"shard {i} lost its worker {attempts[i]} times; last: {_cause(exc)}") from None
                    logger.warning("worker pid %d died on shard %d (%s); retrying on a new worker", slot.stats.pid, i, _cause(exc))
                    slot.stats.retired = True
                    self.retired.append(slot.stats)
                    self.slots.remove(slot)
                    fresh = self._new_slot()
                    self.slots.append(fresh)
                    free.append(fresh)
                    todo.insert(0, i)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise LabError(f"a Ray worker failed on shard {i}: {_cause(exc)}") from None
                slot.stats.shards += 1
                slot.stats.items += sizes[i]
                slot.stats.seconds += time.time() - slot.started
                free.append(slot)
                if on_shard is not None:
                    on_shard(i, slot.stats)
            while nxt in done:
                self._drain(on_event)
                yield done.pop(nxt)
                nxt += 1
        self._drain(on_event)

    def _drain(self, on_event: Callable[[dict], None] | None) -> None:
        while not self.queue.empty():
            for ev in self.queue.get_nowait_batch(self.queue.qsize()):
                if on_event is not None:
                    on_event(ev)

    def close(self) -> None:
        if self in RayPool.live:
            RayPool.live.remove(self)
        for slot in self.slots:
            try:
                self.ray.kill(slot.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.slots = []
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001
            pass
        if self.started_ray:
            self.ray.shutdown()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def shards_of(items: Sequence, batch_size: int, batches_per_shard: int) -> list[tuple[int, list]]:
    """``(first index, items)`` per shard of whole batches (so batches are those of a local run)."""
    size = batch_size * batches_per_shard
    return [(start, list(items[start : start + size])) for start in range(0, len(items), size)]
