"""Gemma Scope's raw ``params.npz`` SAEs (JumpReLU) as sae_lens SAEs: read without pickle, checked, hook inferred.

A Gemma Scope folder is ``…/layer_{L}/width_{W}/average_l0_{N}/params.npz`` holding ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` and ``threshold [d_sae]``. The encoder is
``z = (pre > threshold) · pre`` with ``pre = h W_enc + b_enc`` (no ``b_dec`` subtracted from the input), which is
sae_lens' JumpReLU with ``apply_b_dec_to_input=False``.

Spec (``engine.lm.sae_sources``): ``npz:PATH[@HOOK]`` or a plain PATH, where PATH is a folder holding ``params.npz``
or the ``.npz`` file itself. The hook and the model are taken, first to last, from ``@HOOK``, from an optional sidecar
``lab_sae.json`` next to the file (``{"hook_name": …, "model_name": …}``), and from the path: a ``layer_{L}``
component gives ``blocks.{L}.hook_resid_post`` for a residual release (``gemma-scope-…-res``, or no release named in
the path), ``blocks.{L}.hook_mlp_out`` for ``…-mlp``; a ``gemma-scope-{2b,9b,27b}-{pt,it}-…`` component (the Hugging
Face cache names it ``models--google--gemma-scope-2b-pt-res``) gives the model ``gemma-2-{size}``.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import LabError

logger = logging.getLogger(__name__)

SIDECAR = "lab_sae.json"
"""Optional file next to ``params.npz`` naming its ``hook_name`` and ``model_name``."""

REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
"""Arrays a Gemma Scope ``params.npz`` must hold."""

_RELEASE = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)", re.IGNORECASE)


@dataclass
class NpzSource:
    """Where a Gemma Scope SAE lives and what it reads."""

    file: Path
    """The ``params.npz`` file."""
    hook_name: str
    """The hook it reads (given, from the sidecar, or inferred from the path)."""
    model_name: str | None
    """The model it was trained on, when known (checked against the loaded model); None: only widths are checked."""


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """``npz:PATH[@HOOK]`` or ``PATH`` → (path, explicit hook or None)."""
    body = spec.removeprefix("npz:")
    path, hook = body, None
    if "@" in body:
        head, tail = body.rsplit("@", 1)
        if tail.startswith(("blocks.", "hook_")):
            path, hook = head, tail
    return Path(path).expanduser(), hook


def params_file(path: Path) -> Path:
    """The ``params.npz`` of a folder, or the ``.npz`` file itself; a clear error when there is none."""
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir() and (path / "params.npz").is_file():
        return path / "params.npz"
    raise LabError(f"{path} is not a Gemma Scope SAE: no params.npz there")


def infer_source(path: Path, hook: str | None = None) -> NpzSource:
    """Resolve the file, its hook and its model (explicit > sidecar > path), or say which one is missing."""
    file = params_file(path)
    side: dict = {}
    sidecar = file.parent / SIDECAR
    if sidecar.is_file():
        try:
            side = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LabError(f"{sidecar} is not valid JSON: {exc}") from None
        if not isinstance(side, dict):
            raise LabError(f"{sidecar} must be a JSON object with hook_name and model_name")
    parts = file.absolute().parts  # not resolved: HF cache files are symlinks to content-named blobs
    release = next((m for m in (_RELEASE.search(p) for p in parts) if m), None)
    hook = hook or side.get("hook_name") or _hook_from_path(parts, release)
    if not hook:
        raise LabError(f"cannot tell which hook the SAE in {file.parent} reads: give it as npz:PATH@blocks.N.hook_resid_post, "
                       f"or write {SIDECAR} with hook_name")
    model = side.get("model_name") or (f"gemma-2-{release.group(1).lower()}" if release else None)
    if model is None:
        logger.warning("the SAE in %s names no model; only its width and hook are checked", file.parent)
    return NpzSource(file, str(hook), model)


def _hook_from_path(parts: tuple[str, ...], release: re.Match | None) -> str | None:
    layer = next((int(m.group(1)) for m in (re.fullmatch(r"layer_(\d+)", p) for p in reversed(parts)) if m), None)
    if layer is None:
        return None
    kind = release.group(3).lower() if release else "res"
    if kind == "res":
        return f"blocks.{layer}.hook_resid_post"
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_out"
    return None  # attention SAEs read hook_z, whose width differs: the hook must be given


def read_params(file: Path) -> dict[str, torch.Tensor]:
    """The five arrays as float32 tensors, read with ``allow_pickle=False`` and checked for shape, finiteness and
    threshold ≥ 0. Raises :class:`LabError` naming the first problem."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays need pickle: refused
        raise LabError(f"{file} holds pickled objects, which are refused (only plain numeric arrays load): {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise LabError(f"{file} is not a readable .npz file: {exc}") from None
    arrays = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in arrays.items()}
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise LabError(f"{file} lacks {', '.join(missing)} (a Gemma Scope params.npz holds {', '.join(REQUIRED)})")
    for key in REQUIRED:
        if arrays[key].dtype.kind not in "fiu" and arrays[key].dtype.name != "bfloat16":
            raise LabError(f"{file}: {key} is not numeric (dtype {arrays[key].dtype})")
    w_enc = arrays["W_enc"]
    if w_enc.ndim != 2:
        raise LabError(f"{file}: W_enc must be a matrix [d_in, d_sae], got shape {list(w_enc.shape)}")
    d_in, d_sae = w_enc.shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise LabError(f"{file}: inconsistent shapes: W_enc is [{d_in}, {d_sae}] so {key} must be {list(shape)}, "
                           f"got {list(arrays[key].shape)}")
    tensors = {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)) for k in REQUIRED}
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            raise LabError(f"{file}: {key} holds NaN or infinite values")
    if (tensors["threshold"] < 0).any():
        raise LabError(f"{file}: threshold must be ≥ 0 everywhere (min {tensors['threshold'].min().item():g})")
    if "scaling_factor" in arrays and not np.allclose(arrays["scaling_factor"], 1.0):
        raise LabError(f"{file}: a scaling_factor other than 1 is not supported")
    return tensors


def load_npz_sae(source: NpzSource):
    """A sae_lens :class:`JumpReLUSAE` with the checked weights of ``source`` (float32, on the CPU)."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    params = read_params(source.file)
    d_in, d_sae = params["W_enc"].shape
    cfg = JumpReLUSAEConfig(d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False, device="cpu",
                            metadata=SAEMetadata(hook_name=source.hook_name, model_name=source.model_name))
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict(params)
    sae.eval()
    logger.info("loaded Gemma Scope SAE %s (d_in=%d, d_sae=%d) at %s", source.file, d_in, d_sae, source.hook_name)
    return sae
