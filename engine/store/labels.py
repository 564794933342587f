"""Hand labels of flips, kept inside the run directory as an append-only log ``RUN/labels.jsonl``.

Each line is one label event ``{"flip_id", "label", "labeller", "note", "time"}``: ``label`` is ``genuine`` (the
clamped text really is a refusal that the clamp caused while the base model answered), ``not`` (it is not: the
clamped text still answers, or is not a refusal at all), ``unsure``, or ``""`` (the labeller cleared their label);
``time`` is seconds since the epoch. The current label of a (flip, labeller) is its **last** event in the file.

Why a log in the run directory: labels travel with the run (trashed and restored byte-identical, copied, zipped,
or a CLI run at any path), and nothing is ever rewritten. An event is appended with one ``write`` under an
exclusive ``fcntl.flock`` on the file, then flushed and ``fsync``-ed before the call returns, so two dashboard
sessions can label at once and killing the server (even ``kill -9``) loses nothing that was saved. A crash in
the middle of a write can leave a truncated last line: readers ignore it, and the next append starts on a fresh
line (it writes the missing newline first), so the torn line stays as one unreadable line that readers skip.

**Consensus** (:func:`consensus`): one label per flip over its labellers' current labels: the label most of them
gave; a tie between the most-given labels is ``unsure`` (two labellers saying ``genuine`` and ``not`` do not make
a flip either). A flip nobody labelled has no consensus. ``engine.store.agreement`` compares the consensus with
the judge.

**Migration**: labels used to live in one SQLite file, ``data_dir()/labels.sqlite`` (table ``labels``, keyed by
run *name*). The first time a run under ``data_dir()/runs`` is read or written here, its old rows are appended
to its ``labels.jsonl`` (labeller ``""``, their original time), fsync-ed, and only then deleted from SQLite.
A crash between the two leaves rows that the next migration recognises (same flip, label, note and time) and
does not append twice.

The CSV forms of these labels (the audit export and ``labels import|export``) are in ``engine.store.label_csv``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.paths import data_dir

logger = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("genuine", "not", "unsure")
LOG_NAME = "labels.jsonl"
DB_NAME = "labels.sqlite"
"""The old label database (read only to migrate it)."""
MAX_LABELLER = 80
MAX_NOTE = 2000


@dataclass(frozen=True)
class Label:
    """The current label of one flip by one labeller (the last event of that pair)."""

    flip_id: int
    label: str
    labeller: str
    note: str
    time: float


# ------------------------------------------------------------------------------------------------ paths


def _runs_root() -> Path:
    # engine.store.catalogue.runs_root() without importing catalogue (catalogue imports this module).
    return data_dir() / "runs"


def run_dir(run: Path | str) -> Path:
    """The run directory. A ``Path`` is used as it is; a ``str`` is a run *name* in the store (``data_dir()/runs``),
    as the Runs page and ``catalogue.export_zip`` still pass it."""
    if isinstance(run, Path):
        path = run
    else:
        if not run or "/" in run or "\\" in run or run in (".", ".."):
            raise LabError(f"{run!r} is not a run name in the store")
        path = _runs_root() / run
    if not path.is_dir():
        raise LabError(f"run directory {path} does not exist")
    return path


def log_path(run: Path | str) -> Path:
    return run_dir(run) / LOG_NAME


def db_path() -> Path:
    """The old SQLite label database (migrated from, never written to)."""
    return data_dir() / DB_NAME


# ------------------------------------------------------------------------------------------------ checks


def check_label(label: object, allow_clear: bool = False) -> str:
    if label == "" and allow_clear:
        return ""
    if label not in LABELS:
        raise LabError(f"unknown label {label!r}; choose {', '.join(LABELS)}")
    return str(label)


def check_labeller(labeller: object) -> str:
    if not isinstance(labeller, str):
        raise LabError(f"a labeller name must be text, not {type(labeller).__name__}")
    name = labeller.strip()
    if len(name) > MAX_LABELLER:
        raise LabError(f"labeller name is longer than {MAX_LABELLER} characters")
    if any(not ch.isprintable() for ch in name):
        raise LabError(f"labeller name {name!r} has control characters")
    return name


def check_flip_id(flip_id: object) -> int:
    if isinstance(flip_id, bool):
        raise LabError(f"flip id {flip_id!r} is not an integer")
    try:
        value = int(flip_id) if not isinstance(flip_id, str) else int(flip_id.strip())
    except (TypeError, ValueError):
        raise LabError(f"flip id {flip_id!r} is not an integer") from None
    if isinstance(flip_id, float) and flip_id != value:
        raise LabError(f"flip id {flip_id!r} is not an integer")
    if value < 0:
        raise LabError(f"flip id {value} is negative")
    return value


def _check_note(note: object) -> str:
    note = "" if note is None else note
    if not isinstance(note, str):
        raise LabError(f"a note must be text, not {type(note).__name__}")
    if len(note) > MAX_NOTE:
        raise LabError(f"note is longer than {MAX_NOTE} characters")
    return note


def label_event(flip_id: object, label: object, labeller: object, note: object, when: float | None = None) -> dict:
    return {"flip_id": check_flip_id(flip_id), "label": check_label(label, allow_clear=True),
            "labeller": check_labeller(labeller), "note": _check_note(note), "time": float(time.time() if when is None else when)}


# ------------------------------------------------------------------------------------------------ the log


def _parse(line: str) -> dict | None:
    """One event, or None when the line is not a well-formed event."""
    try:
        ev = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(ev, dict):
        return None
    try:
        return {"flip_id": check_flip_id(ev["flip_id"]), "label": check_label(ev["label"], allow_clear=True),
                "labeller": check_labeller(ev.get("labeller", "")), "note": _check_note(ev.get("note", "")),
                "time": float(ev.get("time", 0.0))}
    except (KeyError, LabError, TypeError, ValueError):
        return None


def _read_events(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # ``tail`` is "" when the file ends with a newline
    events = []
    for n, line in enumerate(complete, 1):
        if not line.strip():
            continue
        ev = _parse(line)
        if ev is None:
            logger.warning("%s line %d is not a label event; skipped", path, n)
            continue
        events.append(ev)
    if tail.strip():
        ev = _parse(tail)  # a last line without its newline: a write cut short; kept only if it is whole
        if ev is not None:
            events.append(ev)
    return events


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Locked:
    """The log opened for appending under an exclusive flock (released on exit)."""

    def __init__(self, run: Path):
        self.path = run / LOG_NAME
        self.run = run

    def __enter__(self) -> _Locked:
        created = not self.path.exists()
        try:
            self.fh = open(self.path, "ab")
        except OSError as exc:
            raise LabError(f"cannot write labels to {self.path}: {exc.strerror or exc}") from None
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        if created:
            _fsync_dir(self.run)
        return self

    def append(self, events: list[dict]) -> None:
        if not events:
            return
        data = "".join(json.dumps(ev, ensure_ascii=False) + "\n" for ev in events).encode("utf-8")
        size = os.fstat(self.fh.fileno()).st_size
        if size:
            with open(self.path, "rb") as rf:
                rf.seek(size - 1)
                if rf.read(1) != b"\n":
                    data = b"\n" + data  # a torn last line from a crash: start on a fresh line
        try:
            self.fh.write(data)
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:
            raise LabError(f"cannot write labels to {self.path}: {exc.strerror or exc}") from None

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        finally:
            self.fh.close()


# ------------------------------------------------------------------------------------------------ migration

_MIGRATED: set[Path] = set()
_MIGRATE_LOCK = threading.Lock()


def _old_rows(db: Path, name: str) -> list[tuple]:
    conn = sqlite3.connect(str(db), timeout=10.0)
    try:
        exists = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='labels'").fetchone()
        if not exists:
            return []
        return conn.execute("SELECT flip_id, label, note, updated FROM labels WHERE run = ? ORDER BY updated, flip_id",
                            (name,)).fetchall()
    finally:
        conn.close()


def _delete_old_rows(db: Path, name: str) -> None:
    conn = sqlite3.connect(str(db), timeout=10.0)
    try:
        with conn:
            conn.execute("DELETE FROM labels WHERE run = ?", (name,))
    finally:
        conn.close()


def _migrate(run: Path) -> None:
    """Move the old SQLite labels of a store run into its log (once; see the module docstring)."""
    key = run.resolve()
    if key in _MIGRATED:
        return
    with _MIGRATE_LOCK:
        if key in _MIGRATED:
            return
        db = db_path()
        root = _runs_root()
        if not db.is_file() or not root.is_dir() or key.parent != root.resolve():
            _MIGRATED.add(key)
            return
        try:
            rows = _old_rows(db, run.name)
            if rows:
                with _Locked(run) as log:
                    rows = _old_rows(db, run.name)  # again under the lock: another process may have migrated them
                    seen = {(e["flip_id"], e["label"], e["labeller"], e["note"], e["time"]) for e in _read_events(log.path)}
                    events = []
                    for flip_id, label, note, updated in rows:
                        try:
                            ev = label_event(flip_id, label, "", note or "", float(updated))
                        except (LabError, TypeError, ValueError):
                            logger.warning("old label of %s flip %r is not valid (%r); not migrated", run.name, flip_id, label)
                            continue
                        if (ev["flip_id"], ev["label"], ev["labeller"], ev["note"], ev["time"]) not in seen:
                            events.append(ev)
                    log.append(events)  # fsync-ed before the rows go
                    _delete_old_rows(db, run.name)
                logger.info("migrated %d old labels of %s into %s", len(events), run.name, LOG_NAME)
        except sqlite3.DatabaseError as exc:
            raise LabError(f"the old label database {db} cannot be read: {exc}") from None
        _MIGRATED.add(key)


# ------------------------------------------------------------------------------------------------ the API


def events(run: Path | str) -> list[dict]:
    """Every well-formed event of the run's log, in file order (after migrating old labels)."""
    path = run_dir(run)
    _migrate(path)
    return _read_events(path / LOG_NAME)


def append_events(run: Path | str, new: Iterable[dict]) -> int:
    """Append checked events (dicts with ``flip_id``, ``label``, ``labeller``, ``note`` and optional ``time``) in one
    locked, fsync-ed write; nothing is appended when any is invalid. Returns how many were appended."""
    path = run_dir(run)
    checked = [label_event(e.get("flip_id"), e.get("label"), e.get("labeller", ""), e.get("note", ""), e.get("time")) for e in new]
    _migrate(path)
    with _Locked(path) as log:
        log.append(checked)
    return len(checked)


def set_label(run: Path | str, flip_id: int, label: str, note: str = "", labeller: str = "") -> Label:
    """Label one flip for ``labeller`` (replacing their earlier label); on disk before returning."""
    check_label(label)
    ev = label_event(flip_id, label, labeller, note)
    append_events(run, [ev])
    return Label(**ev)


def clear_label(run: Path | str, flip_id: int, labeller: str = "") -> None:
    """Clear ``labeller``'s label of one flip (an event with label ``""``)."""
    append_events(run, [label_event(flip_id, "", labeller, "")])


def get_labels(run: Path | str) -> dict[int, dict[str, Label]]:
    """The current labels: flip id → labeller → :class:`Label` (cleared labels left out)."""
    current: dict[tuple[int, str], dict] = {}
    for ev in events(run):
        current[(ev["flip_id"], ev["labeller"])] = ev
    out: dict[int, dict[str, Label]] = {}
    for (fid, who), ev in sorted(current.items()):
        if ev["label"]:
            out.setdefault(fid, {})[who] = Label(**ev)
    return out


def labels_of(run: Path | str, labeller: str) -> dict[int, Label]:
    """One labeller's current labels, by flip id."""
    who = check_labeller(labeller)
    return {fid: by[who] for fid, by in get_labels(run).items() if who in by}


def labellers(run: Path | str) -> list[str]:
    return sorted({who for by in get_labels(run).values() for who in by})


def consensus_of(votes: Iterable[str]) -> str | None:
    """The majority label of one flip's votes; a tie between the most-given labels → ``unsure``; no votes → None."""
    counts = Counter(v for v in votes if v)
    if not counts:
        return None
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return "unsure"
    return ranked[0][0]


def consensus(run: Path | str) -> dict[int, str]:
    """One label per labelled flip over its labellers: the majority label, a tie → ``unsure``."""
    out = {}
    for fid, by in get_labels(run).items():
        c = consensus_of(lab.label for lab in by.values())
        if c is not None:
            out[fid] = c
    return out


def label_counts(run: Path | str, labeller: str | None = None) -> dict[str, int]:
    """How many flips have each consensus label (or each label of ``labeller`` when given)."""
    counts = dict.fromkeys(LABELS, 0)
    if labeller is None:
        for lab in consensus(run).values():
            counts[lab] += 1
    else:
        for lab in labels_of(run, labeller).values():
            counts[lab.label] += 1
    return counts
