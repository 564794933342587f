"""Clamp presets: a named feature set with mode and values, in a ``preset.json`` beside an SAE or in the user's
preset folder (``data_dir()/presets``).

``--features auto`` uses the ``preset.json`` shipped in the SAE's own folder (the default SAE has one).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.errors import LabError
from engine.lm.saes import LoadedSAE
from engine.method.clamp import ClampSpec, check_mode
from engine.paths import DEFAULT_SAE_DIR, data_dir


def parse_features(text: str) -> list[int]:
    """``"3,17, 42"`` → ``[3, 17, 42]``; anything else is a clear error. (``auto``, the SAE's preset, is not a list
    of indices: :func:`resolve_clamp` handles it before this is called.)"""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise LabError(f"feature index {part!r} is not an integer (expected whole numbers separated by commas, "
                           "e.g. 3,17,42)") from None
    if not out:
        raise LabError("no feature indices given (expected whole numbers separated by commas, e.g. 3,17,42)")
    return out


def sae_folder(sae: LoadedSAE) -> Path | None:
    """The folder an SAE was loaded from (shipped default, width ladder or local sae_lens folder), if any."""
    if sae.source.startswith("default:ladder/"):  # a width-ladder SAE in the user cache, not a shipped folder
        from engine.sae_recipe.ladder import ladder_folder

        try:
            folder = ladder_folder(sae.source.removeprefix("default:ladder/"))
        except LabError:
            return None
    elif sae.source.startswith("default:"):
        folder = DEFAULT_SAE_DIR / sae.source.removeprefix("default:")
    elif sae.source.startswith("local:"):
        folder = Path(sae.source.removeprefix("local:"))
    else:
        return None
    return folder if folder.is_dir() else None


def preset_path(sae: LoadedSAE) -> Path | None:
    """The ``preset.json`` in a local/default/ladder SAE's folder, if there is one."""
    folder = sae_folder(sae)
    path = folder / "preset.json" if folder is not None else None
    return path if path is not None and path.is_file() else None


def load_preset(path: str | Path, sae: LoadedSAE) -> ClampSpec:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"could not read preset {path}: {exc}") from None
    if not isinstance(data, dict) or "features" not in data:
        raise LabError(f"preset {path} has no 'features' list")
    return ClampSpec(sae, data["features"], check_mode(data.get("mode", "set")), data.get("values", []))


def save_preset(path: str | Path, spec: ClampSpec, note: str = "") -> None:
    data = {"features": spec.features, "mode": spec.mode, "values": spec.values, "hook": spec.hook_name, "note": note}
    Path(path).write_text(json.dumps(data, indent=2))


def resolve_clamp(sae: LoadedSAE, features: str, mode: str | None = None, value: float | None = None) -> ClampSpec:
    """A clamp from CLI-style arguments: ``features`` is ``auto`` (the SAE's preset) or ``i,j,k``.

    With ``auto``, a given ``mode`` replaces the preset's mode and a given ``value`` its values.
    """
    if features == "auto":
        path = preset_path(sae)
        if path is None:
            raise LabError(f"SAE {sae.source} has no preset.json, so --features auto has nothing to use; pass --features i,j,k")
        preset = load_preset(path, sae)
        values = preset.values if value is None else [value]
        return ClampSpec(sae, preset.features, check_mode(mode or preset.mode), values)
    try:
        feats = parse_features(features)
    except LabError as exc:  # on the command line `auto` is the other choice
        raise LabError(f"{str(exc).removesuffix(')')}, or auto for the SAE's preset)") from None
    return ClampSpec(sae, feats, check_mode(mode or "set"), [] if value is None else [value])


# ---------------------------------------------------------------------------------------------- the user's presets


def presets_dir() -> Path:
    """User clamp presets, one JSON file each."""
    path = data_dir() / "presets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_presets(hook: str | None = None) -> list[Path]:
    """Saved presets, newest first; with ``hook``, only those made for that hook point."""
    out = []
    for path in presets_dir().glob("*.json"):
        if hook is not None:
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("hook") not in (None, hook):
                continue
        out.append(path)
    return sorted(out, key=lambda p: p.stat().st_mtime, reverse=True)


def preset_file(name: str) -> Path:
    """Where the user preset ``name`` lives (the name cleaned to letters, digits, - and _)."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:60]
    if not clean:
        raise LabError("give the preset a name (letters, digits, - or _)")
    return presets_dir() / f"{clean}.json"
