"""The model's number format: ``auto | float32 | bfloat16 | float16``, resolved per device and checked before loading.

``auto`` is float32 on CPU (and MPS), and bfloat16 on CUDA for models over 1B parameters (float32 below: small models
gain little and fp32 keeps every number the lab reports exact to the last digit). A format the device cannot compute
in is one clear error before any weight is read (docs/MODELS.md).
"""

from __future__ import annotations

import logging
import typing
from typing import Literal

import torch

from engine.errors import LabError

logger = logging.getLogger(__name__)

DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_CHOICES: tuple[str, ...] = typing.get_args(DtypeChoice)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LARGE_MODEL_PARAMS = 1_000_000_000
"""Above this many parameters ``auto`` picks bfloat16 on CUDA."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"`` (what ``config.json`` stores)."""
    return str(dtype).removeprefix("torch.")


def check_dtype_choice(choice: str | None) -> DtypeChoice:
    """``choice`` as a :data:`DtypeChoice` (None means ``auto``), or a clear error naming the choices."""
    choice = "auto" if choice is None else str(choice).strip().lower()
    if choice not in DTYPE_CHOICES:
        raise LabError(f"unknown number format {choice!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return typing.cast(DtypeChoice, choice)


def resolve_dtype(choice: str | None, device: torch.device, n_params: int) -> torch.dtype:
    """The torch dtype for ``choice`` on ``device`` for a model of ``n_params`` parameters (checked, see :func:`check_dtype`)."""
    choice = check_dtype_choice(choice)
    if choice == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" and n_params > LARGE_MODEL_PARAMS else torch.float32
    else:
        dtype = _DTYPES[choice]
    check_dtype(dtype, device)
    return dtype


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a format ``device`` cannot compute in: bfloat16 on a CUDA GPU without it (before Ampere), or any format
    whose matmul/softmax fails on the device (probed on a 2×2 tensor, milliseconds)."""
    name = dtype_name(dtype)
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise LabError("this GPU cannot compute in bfloat16 (it needs an Ampere or newer GPU); choose float16 or float32")
    try:
        a = torch.ones((2, 2), dtype=dtype, device=device)
        (a @ a).softmax(-1).sum().item()
    except (RuntimeError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LabError(f"the {device.type} device cannot compute in {name} ({first}); choose float32") from None
