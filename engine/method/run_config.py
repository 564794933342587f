"""Ready run configurations (``configs/*.json``): model, SAEs, clamp, generation and recovery settings in one file.

A configuration fills the options of ``flips`` and ``recover`` (flags given on the command line win) and the
dashboard's forms, and lists the files that must be in the Hugging Face cache, so an offline machine knows in seconds
what to download. Every key is checked: an unknown key or a value of the wrong type is a :class:`LabError` naming
the key (``recovery.steps``, ``clamp.mode``). docs/PAPER_CONFIG.md describes the file and the paper's one.
"""

from __future__ import annotations

import json
import logging
import math
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.errors import FieldError, LabError
from engine.method.clamp import check_mode

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
"""Where the shipped configurations live (the dashboard lists this folder)."""


@dataclass
class ClampSettings:
    """Which clamp file to apply and how (mode and value override every row of the file)."""

    file: str | None = None
    """Clamp file (rows {sae, features, mode, values}) or ``preset:NAME``; a relative path is read beside the config.
    None: built by ``feature_search`` first."""
    mode: str | None = None
    """``set``, ``multiply`` or ``zero`` for every row (None: each row's own)."""
    value: float | None = None
    """The value (set) or factor (multiply) for every feature of every row (None: each row's own)."""


@dataclass
class SaeSettings:
    """The SAE family the clamp rows and the feature search use."""

    release: str | None = None
    """sae_lens registry release (e.g. ``gemma-scope-2b-pt-res-canonical``)."""
    id_template: str | None = None
    """SAE id in the release with ``{layer}`` (e.g. ``layer_{layer}/width_65k/canonical``)."""
    hook_template: str | None = None
    """Hook each SAE reads, with ``{layer}`` (e.g. ``blocks.{layer}.hook_resid_post``)."""

    def spec(self, layer: int) -> str:
        """The ``--sae`` spec of the SAE at ``layer``."""
        if not self.release or not self.id_template:
            raise LabError("the configuration's sae needs a release and an id_template to name an SAE")
        return f"{self.release}/{self.id_template.format(layer=layer)}"


@dataclass
class GenerationSettings:
    """How flips decodes (engine.method.generation.GenerationConfig)."""

    max_new_tokens: int = 64
    """Answer length in tokens."""
    batch_size: int = 8
    """Prompts per forward pass."""
    greedy: bool = True
    """Greedy decoding (the lab's flips always decode greedily)."""
    seed: int = 0
    """Seed of the run."""


@dataclass
class RunConfig:
    """A ready configuration: everything ``flips`` and ``recover`` need, and what must be downloaded first."""

    name: str
    """Short name (the file's stem by convention)."""
    model: str
    """Model name for ``--model`` (a TransformerLens official name, a local folder, ``default`` or ``tiny``)."""
    description: str = ""
    """One paragraph: what this configuration reproduces."""
    dtype: str | None = None
    """Number format for ``--dtype`` (auto, float32, bfloat16, float16); None: the command's default."""
    device: str | None = None
    """Device for ``--device``; None: the command's default (auto)."""
    prompts: str | None = None
    """Prompt source for ``--prompts``; None: it must be given on the command line."""
    sae: SaeSettings = field(default_factory=SaeSettings)
    """The SAE family (registry release, id and hook templates)."""
    clamp: ClampSettings = field(default_factory=ClampSettings)
    """The clamp file and the mode/value applied to all its rows."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """flips' decoding settings."""
    recovery: dict = field(default_factory=dict)
    """RecoveryConfig fields (engine/recovery/config.py) for ``recover``; checked by RecoveryConfig itself."""
    feature_search: dict = field(default_factory=dict)
    """How the clamp file is built (``python -m engine features direction`` settings and ``command``)."""
    downloads: list[str] = field(default_factory=list)
    """``REPO/FILE`` entries flips and recover need in the HF cache besides the clamp rows' SAEs (derived)."""
    search_downloads: list[str] = field(default_factory=list)
    """``REPO/FILE`` entries the feature search needs in addition (the SAEs of every searched layer)."""
    notes: list[str] = field(default_factory=list)
    """Where the lab's settings differ from the source's, in words."""
    path: Path | None = field(default=None, compare=False)
    """The file this was read from (relative clamp files are read beside it); not saved."""

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data

    def recovery_config(self):
        """The :class:`~engine.recovery.config.RecoveryConfig` of ``recovery`` (defaults for the keys it lacks)."""
        from engine.recovery.config import RecoveryConfig

        try:
            return RecoveryConfig(**self.recovery)
        except FieldError as exc:
            raise LabError(f"{self._where()}recovery.{exc.field}: {exc}") from None

    def clamp_path(self) -> str | None:
        """The clamp file as a path (relative ones beside the config) or ``preset:NAME``; None when not built yet."""
        file = self.clamp.file
        if file is None or file.startswith("preset:") or Path(file).is_absolute() or self.path is None:
            return file
        return str(self.path.parent / file)

    def clamp_rows(self, rows: list[dict]) -> list[dict]:
        """``rows`` with the configuration's mode and value applied to every row (each feature gets the value)."""
        out = []
        for row in rows:
            row = dict(row)
            if self.clamp.mode is not None:
                row["mode"] = self.clamp.mode
            if self.clamp.value is not None:
                row["values"] = [self.clamp.value] * len(row["features"])
            out.append(row)
        return out

    def _where(self) -> str:
        return f"{self.path}: " if self.path else ""


_SECTIONS = {"sae": SaeSettings, "clamp": ClampSettings, "generation": GenerationSettings}


def read_run_config(path: str | Path) -> RunConfig:
    """Read and check a configuration file; every problem names its key."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"configuration {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabError(f"configuration {path} is not valid JSON: {exc}") from None
    return parse_run_config(data, path)


def parse_run_config(data: object, path: Path | None = None) -> RunConfig:
    """A :class:`RunConfig` from parsed JSON, checked key by key."""
    where = f"{path}: " if path else ""
    if not isinstance(data, dict):
        raise LabError(f"{where}a configuration is a JSON object")
    known = {f.name for f in fields(RunConfig)} - {"path"}
    values = _check_keys(data, known, RunConfig, where, "")
    for name, cls in _SECTIONS.items():
        if name in values:
            section = values[name]
            if not isinstance(section, dict):
                raise LabError(f"{where}{name} must be an object")
            values[name] = cls(**_check_keys(section, {f.name for f in fields(cls)}, cls, where, f"{name}."))
    for req in ("name", "model"):
        if req not in values:
            raise LabError(f"{where}the configuration needs {req!r}")
    cfg = RunConfig(**values, path=path)
    if cfg.clamp.mode is not None:
        try:
            check_mode(cfg.clamp.mode)
        except LabError as exc:
            raise LabError(f"{where}clamp.mode: {exc}") from None
    if cfg.clamp.value is not None and not math.isfinite(cfg.clamp.value):
        raise LabError(f"{where}clamp.value must be a finite number")
    if not cfg.generation.greedy:
        raise LabError(f"{where}generation.greedy: the lab's flips decode greedily; sampling is not a flips setting")
    for key in ("max_new_tokens", "batch_size"):
        if getattr(cfg.generation, key) < 1:
            raise LabError(f"{where}generation.{key} must be at least 1, got {getattr(cfg.generation, key)}")
    from engine.recovery.config import RecoveryConfig

    unknown = sorted(set(cfg.recovery) - set(RecoveryConfig.__dataclass_fields__) - {"extra"})
    if unknown:
        raise LabError(f"{where}unknown key recovery.{unknown[0]} (RecoveryConfig fields: docs/RECOVERY.md)")
    cfg.recovery_config()  # every value checked now, not when recover starts
    for key in ("downloads", "search_downloads"):
        for entry in getattr(cfg, key):
            if entry.count("/") < 2:
                raise LabError(f"{where}{key}: {entry!r} is not REPO_OWNER/REPO_NAME/FILE")
    return cfg


_TYPES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "an object", list: "a list"}


def _check_keys(data: dict, known: set[str], cls: type, where: str, prefix: str) -> dict:
    """``data`` with every key known to ``cls`` and every value of its field's type; else a LabError naming the key."""
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in known:
            raise LabError(f"{where}unknown key {prefix}{key} (known: {', '.join(sorted(known))})")
        if not prefix and key in _SECTIONS:
            continue  # an object, checked key by key by the caller
        tp = hints[key]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        if union and value is None and type(None) in typing.get_args(tp):
            continue
        allowed = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        origin = [typing.get_origin(a) or a for a in allowed]
        ok = any(_is(value, o) for o in origin)
        if not ok:
            words = " or ".join(_TYPES.get(o, getattr(o, "__name__", str(o))) for o in origin)
            raise LabError(f"{where}{prefix}{key} must be {words}, got {value!r}")
        if list in origin and not all(isinstance(v, str) for v in value):
            raise LabError(f"{where}{prefix}{key} must be a list of strings")
    return dict(data)


def _is(value, tp) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is Path:
        return isinstance(value, str)
    return isinstance(value, tp)


_OWN = object()


def missing_downloads(cfg: RunConfig, rows: list[dict] | None, search: bool = False, model_files: bool = True,
                      clamp_file: str | None | object = _OWN, need_clamp: bool = True) -> list[str]:
    """What is not in the local Hugging Face cache, never touching the network: the ``downloads`` (unless not
    ``model_files``: another model was chosen), the ``search_downloads`` with ``search``, the registry SAEs of the
    clamp ``rows``, and (``need_clamp``) the clamp file (default: the configuration's) when it is not built yet."""
    from engine.lm.hub import cached_file
    from engine.lm.sae_registry import missing_downloads as missing_sae
    from engine.lm.sae_registry import resolve
    from engine.method.clamp_sets import sae_spec_of

    wanted = (list(cfg.downloads) if model_files else []) + (list(cfg.search_downloads) if search else [])
    missing = []
    for entry in wanted:
        owner, name, file = entry.split("/", 2)
        if cached_file(f"{owner}/{name}", file) is None:
            missing.append(entry)
    for row in rows or []:
        spec = sae_spec_of(row["sae"])
        if "/" in spec and not Path(spec).exists() and not spec.startswith("npz:"):
            try:
                ref = resolve(spec)
            except LabError:
                continue  # not a registry SAE; the loader says what is wrong with it
            missing.extend(m for m in missing_sae(ref) if m not in missing)
    clamp = cfg.clamp_path() if clamp_file is _OWN else clamp_file
    if need_clamp and not search and (clamp is None or (not str(clamp).startswith("preset:") and not Path(str(clamp)).is_file())):
        command = cfg.feature_search.get("command", "python -m engine features direction … --out FILE")
        missing.append(f"clamp file {clamp or '(none named)'}: build it with `{command}`")
    return missing


def config_files(folder: Path | None = None) -> list[Path]:
    """The configuration files in ``folder`` (default :data:`CONFIG_DIR`; the dashboard's list), by name; clamp files
    (``*.clamp.json``) left out."""
    folder = CONFIG_DIR if folder is None else folder
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(".clamp.json")) if folder.is_dir() else []
