"""Clamp sets: the defended features across one or more SAEs (layers), as a file, a shipped preset or a run's config.

A clamp set is a JSON list of rows ``{"sae": SPEC, "features": [..], "mode": "set|multiply|zero", "values": [..]}``,
where SPEC is anything ``--sae`` accepts (``default:HOOK``, a local folder, ``RELEASE/SAE_ID``, ``tiny:HOOK``). A file
may also be an object ``{"clamps": [...], "note": …}`` so a preset can say how it was chosen. Rows saved in a run's
``config.json`` name the SAE by its source (``local:PATH``, ``registry:RELEASE/ID``) and are read the same way.

``preset:NAME`` names a shipped multi-layer preset (``engine/default_sae/presets/NAME.json``) or one the user saved
(``data_dir()/presets/NAME.json``). Each SAE is loaded once, only if a row needs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.sae_sources import load_sae
from engine.lm.saes import LoadedSAE
from engine.method.clamp import ClampSpec, check_mode
from engine.paths import DEFAULT_SAE_DIR, data_dir

SHIPPED_PRESETS = DEFAULT_SAE_DIR / "presets"
"""Multi-layer presets shipped with the default SAEs."""


def sae_spec_of(source: str) -> str:
    """The ``--sae`` spec that reloads an SAE from its recorded source (``local:P`` → ``P``, ``registry:R`` → ``R``)."""
    for prefix in ("local:", "registry:"):
        if source.startswith(prefix):
            return source.removeprefix(prefix)
    return source


def preset_file(name: str) -> Path:
    """Where ``preset:NAME`` lives: shipped first, then the user's presets."""
    for folder in (SHIPPED_PRESETS, data_dir() / "presets"):
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    shipped = sorted(p.stem for p in SHIPPED_PRESETS.glob("*.json")) if SHIPPED_PRESETS.is_dir() else []
    raise LabError(f"no clamp preset {name!r}; shipped presets: {', '.join(shipped) or 'none'}")


def read_clamp_file(spec: str) -> tuple[list[dict], dict]:
    """Rows and metadata of ``FILE.json`` or ``preset:NAME`` (rows are checked for shape, not yet loaded)."""
    path = preset_file(spec.removeprefix("preset:")) if spec.startswith("preset:") else Path(spec)
    if not path.is_file():
        raise LabError(f"clamp file {spec} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabError(f"clamp file {spec} is not valid JSON: {exc}") from None
    meta: dict = {}
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if k != "clamps"}
        data = data.get("clamps")
    return check_rows(data, spec), meta


def check_rows(rows: object, origin: str) -> list[dict]:
    """The rows of a clamp set, each with ``sae``, a non-empty integer ``features`` list, a mode and values."""
    if not isinstance(rows, list):
        raise LabError(f"{origin}: a clamp set is a JSON list of {{sae, features, mode, values}} rows")
    if not rows:
        raise LabError(f"{origin}: the clamp set is empty; it needs at least one row with features")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("sae"), str) or not row["sae"]:
            raise LabError(f"{origin}: row {i} needs an 'sae' (e.g. default:blocks.15.hook_resid_post)")
        feats = row.get("features")
        if not isinstance(feats, list) or not feats or not all(isinstance(f, int) and not isinstance(f, bool) for f in feats):
            raise LabError(f"{origin}: row {i} needs a non-empty 'features' list of integers")
        values = row.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise LabError(f"{origin}: row {i} 'values' must be a list of numbers")
        out.append({"sae": row["sae"], "features": list(feats), "mode": check_mode(str(row.get("mode", "set"))), "values": list(values)})
    return out


def load_clamp_set(lm: LoadedModel, rows: Sequence[dict], cache: dict[str, LoadedSAE] | None = None) -> list[ClampSpec]:
    """ClampSpecs for ``rows``: each SAE loaded (and checked against ``lm``) once; no (SAE, feature) twice."""
    cache = {} if cache is None else cache
    specs: list[ClampSpec] = []
    seen: dict[tuple[str, int], int] = {}
    for i, row in enumerate(rows):
        name = sae_spec_of(row["sae"])
        if name not in cache:
            cache[name] = load_sae(name, lm)
        spec = ClampSpec(cache[name], row["features"], check_mode(row["mode"]), row.get("values", []))
        for f in spec.features:
            key = (spec.hook_name, f)
            if key in seen:
                raise LabError(f"feature {f} of the SAE at {spec.hook_name} is clamped twice (rows {seen[key]} and {i})")
            seen[key] = i
        specs.append(spec)
    if not specs:
        raise LabError("the clamp set is empty")
    return specs


def write_clamp_file(path: str | Path, specs: Sequence[ClampSpec], meta: dict | None = None) -> Path:
    """Write a clamp file (``{"clamps": rows, **meta}``) that ``flips --clamp`` accepts."""
    path = Path(path)
    rows = [{"sae": s.sae.source if s.sae.source.startswith("default:") else sae_spec_of(s.sae.source),
             "hook": s.hook_name, "features": s.features, "mode": s.mode, "values": s.values} for s in specs]
    path.write_text(json.dumps({"clamps": rows, **(meta or {})}, indent=2))
    return path
