"""The run store: every run directory under ``data_dir()/runs`` (layout: docs/CLI.md).

List, open, compare, delete and export runs, and make a fresh run directory. The flips writer itself is
``engine.method.flips.write_flips_run``, shared by the CLI and the dashboard.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import LabError
from engine.paths import data_dir
from engine.store.files import read_json, read_json_or_none, read_jsonl
from engine.store.records import RecoveryRecord, list_records
from engine.store.trash import TrashEntry

logger = logging.getLogger(__name__)

RECORD_FILES = ("flips.jsonl", "recovery.jsonl", "attribution.jsonl")
SUMMARY_FILES = ("summary.json", "recovery_summary.json", "attribution_summary.json")
DELTA_SUFFIXES = (".safetensors", ".pt", ".npy", ".npz")
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


def runs_root() -> Path:
    root = data_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class RunInfo:
    """What the store knows about one run directory."""

    name: str
    path: Path
    created: float
    config: dict = field(default_factory=dict)
    summary: dict | None = None
    records: list[RecoveryRecord] = field(default_factory=list)
    """Its recoveries and sweeps (``RUN/recoveries/``), newest first."""

    @property
    def has_flips(self) -> bool:
        return (self.path / "flips.jsonl").is_file()

    @property
    def recoveries(self) -> list[RecoveryRecord]:
        return [r for r in self.records if r.kind == "recovery"]

    @property
    def sweeps(self) -> list[RecoveryRecord]:
        return [r for r in self.records if r.kind == "sweep"]

    def record(self, name: str | None = None, kind: str = "recovery") -> RecoveryRecord | None:
        """The record ``name``, or the newest of ``kind``; None when there is none."""
        for r in self.records:
            if r.kind == kind and (name is None or r.name == name):
                return r
        return None

    @property
    def has_recovery(self) -> bool:
        return any((r.path / "recovery.jsonl").is_file() for r in self.recoveries)

    @property
    def has_attribution(self) -> bool:
        return any(r.has_attribution for r in self.recoveries)

    @property
    def recovery_summary(self) -> dict | None:
        """The newest recovery's summary (the runs table shows it; pages pick a record)."""
        newest = self.record()
        return newest.summary if newest else None

    @property
    def attribution_summary(self) -> dict | None:
        """The attribution summary of the newest recovery that has one."""
        return next((r.attribution_summary for r in self.recoveries if r.attribution_summary), None)


def _safe_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
        raise LabError(f"{name!r} is not a run name in the store")
    return name


def run_path(name: str) -> Path:
    return runs_root() / _safe_name(name)


def get_run(name: str) -> RunInfo:
    path = run_path(name)
    if not path.is_dir():
        raise LabError(f"there is no run {name!r} in {runs_root()}")
    config = read_json_or_none(path / "config.json") or {}
    created = config.get("created") if isinstance(config.get("created"), (int, float)) else path.stat().st_mtime
    return RunInfo(name=name, path=path, created=float(created), config=config, summary=read_json_or_none(path / "summary.json"),
                   records=list_records(path))


def list_runs() -> list[RunInfo]:
    """Every run directory with a ``config.json``, newest first."""
    out = []
    for path in runs_root().iterdir():
        if path.is_dir() and (path / "config.json").is_file() and _NAME_OK.match(path.name):
            out.append(get_run(path.name))
    return sorted(out, key=lambda r: r.created, reverse=True)


def read_records(name: str, file: str, recovery: str | None = None) -> list[dict]:
    """The JSONL records ``file`` of a run (empty when the step has not run).

    ``flips.jsonl`` is the run's; ``recovery.jsonl`` and ``attribution.jsonl`` are a recovery record's (``recovery``,
    default the newest).
    """
    if file not in RECORD_FILES:
        raise LabError(f"{file!r} is not a record file ({', '.join(RECORD_FILES)})")
    if file == "flips.jsonl":
        path = run_path(name) / file
    else:
        record = get_run(name).record(recovery)
        if record is None:
            if recovery is not None:
                raise LabError(f"run {name!r} has no recovery named {recovery!r}")
            return []
        path = record.path / file
    return read_jsonl(path, torn_tail=True) if path.is_file() else []


def read_sweep(name: str, sweep: str) -> dict:
    """``sweep.json`` of the sweep record ``sweep``."""
    record = get_run(name).record(sweep, kind="sweep")
    if record is None:
        raise LabError(f"run {name!r} has no sweep named {sweep!r}")
    return read_json(record.path / "sweep.json")


def delete_recovery(name: str, recovery: str):
    """Move one recovery (or sweep) record of a run to the trash (restorable from the Runs page)."""
    from engine.store.trash import move_to_trash

    record = next((r for r in get_run(name).records if r.name == recovery), None)
    if record is None:
        raise LabError(f"run {name!r} has no recovery named {recovery!r}")
    return move_to_trash(record.path, "sweep record" if record.kind == "sweep" else "recovery record")


def new_run_dir(label: str = "flips") -> Path:
    """A fresh, empty directory ``YYYYmmdd-HHMMSS-label`` (suffixed when the second is taken)."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40] or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = runs_root()
    for n in range(1000):
        path = root / (f"{stamp}-{label}" if n == 0 else f"{stamp}-{label}-{n}")
        try:
            path.mkdir(parents=False, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise LabError("could not create a new run directory")


def delete_run(name: str) -> TrashEntry:
    """Move a run directory to the trash (``engine.store.trash``: restorable until purged); its hand labels live
    inside it, in ``labels.jsonl``, so they go and come back with it."""
    from engine.store import trash

    path = run_path(name)
    if not path.is_dir():
        raise LabError(f"there is no run {name!r}")
    return trash.move_to_trash(path, "run")


def _flatten(value: object) -> object:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def compare_runs(a: str, b: str) -> list[dict]:
    """Rows ``{field, a, b, same}`` over the settings and summaries of two runs."""
    ra, rb = get_run(a), get_run(b)

    def flat(info: RunInfo) -> dict:
        out: dict = {}
        cfg = {k: v for k, v in info.config.items() if k not in ("judge", "created")}
        for prefix, data in (("config", cfg), ("flips", info.summary), ("recovery", info.recovery_summary), ("attribution", info.attribution_summary)):
            for k, v in (data or {}).items():
                out[f"{prefix}.{k}"] = _flatten(v)
        out["config.judge"] = "custom" if info.config.get("judge") else "default"
        return out

    fa, fb = flat(ra), flat(rb)
    keys = sorted(set(fa) | set(fb), key=lambda k: (k.split(".")[0] != "config", k))
    return [{"field": k, "a": fa.get(k), "b": fb.get(k), "same": fa.get(k) == fb.get(k)} for k in keys]


def export_zip(name: str) -> bytes:
    """A zip of the run: every JSON/JSONL file, each JSONL also as CSV and parquet, δ files, hand labels CSV."""
    import pandas as pd

    from engine.store import label_csv

    info = get_run(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(info.path.rglob("*")):
            if not path.is_file() or path.name.endswith(".tmp"):
                continue
            rel = f"{name}/{path.relative_to(info.path)}"
            if path.suffix in (".json", ".txt", ".csv") or path.suffix in DELTA_SUFFIXES:
                zf.write(path, rel)
            elif path.suffix == ".jsonl" and path.name == "labels.jsonl":
                zf.write(path, rel)  # the label log; its readable form is labels.csv below
            elif path.suffix == ".jsonl":
                zf.write(path, rel)
                rows = read_jsonl(path)
                if rows:
                    frame = pd.DataFrame([{k: _flatten(v) for k, v in r.items()} for r in rows])
                    zf.writestr(rel[: -len(".jsonl")] + ".csv", frame.to_csv(index=False))
                    pq = io.BytesIO()
                    frame.to_parquet(pq, index=False)
                    zf.writestr(rel[: -len(".jsonl")] + ".parquet", pq.getvalue())
        if info.has_flips:
            zf.writestr(f"{name}/labels.csv", label_csv.export_csv(name, read_jsonl(info.path / "flips.jsonl")))
    return buf.getvalue()
