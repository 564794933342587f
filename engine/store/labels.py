"""Hand labels of flips, kept in one SQLite file (WAL) in the data directory.

Each label is ``genuine`` (the clamped text really is a refusal caused by the clamp), ``not`` (the judge was
wrong, e.g. an apology that still answers) or ``unsure``, with a free-text note. A label is committed the
moment it is set, so killing the server (even ``kill -9``) loses nothing that was saved.

The CSV export has the judge's columns of ``flips.jsonl`` plus ``manual_audit_label`` (the column the paper
left empty, here filled) and ``manual_audit_note``.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.paths import data_dir

LABELS: tuple[str, ...] = ("genuine", "not", "unsure")
DB_NAME = "labels.sqlite"

EXPORT_COLUMNS = [
    "id", "prompt", "base_text", "clamped_text", "base_refusal", "clamped_refusal", "valid", "clamped_degenerate",
    "base_reasons", "clamped_reasons", "manual_audit_label", "manual_audit_note",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    run TEXT NOT NULL,
    flip_id INTEGER NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('genuine', 'not', 'unsure')),
    note TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL,
    PRIMARY KEY (run, flip_id)
)
"""


@dataclass
class Label:
    run: str
    flip_id: int
    label: str
    note: str
    prompt: str
    updated: float


def db_path() -> Path:
    return data_dir() / DB_NAME


_INIT_LOCK = threading.Lock()


def _connect(path: Path | None = None) -> sqlite3.Connection:
    """A fresh connection (SQLite connections are per thread; Streamlit runs each session in its own thread)."""
    path = path or db_path()
    try:
        conn = sqlite3.connect(str(path), timeout=10.0)
        with _INIT_LOCK:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            conn.commit()
    except sqlite3.DatabaseError as exc:
        raise LabError(f"the label database {path} cannot be opened: {exc}") from None
    return conn


def _row(r: tuple) -> Label:
    return Label(run=r[0], flip_id=int(r[1]), label=r[2], note=r[3], prompt=r[4], updated=float(r[5]))


def set_label(run: str, flip_id: int, label: str, note: str = "", prompt: str = "", path: Path | None = None) -> Label:
    """Store (or replace) the label of one flip; committed before returning."""
    if label not in LABELS:
        raise LabError(f"unknown label {label!r}; choose {', '.join(LABELS)}")
    if not run:
        raise LabError("a label needs a run name")
    row = (run, int(flip_id), label, note or "", prompt or "", time.time())
    conn = _connect(path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO labels (run, flip_id, label, note, prompt, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run, flip_id) DO UPDATE SET label=excluded.label, note=excluded.note, "
                "prompt=excluded.prompt, updated=excluded.updated",
                row,
            )
    finally:
        conn.close()
    return _row(row)


def clear_label(run: str, flip_id: int, path: Path | None = None) -> None:
    conn = _connect(path)
    try:
        with conn:
            conn.execute("DELETE FROM labels WHERE run = ? AND flip_id = ?", (run, int(flip_id)))
    finally:
        conn.close()


def get_labels(run: str, path: Path | None = None) -> dict[int, Label]:
    """Every label of ``run``, by flip id."""
    conn = _connect(path)
    try:
        rows = conn.execute("SELECT run, flip_id, label, note, prompt, updated FROM labels WHERE run = ?", (run,)).fetchall()
    finally:
        conn.close()
    return {int(r[1]): _row(r) for r in rows}


def delete_run_labels(run: str, path: Path | None = None) -> int:
    conn = _connect(path)
    try:
        with conn:
            cur = conn.execute("DELETE FROM labels WHERE run = ?", (run,))
    finally:
        conn.close()
    return cur.rowcount


def label_counts(run: str, path: Path | None = None) -> dict[str, int]:
    counts = dict.fromkeys(LABELS, 0)
    for lab in get_labels(run, path).values():
        counts[lab.label] += 1
    return counts


def _reasons_text(reasons: object) -> str:
    if not isinstance(reasons, list):
        return ""
    return "; ".join(f"{r.get('rule')}: {r.get('text')}" for r in reasons if isinstance(r, dict) and r.get("decides", True))


def export_rows(run: str, flips: Iterable[dict], path: Path | None = None) -> list[dict]:
    """Rows of :data:`EXPORT_COLUMNS`: each flip with its judge columns and its hand label (empty if none)."""
    labels = get_labels(run, path)
    out = []
    for f in flips:
        lab = labels.get(int(f["id"]))
        out.append({
            "id": f["id"], "prompt": f.get("prompt", ""), "base_text": f.get("base_text", ""),
            "clamped_text": f.get("clamped_text", ""), "base_refusal": f.get("base_refusal"),
            "clamped_refusal": f.get("clamped_refusal"), "valid": f.get("valid"),
            "clamped_degenerate": f.get("clamped_degenerate"),
            "base_reasons": _reasons_text(f.get("base_reasons")), "clamped_reasons": _reasons_text(f.get("clamped_reasons")),
            "manual_audit_label": lab.label if lab else "", "manual_audit_note": lab.note if lab else "",
        })
    return out


def export_csv(run: str, flips: Iterable[dict], path: Path | None = None) -> str:
    """The CSV text of :func:`export_rows`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(export_rows(run, flips, path))
    return buf.getvalue()
