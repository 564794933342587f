"""Run directories: ``config.json``, JSONL records and summaries (docs/CLI.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from engine.errors import LabError


def prepare_run_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that it is writable, before any expensive work starts."""
    run = Path(path)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise LabError(f"output directory {run} is not writable: {exc.strerror or exc}") from None
    return run


def existing_run(path: str | Path, needs: str = "flips.jsonl") -> Path:
    run = Path(path)
    if not run.is_dir():
        raise LabError(f"run directory {run} does not exist")
    if not (run / needs).is_file():
        raise LabError(f"run directory {run} has no {needs}; run the step that writes it first")
    return run


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically (write a temporary file, then rename), so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LabError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise LabError(f"{path} is not valid JSON: {exc.msg}") from None


class JsonlWriter:
    """Append records one line at a time (flushed), so a stopped run keeps what it finished."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = path.open("w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LabError(f"{path} line {n} is not valid JSON") from None
    return rows


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with JsonlWriter(path) as w:
        for r in records:
            w.write(r)
