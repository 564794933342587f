"""Clamp presets: a named feature set with mode and values, stored as ``preset.json`` beside an SAE or anywhere.

``--features auto`` uses the ``preset.json`` shipped in the SAE's own folder (the default SAE has one).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.clamp import ClampSpec
from engine.errors import LabError
from engine.saes import LoadedSAE


def parse_features(text: str) -> list[int]:
    """``"3,17, 42"`` → ``[3, 17, 42]``; anything else is a clear error."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise LabError(f"feature index {part!r} is not an integer (expected e.g. 3,17,42 or auto)") from None
    if not out:
        raise LabError("no feature indices given (expected e.g. 3,17,42 or auto)")
    return out


def preset_path(sae: LoadedSAE) -> Path | None:
    """The ``preset.json`` in a local/default SAE's folder, if there is one."""
    for prefix in ("local:", "default:"):
        if sae.source.startswith(prefix):
            if prefix == "default:":
                from engine.saes import DEFAULT_SAE_DIR

                folder = DEFAULT_SAE_DIR / sae.source[len(prefix) :]
            else:
                folder = Path(sae.source[len(prefix) :])
            path = folder / "preset.json"
            return path if path.is_file() else None
    return None


def load_preset(path: str | Path, sae: LoadedSAE) -> ClampSpec:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"could not read preset {path}: {exc}") from None
    if not isinstance(data, dict) or "features" not in data:
        raise LabError(f"preset {path} has no 'features' list")
    return ClampSpec(sae, data["features"], data.get("mode", "set"), data.get("values", []))


def save_preset(path: str | Path, spec: ClampSpec, note: str = "") -> None:
    data = {"features": spec.features, "mode": spec.mode, "values": spec.values, "hook": spec.hook_name, "note": note}
    Path(path).write_text(json.dumps(data, indent=2))


def resolve_clamp(sae: LoadedSAE, features: str, mode: str = "set", value: float | None = None) -> ClampSpec:
    """A clamp from CLI-style arguments: ``features`` is ``auto`` (the SAE's preset) or ``i,j,k``.

    With ``auto``, an explicit ``value`` overrides the preset's values, and ``mode`` its mode.
    """
    if features == "auto":
        path = preset_path(sae)
        if path is None:
            raise LabError(f"SAE {sae.source} has no preset.json, so --features auto has nothing to use; pass --features i,j,k")
        spec = load_preset(path, sae)
        if value is not None:
            return ClampSpec(sae, spec.features, mode, [value])  # type: ignore[arg-type]
        return spec
    values = [] if value is None else [value]
    return ClampSpec(sae, parse_features(features), mode, values)  # type: ignore[arg-type]
