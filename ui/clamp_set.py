"""The session's clamp set: rows over one or more SAEs (layers) of the loaded model, and its presets.

A row is ``{"id", "sae": SPEC, "features", "mode", "values"}``: the engine's clamp-file row
(``engine.method.clamp_sets``) plus an id that keys the editor's widgets. SPEC is what ``load_sae`` accepts
(``default:HOOK``, ``tiny:HOOK``, a local folder, ``RELEASE/ID``). The set belongs to the loaded model: another model
starts a new set (from the sidebar SAE's shipped preset, when it has one); another sidebar SAE keeps it, so a set can
span layers. SAEs load through ``ui.state``'s ``st.cache_resource`` loader; ClampSpecs are built by the engine's
``load_clamp_set``, which also refuses duplicates, empty rows and bad values.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import streamlit as st

from engine.errors import LabError
from ui import state

logger = logging.getLogger(__name__)
KEY = "clamp"
ENGINE_KEYS = ("sae", "features", "mode", "values")


# ------------------------------------------------------------------------------------------------ SAE names


def row_spec(sae) -> str:
    """The spec that reloads ``sae`` as a row's ``sae`` (a bare ``tiny`` gets its hook, so one SAE has one name)."""
    from engine.method.clamp_sets import sae_spec_of

    spec = sae_spec_of(sae.source)
    return f"tiny:{sae.hook_name}" if spec == "tiny" else spec


def normalize_spec(spec: str) -> str:
    """A row's SAE as :func:`row_spec` names it (a run's ``local:P`` → ``P``; a bare ``default``/``tiny`` → its hook)."""
    from engine.method.clamp_sets import sae_spec_of

    spec = sae_spec_of(spec)
    return row_spec(state.load_sae_spec(spec)) if spec in ("default", "tiny") else spec


def spec_hook(spec: str) -> str | None:
    """The hook a spec reads (from the name for shipped and tiny SAEs, else from the cached SAE)."""
    for prefix in ("default:", "tiny:"):
        if spec.startswith(prefix):
            return spec.removeprefix(prefix)
    try:
        return state.load_sae_spec(spec).hook_name
    except LabError:
        return None


def layer_of(hook: str | None) -> int | None:
    from engine.lm.saes import hook_layer

    try:
        return hook_layer(hook) if hook else None
    except LabError:
        return None


def sae_label(spec: str) -> str:
    """``layer 15 · default:blocks.15.hook_resid_post`` (the spec alone when it names no layer)."""
    layer = layer_of(spec_hook(spec))
    return spec if layer is None else f"layer {layer} · {spec}"


def sae_options(lm, sae) -> list[str]:
    """SAEs a row may use: the sidebar SAE, the other shipped SAEs of this model (every layer's ``tiny:`` SAE for
    the tiny model), and any SAE the set already uses."""
    from engine.lm.models import is_default_model
    from engine.lm.sae_sources import default_sae_names

    options = [row_spec(sae)] if sae is not None else []
    if lm.name == "tiny":
        options += [f"tiny:blocks.{i}.hook_resid_post" for i in range(lm.n_layers)]
    elif is_default_model(lm.name):
        options += [f"default:{name}" for name in default_sae_names()]
    options += [r["sae"] for r in clamp_state(lm, sae)["rows"]]
    return list(dict.fromkeys(options))


# ------------------------------------------------------------------------------------------------ session state


def clamp_state(lm, sae) -> dict:
    """``{model, rows, origin, version, next_id}``; a new model starts from the sidebar SAE's shipped preset."""
    cur = st.session_state.get(KEY)
    if cur is None or cur.get("model") != lm.name:
        cur = {"model": lm.name, "rows": [], "origin": "empty", "version": 0, "next_id": 0}
        st.session_state[KEY] = cur
        if sae is not None:
            from engine.method.presets import load_preset, preset_path

            path = preset_path(sae)
            if path is not None:
                try:
                    spec = load_preset(path, sae)
                    set_rows(lm, [_row(row_spec(sae), spec.features, spec.mode, spec.values)], "the SAE's shipped preset", bump=False)
                except LabError as exc:
                    logger.warning("preset %s not usable: %s", path, exc)
    # set_rows replaces the state's dict, so return what is stored now, not the empty one made above (the first page
    # a session opened showed "No clamp set yet" beside a preset that was already loaded)
    return st.session_state[KEY]


def _row(spec: str, features, mode: str, values) -> dict:
    return {"sae": spec, "features": [int(f) for f in features], "mode": mode, "values": [float(v) for v in values]}


def set_rows(lm, rows: list[dict], origin: str, bump: bool = True) -> None:
    """Replace the set (the editor's widgets start again from it when ``bump``)."""
    cur = st.session_state.get(KEY) or {"model": lm.name, "version": 0, "next_id": 0}
    next_id = int(cur.get("next_id", 0))
    out = []
    for r in rows:
        out.append({"id": next_id, **_row(r["sae"], r["features"], r["mode"], r.get("values", []))})
        next_id += 1
    st.session_state[KEY] = {"model": lm.name, "rows": out, "origin": origin, "version": int(cur.get("version", 0)) + int(bump),
                             "next_id": next_id}


def apply_rows(lm, sae, rows: list[dict], name: str, add: bool) -> None:
    """Make ``rows`` the clamp set (``add``: append them to it) after the engine's checks (no feature twice at one hook,
    values, widths; a LabError leaves the set as it was); the origin names ``name``."""
    cur = clamp_state(lm, sae)
    if add:
        rows = engine_rows(cur["rows"]) + rows
    specs(lm, rows)
    set_rows(lm, rows, f"{cur['origin']} + {name}" if add and cur["rows"] else name)


def add_row(lm, sae, spec: str) -> None:
    """An empty row for ``spec`` (a draft: the editor's Apply refuses it until it has features)."""
    cur = clamp_state(lm, sae)
    cur["rows"] = [*cur["rows"], {"id": int(cur["next_id"]), **_row(spec, [], "set", [])}]
    cur["next_id"] = int(cur["next_id"]) + 1


def remove_row(lm, sae, row_id: int) -> None:
    cur = clamp_state(lm, sae)
    cur["rows"] = [r for r in cur["rows"] if r["id"] != row_id]
    if not cur["rows"]:
        cur["origin"] = "empty"


def add_features(lm, sae, new: list[int], values: list[float] | None, origin: str) -> None:
    """Add ``new`` to the row of ``sae`` (a new row when the set has none for it); a feature already there gets
    the new value. Refused (LabError) when the set would not load."""
    from engine.features.search import check_feature
    from engine.method.clamp import check_value

    cur = clamp_state(lm, sae)
    spec = row_spec(sae)
    rows = [dict(r) for r in cur["rows"]]
    row = next((r for r in rows if r["sae"] == spec), None)
    if row is None:
        row = _row(spec, [], "set", [])
        rows.append(row)
    feats, vals = list(row["features"]), list(row["values"])
    default_value = vals[0] if vals else 1.0
    vals = vals + [default_value] * (len(feats) - len(vals))
    for i, f in enumerate(new):
        f = check_feature(sae, f)  # the engine's range check, naming the SAE's width
        value = check_value(values[i]) if values and i < len(values) else default_value
        if int(f) in feats:
            vals[feats.index(int(f))] = value
        else:
            feats.append(int(f))
            vals.append(value)
    row.update(features=feats, values=vals)
    specs(lm, rows)  # validates the whole set
    set_rows(lm, rows, origin if not cur["rows"] else f"{cur['origin']} + {origin}")


# ------------------------------------------------------------------------------------------------ engine specs


def engine_rows(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ENGINE_KEYS} for r in rows]


def specs(lm, rows: list[dict] | None = None) -> list:
    """The set (or ``rows``) as engine ClampSpecs via ``load_clamp_set``; a LabError worded for the page names the
    row (``#0`` is the first, as in the engine's messages) when one row is at fault."""
    from engine.method.clamp_sets import load_clamp_set

    rows = clamp_state(lm, None)["rows"] if rows is None else rows
    if not rows:
        raise LabError("The clamp set is empty: add features on the Features page.")
    cache: dict = {}
    for i, r in enumerate(rows):
        where = f"row #{i} ({sae_label(r['sae'])})"
        if not r["features"]:
            raise LabError(f"{where} has no features: type some in its table or remove the row")
        try:
            cache[r["sae"]] = state.load_sae_spec(r["sae"])
            load_clamp_set(lm, engine_rows([r]), cache)
        except LabError as exc:
            raise LabError(f"{where}: {exc}") from None
    return load_clamp_set(lm, engine_rows(rows), cache)


def run_specs(lm, config: dict) -> list:
    """The ClampSpecs of a run's ``config.json`` (its SAEs through the cached loader)."""
    from engine.method.clamp_sets import check_rows, load_clamp_set, sae_spec_of

    rows = check_rows(config.get("clamps"), "the run's config.json")
    cache = {sae_spec_of(r["sae"]): state.load_sae_spec(sae_spec_of(r["sae"])) for r in rows}
    return load_clamp_set(lm, rows, cache)


def describe(rows: list[dict]) -> list[str]:
    """One line per row: ``#0 · layer 1 · 3 features · mode set``."""
    return [f"#{i} · {sae_label(r['sae'])} · {len(r['features'])} features · mode **{r['mode']}**" for i, r in enumerate(rows)]


def run_clamps_text(config: dict) -> str:
    """A run's clamp set in one line, from its ``config.json`` rows (no SAE is loaded)."""
    parts = []
    for r in config.get("clamps") or []:
        hook = r.get("hook") or spec_hook(str(r.get("sae", "")))
        layer = layer_of(hook)
        parts.append(f"{'layer ' + str(layer) if layer is not None else r.get('sae')} · {len(r.get('features') or [])} features · {r.get('mode')}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ presets


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {"clamps": data}


def _layers_text(rows: list) -> str:
    layers = sorted({layer for r in rows if isinstance(r, dict)
                     for layer in [layer_of(r.get("hook") or spec_hook(str(r.get("sae", ""))))] if layer is not None})
    return ("layers " if len(layers) > 1 else "layer ") + ", ".join(map(str, layers)) if layers else "layers unknown"


def preset_choices(lm, sae) -> dict[str, tuple[str, Path]]:
    """label → (kind, file): the searched SAE's own ``preset.json``, the shipped multi-layer presets (default
    model), then the user's presets (clamp sets for this model, and single-SAE presets for this SAE's hook)."""
    from engine.lm.models import is_default_model
    from engine.method import presets
    from engine.method.clamp_sets import SHIPPED_PRESETS

    out: dict[str, tuple[str, Path]] = {}
    own = presets.preset_path(sae)
    if own is not None:
        out[f"shipped: {own.parent.name}/preset.json (layer {sae.layer})"] = ("single", own)
    if is_default_model(lm.name) and SHIPPED_PRESETS.is_dir():
        for path in sorted(SHIPPED_PRESETS.glob("*.json")):
            out[f"shipped: {path.stem} ({_layers_text(_read(path).get('clamps') or [])})"] = ("set", path)
    for path in presets.list_presets():
        data = _read(path)
        if "clamps" in data:
            model = data.get("model")
            if model in (None, lm.name) or (is_default_model(model) and is_default_model(lm.name)):
                out[f"{path.stem} ({_layers_text(data['clamps'])})"] = ("set", path)
        elif data.get("hook") in (None, sae.hook_name):
            out[f"{path.stem} (layer {sae.layer}, this SAE)"] = ("single", path)
    return out


def preset_rows(sae, kind: str, path: Path) -> list[dict]:
    """The rows of a preset (a clamp-set file, or a single-SAE ``preset.json`` for ``sae``)."""
    from engine.method.clamp_sets import read_clamp_file
    from engine.method.presets import load_preset

    if kind == "single":
        spec = load_preset(path, sae)
        return [_row(row_spec(sae), spec.features, spec.mode, spec.values)]
    rows, _ = read_clamp_file(str(path))
    return [_row(normalize_spec(r["sae"]), r["features"], r["mode"], r["values"]) for r in rows]


def save_preset(lm, name: str) -> Path:
    """Write the set to the user's presets in the clamp-file format (``flips --clamp preset:NAME`` reads it)."""
    from engine.method import presets
    from engine.method.clamp_sets import write_clamp_file

    check_preset_name(name)
    path = presets.preset_file(name or "")
    built = specs(lm)
    return write_clamp_file(path, built, {"model": lm.name, "note": f"saved from the dashboard: {_layers_text([s.to_json() for s in built])}"})


def check_preset_name(name: str | None) -> str:
    """A preset name is a name, not a path: ``/``, ``\\`` and ``..`` are refused (never quietly cut to a file name)."""
    name = (name or "").strip()
    if any(sep in name for sep in ("/", "\\")) or name.startswith(".") or ".." in name:
        raise LabError(f"the preset name {name!r} looks like a path; use a plain name of letters, digits, - and _ "
                       "(e.g. refusal-top10-x2): presets are always saved in the lab's presets folder")
    return name


SAVE_MESSAGE = "preset_save_message"
"""Session key of the last Save preset outcome, shown under the button on the rerun."""


def save_preset_clicked(lm) -> None:
    """The Save preset button's callback: it runs before the page is drawn, so the Load list already has the new preset."""
    name = st.session_state.get("preset_name", "")
    try:
        path = save_preset(lm, name)
        st.session_state[SAVE_MESSAGE] = ("success", f"Saved {path.name} (every row); it is in the Preset list above. "
                                                     f"Command-line runs can use it as their clamp file: `{path}`.")
    except LabError as exc:
        st.session_state[SAVE_MESSAGE] = ("error", f"Not saved: {exc}")


def show_save_message() -> None:
    """The outcome of the last Save preset click, once."""
    found = st.session_state.pop(SAVE_MESSAGE, None)
    if found:
        (st.success if found[0] == "success" else st.error)(found[1])
