"""The Ray actor: one per GPU (or CPU slot), loading the model and a run's clamps once and serving many shards.

A shard is whole batches of one command with the same batch composition, seeds and torch thread count as the local
executor, so a shard's records are those a local run writes. What a shard computes is a module-level function of
the command's own driver (``engine.recovery.driver.recover_shard`` and its kin), sent by reference: this module runs
them and knows none of them. The actor returns records (and δ tensors); the driver alone writes files. Per-step
events go to the driver through a Ray queue (:meth:`emit`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class ShardWorker:
    """Wrapped by ``ray.remote`` in ``engine.scale.pool`` (this module does not import Ray)."""

    def __init__(self, run_dir: str, device: str | None, threads: int, sae_spec: str | None = None):
        from engine.store.context import open_run

        torch.set_num_threads(threads)  # the driver's count: the same float sums as a local run
        self.ctx = open_run(Path(run_dir), device=device)
        self.sae = None
        self.queue = None
        if sae_spec:
            from engine.lm.sae_sources import load_sae

            self.sae = load_sae(sae_spec, self.ctx.lm)

    def pid(self) -> int:
        return os.getpid()

    def emit(self, event: dict) -> None:
        """Stream one event to the driver (progress, live charts)."""
        if self.queue is not None:
            self.queue.put_nowait(event)

    def run(self, fn: Callable[..., Any], shard: int, queue, *args: Any) -> Any:
        """``fn(self, *args)`` for shard ``shard`` (the index is for the driver's bookkeeping and the task's name)."""
        self.queue = queue
        return fn(self, *args)
