"""Run directories: ``config.json``, JSONL records and summaries (docs/CLI.md)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from engine.errors import LabError

logger = logging.getLogger(__name__)


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


def read_json_or_none(path: Path) -> dict | None:
    """``path``'s JSON, or None when it is missing or unreadable (logged): for listings that must not fail on one file."""
    if not Path(path).is_file():
        return None
    try:
        return read_json(path)
    except LabError as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LabError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise LabError(f"{path} is not valid JSON: {exc.msg}") from None


class JsonlWriter:
    """Append records one line at a time (flushed and fsynced), so a stopped or killed run keeps what it finished.

    ``append``: continue an existing file (resume); otherwise the file must not exist yet, so no earlier record is lost.
    """

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        try:
            self._fh = path.open("a" if append else "x", encoding="utf-8")
        except FileExistsError:
            raise LabError(f"{path} already exists; resume that run or write a new one") from None

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: Path, torn_tail: bool = False) -> list[dict]:
    """The records of a JSONL file. ``torn_tail``: drop an unterminated last line (a write cut short by a kill)."""
    rows = []
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    last = len(lines) - 1  # after the final newline: "" when the file ends cleanly
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if torn_tail and n == last:
                logger.warning("%s: dropping a torn last line (the writer was stopped mid-line)", path)
                break
            raise LabError(f"{path} line {n + 1} is not valid JSON") from None
    return rows


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Write a whole JSONL file atomically (a temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def whole_batches(done: list[dict], ids: list[int], batch_size: int) -> int:
    """How many of ``done`` a resume keeps: the longest prefix matching ``ids`` in order, cut to whole batches.

    A batch is written record by record after it finishes, so a kill can leave part of one; redoing that batch
    whole keeps batches (and so padding and results) the same as in an uninterrupted run.
    """
    k = 0
    while k < len(done) and k < len(ids) and int(done[k].get("id", -1)) == ids[k]:
        k += 1
    return k if k == len(ids) else k - k % batch_size


def resume_records(path: Path, ids: list[int], batch_size: int) -> list[dict]:
    """The records of ``path`` a resume keeps (:func:`whole_batches`); the file is cut back to them atomically."""
    if not path.is_file():
        return []
    done = read_jsonl(path, torn_tail=True)
    keep = done[: whole_batches(done, ids, batch_size)]
    if len(keep) != len(done) or path.read_bytes()[-1:] not in (b"", b"\n"):
        logger.info("%s: keeping %d of %d records (whole batches); the rest is redone", path, len(keep), len(done))
        write_jsonl(path, keep)
    return keep
