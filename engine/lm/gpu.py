"""The GPU path's two user-facing concerns: how much device memory is in use, and out-of-memory as one clear message.

:func:`memory_status` reads ``torch.cuda``'s allocator (allocated / reserved / total) for ``info`` and the job status.
:func:`oom_guard` turns an out-of-memory failure — ``torch.cuda.OutOfMemoryError``, a CPU ``RuntimeError`` "out of
memory" / "DefaultCPUAllocator: can't allocate memory", or ``MemoryError`` — raised inside a batched loop into one
:class:`OutOfMemory` (a :class:`~engine.errors.LabError`) that names the batch size and a smaller one to try, and says
how many records are already saved. The drivers append each record as it finishes, so those stay on disk and the run
resumes from its last whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from engine.errors import LabError

logger = logging.getLogger(__name__)

_GIB = 1024**3
_CPU_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


@dataclass
class GpuMemory:
    """``torch.cuda`` memory of one device, in GiB."""

    device: str
    """The device's name, e.g. ``NVIDIA H100 80GB HBM3``."""
    index: int
    """CUDA device index."""
    allocated_gib: float
    """Memory held by live tensors."""
    reserved_gib: float
    """Memory the caching allocator holds (allocated + cached free blocks)."""
    total_gib: float
    """The device's total memory."""

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One short line for a status display."""
        return (f"GPU {self.index}: {self.allocated_gib:.1f} GiB allocated, {self.reserved_gib:.1f} reserved "
                f"of {self.total_gib:.1f}")


def memory_status(device: torch.device | str | None = None) -> GpuMemory | None:
    """Memory of ``device`` (default: the current CUDA device); None without CUDA or for a non-CUDA device."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        return None
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return GpuMemory(device=props.name, index=index, allocated_gib=torch.cuda.memory_allocated(index) / _GIB,
                     reserved_gib=torch.cuda.memory_reserved(index) / _GIB, total_gib=props.total_memory / _GIB)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device or the host running out of memory."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _CPU_OOM_MARKERS)


class OutOfMemory(LabError):
    """Out of memory in a batched job: names the batch size, a smaller one to try, and what is saved."""

    def __init__(self, what: str, batch_size: int, saved: int, unit: str):
        self.batch_size = batch_size
        self.suggested = max(1, batch_size // 2)
        self.saved = saved
        smaller = (f"try batch size {self.suggested}" if batch_size > 1
                   else "batch size is already 1: try fewer tokens, a smaller model or another device")
        kept = (f"the {saved} {unit} finished so far are saved and the run can be resumed" if saved
                else f"no {unit} had finished yet")
        super().__init__(f"out of memory during {what} at batch size {batch_size} → {smaller}; {kept}")


@contextmanager
def oom_guard(what: str, batch_size: int, saved: Callable[[], int], unit: str = "prompts") -> Iterator[None]:
    """Re-raise out-of-memory inside the block as :class:`OutOfMemory`; ``saved()`` counts the records on disk."""
    try:
        yield
    except OutOfMemory:
        raise
    except BaseException as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the cached blocks back, so a retry with a smaller batch starts clean
        err = OutOfMemory(what, batch_size, saved(), unit)
        logger.warning("%s (%s: %s)", err, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        raise err from exc
