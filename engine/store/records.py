"""Recovery records: every recovery of a flips run kept in its own folder, ``RUN/recoveries/<name>/``.

A record holds ``recovery_config.json`` (the settings, the valid-set choice and the flip ids it covers),
``recovery.jsonl``, ``recovery_summary.json``, ``deltas/`` and, later, its own ``attribution.jsonl`` and
``attribution_summary.json``. A sweep is a record of kind ``sweep``: ``sweep.json`` plus one ``budget_<B>/`` folder per
budget, each a full recovery file set. Starting a recovery creates a new folder and never touches an earlier one.

Runs written before records existed kept one recovery at the top of the run folder; :func:`migrate_flat_layout` moves
those files into ``recoveries/legacy-…/`` the first time the run is read (every move is a rename, so a crash half-way
is finished by the next read).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import LabError
from engine.store.files import read_json_or_none, write_json

logger = logging.getLogger(__name__)

RECORDS_DIR = "recoveries"
CONFIG_FILE = "recovery_config.json"
RecordKind = Literal["recovery", "sweep"]
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")

_FLAT_RECOVERY = ("recovery.jsonl", "recovery_summary.json", "deltas", "attribution.jsonl", "attribution_summary.json",
                  "recovery_config.json")
"""What the flat layout kept at the top of a run for its one recovery. The config moves last: the record's name is
read from it, so a migration stopped half-way resumes into the same folder."""
_FLAT_SWEEP = ("sweep", "sweep.json")


@dataclass
class RecoveryRecord:
    """One recovery (or sweep) of a flips run."""

    name: str
    path: Path
    kind: RecordKind
    config: dict
    """``recovery_config.json``: the recovery settings, ``valid``, ``limit``, ``flip_ids``, ``created``."""
    summary: dict | None
    """``recovery_summary.json`` (``sweep.json`` for a sweep); None while the first batch runs or after a crash."""
    attribution_summary: dict | None
    created: float

    @property
    def complete(self) -> bool:
        """Finished: a summary that covers every flip the record was started for."""
        if self.summary is None:
            return False
        if self.kind == "sweep":
            return len(self.summary.get("points", [])) == len(self.config.get("budgets", [])) > 0
        return not self.summary.get("cancelled") and self.summary.get("n_valid") == len(self.config.get("flip_ids", []))

    @property
    def status(self) -> str:
        """``complete``, ``interrupted`` (resumable) or ``empty`` (nothing finished yet)."""
        if self.complete:
            return "complete"
        done = (self.path / "recovery.jsonl").is_file() and (self.path / "recovery.jsonl").stat().st_size > 0
        return "interrupted" if done or self.summary is not None or self.kind == "sweep" else "empty"

    @property
    def n_finished(self) -> int:
        """Prompts finished (a recovery: rows of ``recovery.jsonl``, which an interrupted record has before its summary)
        or budgets finished (a sweep: points of ``sweep.json``)."""
        if self.kind == "sweep":
            return len((self.summary or {}).get("points", []))
        path = self.path / "recovery.jsonl"
        if not path.is_file():
            return 0
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    @property
    def has_attribution(self) -> bool:
        return (self.path / "attribution.jsonl").is_file()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
        raise LabError(f"{name!r} is not a usable recovery name (letters, digits, '.', '_' and '-'; no '/')")
    return name


def generated_name(kind: RecordKind, projection: str, budget: float | None, when: float | None = None) -> str:
    """``<projection>-b<budget>-<YYYYmmdd-HHMMSS>`` (sweeps: ``sweep-<projection>-<time>``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when or time.time()))
    if kind == "sweep":
        return f"sweep-{projection}-{stamp}"
    return f"{projection}-b{budget:g}-{stamp}"


def records_root(run: Path) -> Path:
    return Path(run) / RECORDS_DIR


def read_record(path: Path) -> RecoveryRecord:
    config = read_json_or_none(path / CONFIG_FILE) or {}
    kind: RecordKind = "sweep" if config.get("kind") == "sweep" else "recovery"
    summary = read_json_or_none(path / ("sweep.json" if kind == "sweep" else "recovery_summary.json"))
    created = config.get("created")
    return RecoveryRecord(
        name=path.name, path=path, kind=kind, config=config, summary=summary,
        attribution_summary=read_json_or_none(path / "attribution_summary.json"),
        created=float(created) if isinstance(created, (int, float)) else path.stat().st_mtime,
    )


def list_records(run: Path) -> list[RecoveryRecord]:
    """Every record of ``run``, newest first (migrating a flat-layout run first)."""
    migrate_flat_layout(run)
    root = records_root(run)
    if not root.is_dir():
        return []
    out = [read_record(p) for p in root.iterdir() if p.is_dir() and _NAME_OK.match(p.name) and (p / CONFIG_FILE).is_file()]
    return sorted(out, key=lambda r: (r.created, r.name), reverse=True)


def get_record(run: Path, name: str | None = None, kind: RecordKind | None = "recovery") -> RecoveryRecord:
    """The record ``name`` of ``run``; with no name, the newest one of ``kind``."""
    records = [r for r in list_records(run) if kind is None or r.kind == kind]
    if name is None:
        if not records:
            raise LabError(f"run {run} has no {kind or 'recovery'} yet; run `recover` on it first")
        return records[0]
    check_name(name)
    for r in records:
        if r.name == name:
            return r
    known = ", ".join(r.name for r in records[:8]) or "none"
    raise LabError(f"run {run} has no {kind or 'record'} named {name!r} (it has: {known})")


def create_record(run: Path, name: str | None, kind: RecordKind, config: dict) -> Path:
    """A new, empty record folder holding ``config``; an existing name is refused (nothing is overwritten)."""
    migrate_flat_layout(run)
    created = time.time()
    if name is None:
        name = generated_name(kind, str(config.get("projection", "none")), config.get("budget"), created)
        base, n = name, 1
        while (records_root(run) / name).exists():
            name, n = f"{base}-{n}", n + 1
    check_name(name)
    path = records_root(run) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise LabError(f"run {run} already has a recovery named {name!r}; resume it or choose another name") from None
    write_json(path / CONFIG_FILE, {**config, "kind": kind, "name": name, "created": created})
    return path


def start_or_resume(run: Path, name: str | None, kind: RecordKind, settings: dict, resume: bool,
                    added: dict | None = None, unused: Collection[str] = ()) -> Path:
    """The folder of a new record holding ``settings``, or (``resume``) of record ``name`` (default the newest of
    ``kind``) after checking it was started with the same settings. ``added``: settings introduced after some records
    were written, each with the value that reproduces a record saved without it. ``unused``: settings the method does
    not read under these settings, which may differ."""
    if not resume:
        return create_record(run, name, kind, settings)
    record = get_record(run, name, kind)
    check_resume({**(added or {}), **record.config}, settings, f"{kind} {record.name!r}", unused)
    return record.path


RESUME_IGNORED = frozenset({"created", "name", "kind", "device"})
"""Settings that may differ between the first start and a resume."""


def check_resume(saved: dict, wanted: dict, what: str, unused: Collection[str] = ()) -> None:
    """Refuse to resume with other settings than the record was started with, naming each setting that differs
    (``unused``: settings that may differ because the method does not read them)."""
    skip = RESUME_IGNORED | set(unused)
    diffs = [k for k in sorted(set(saved) | set(wanted)) if k not in skip and saved.get(k) != wanted.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in diffs[:6])
        raise LabError(f"cannot resume {what} with different settings ({detail}); resume with the same settings "
                       "or start a new one")


def migrate_flat_layout(run: Path) -> list[Path]:
    """Move a flat-layout recovery (and sweep) into ``recoveries/``; returns the record folders it filled."""
    run = Path(run)
    moved: list[Path] = []
    for names, kind in ((_FLAT_RECOVERY, "recovery"), (_FLAT_SWEEP, "sweep")):
        present = [n for n in names if (run / n).exists()]
        if not present:
            continue
        target = records_root(run) / _legacy_name(run, kind)
        target.mkdir(parents=True, exist_ok=True)
        for n in present:
            if (target / n).exists():
                raise LabError(f"cannot migrate {run / n}: {target / n} exists too; move one of them by hand")
            os.rename(run / n, target / n)
        if kind == "sweep":
            _fill_sweep_config(run, target)
        else:
            _fill_recovery_config(run, target)
        logger.info("migrated the flat-layout %s of %s into %s", kind, run, target)
        moved.append(target)
    return moved


def _legacy_name(run: Path, kind: str) -> str:
    """A stable name, so a migration interrupted half-way continues into the same folder."""
    if kind == "sweep":
        cfg = read_json_or_none(run / "sweep.json") or {}  # moved last, as the recovery config
        return f"legacy-sweep-{cfg.get('projection', 'unknown')}"
    cfg = read_json_or_none(run / CONFIG_FILE) or {}
    if "projection" in cfg and "budget" in cfg:
        return f"legacy-{cfg['projection']}-b{float(cfg['budget']):g}"
    return "legacy"


def _fill_recovery_config(run: Path, target: Path) -> None:
    """Give a migrated record the fields records have: kind, name, the flip ids of its records, valid = judge."""
    from engine.store.files import read_jsonl

    cfg = read_json_or_none(target / CONFIG_FILE) or {}
    records = read_jsonl(target / "recovery.jsonl") if (target / "recovery.jsonl").is_file() else []
    cfg.setdefault("flip_ids", [int(r["id"]) for r in records])
    cfg.setdefault("valid", "judge")
    cfg.setdefault("limit", None)
    cfg.update(kind="recovery", name=target.name, migrated=True)
    cfg.setdefault("created", (target / "recovery.jsonl").stat().st_mtime if records else time.time())
    write_json(target / CONFIG_FILE, cfg)


def _fill_sweep_config(run: Path, target: Path) -> None:
    sweep = read_json_or_none(target / "sweep.json") or {}
    old = target / "sweep"
    if old.is_dir():  # the flat layout nested the budgets one level deeper
        for p in old.iterdir():
            if not (target / p.name).exists():
                os.rename(p, target / p.name)
        if not any(old.iterdir()):
            old.rmdir()
    cfg = {"kind": "sweep", "name": target.name, "budgets": sweep.get("budgets", []), "projection": sweep.get("projection"),
           "valid": "judge", "migrated": True, "created": (target / "sweep.json").stat().st_mtime if sweep else time.time()}
    write_json(target / CONFIG_FILE, cfg)
