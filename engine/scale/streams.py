"""Records in order, whatever the executor: the glue between a command's writer and :class:`~engine.scale.pool.RayPool`.

The writers (``write_flips_run``, ``recover_into``, ``run_attribution``) run their local generator, or hand shards
of whole batches to :func:`sharded`, and stay the only code that writes a run's files, so a Ray run writes the same
records in the same order as a local one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.scale.config import ExecutorConfig


class Progress:
    """One progress line per job (stderr): items done / total and, with Ray, each worker's rate."""

    def __init__(self, total: int, desc: str, done: int = 0):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc=desc, unit="prompt", dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def workers(self, stats: Sequence) -> None:
        rates = [f"pid {s.pid}: {s.items / s.seconds:.2f}/s" for s in stats if s.seconds > 0 and not s.retired]
        self.bar.set_postfix_str(" · ".join(rates))

    def close(self) -> None:
        self.bar.close()


def sharded(run: Path, exe: ExecutorConfig, fn: Callable[..., list], items: Sequence, batch_size: int,
            args: Callable[[int, list], tuple], on_event: Callable[[dict], None] | None = None,
            cancel: threading.Event | None = None, progress: Progress | None = None, sae_spec: str | None = None) -> Iterator[Any]:
    """``fn(worker, *args(first, chunk))`` on Ray for each shard of whole batches of ``items``; its results in order."""
    from engine.scale.pool import RayPool, shards_of

    if not items:
        return
    shards = shards_of(items, batch_size, exe.batches_per_shard)
    with RayPool(run, exe, sae_spec=sae_spec) as pool:
        hook = (lambda i, st: progress.workers(pool.stats())) if progress is not None else None
        for rows in pool.map_ordered(fn, [args(first, chunk) for first, chunk in shards], [len(c) for _, c in shards],
                                     on_event, cancel, hook):
            yield from rows


def counted(stream: Iterator, progress: Progress | None) -> Iterator:
    """Advance ``progress`` by one per item of ``stream``."""
    for item in stream:
        yield item
        if progress is not None:
            progress.advance()
