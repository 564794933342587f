"""Where the prompts of a long command run: here (``local``) or on a Ray cluster (``ray``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from engine.errors import LabError

Executor = Literal["local", "ray"]
RAY_ADDRESS_ENV = "SAE_LAB_RAY_ADDRESS"
RAY_PIN = "ray==2.40.0"
"""The Ray the lab is tested with (installed by scripts/setup.sh)."""


@dataclass(frozen=True)
class ExecutorConfig:
    """How ``flips``, ``recover``, ``attribute`` and ``sweep`` spread their prompts."""

    executor: Executor = "local"
    """``local``: this process, batch after batch. ``ray``: shards of whole batches served by Ray actors."""
    ray_address: str | None = None
    """``ray``: a cluster to join (``host:port`` of its head, ``ray://host:10001`` or ``auto``); None: the
    environment's SAE_LAB_RAY_ADDRESS, else a local cluster started for this command."""
    workers: int = 2
    """``ray``: actors, each loading the model and the run's SAEs once and serving many shards."""
    gpus_per_worker: float = 0.0
    """``ray``: GPUs each actor reserves (1 on a GPU cluster; 0 runs actors on CPUs)."""
    cpus_per_worker: float = 1.0
    """``ray``: CPUs each actor reserves (and its torch threads)."""
    threads: int = 0
    """``ray``: torch threads per worker. 0: the driver's count, so the records are identical to a local run (float
    sums depend on the thread count); on a CPU-only cluster give cpus_per_worker instead, or workers oversubscribe
    the cores (measured: 2 workers × 2 threads on 2 cores ran ~4.8× slower than local)."""
    batches_per_shard: int = 1
    """``ray``: whole batches per shard (a lost worker costs at most one shard)."""
    max_retries: int = 3
    """``ray``: how often one shard may be retried after its worker died before the command fails."""

    def check(self) -> ExecutorConfig:
        if self.executor not in ("local", "ray"):
            raise LabError(f"unknown executor {self.executor!r}; choose local or ray")
        if self.workers < 1:
            raise LabError(f"the number of Ray workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise LabError("GPUs per worker must be ≥ 0 and CPUs per worker > 0")
        if self.threads < 0:
            raise LabError(f"threads per worker must be ≥ 0 (0: the driver's count), got {self.threads}")
        if self.batches_per_shard < 1 or self.max_retries < 0:
            raise LabError("batches per shard must be ≥ 1 and retries ≥ 0")
        return self

    @property
    def address(self) -> str | None:
        return self.ray_address or os.environ.get(RAY_ADDRESS_ENV) or None

    @property
    def is_ray(self) -> bool:
        return self.executor == "ray"


LOCAL = ExecutorConfig()
