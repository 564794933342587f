"""Hand labels as CSV: the audit export (the judge's columns + the labels) and ``labels import|export``.

The audit CSV (:func:`export_csv`) has the judge's columns of ``flips.jsonl`` plus ``manual_audit_label`` (the
column the paper left empty, here filled), ``manual_audit_note`` and ``labeller``. The label CSV
(:func:`write_label_csv` / :func:`import_label_csv`, ``python -m engine labels export|import``) has exactly the
columns ``flip_id,label,labeller,note``; an import checks every row before it appends any.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from engine.errors import LabError
from engine.store.files import read_jsonl
from engine.store.labels import LABELS, append_events, check_flip_id, check_label, get_labels, label_event, run_dir

EXPORT_COLUMNS = [
    "id", "prompt", "base_text", "clamped_text", "base_refusal", "clamped_refusal", "valid", "clamped_degenerate",
    "base_reasons", "clamped_reasons", "manual_audit_label", "manual_audit_note", "labeller",
]
CSV_COLUMNS = ["flip_id", "label", "labeller", "note"]
"""The label CSV of ``labels import`` / ``labels export``."""




def _reasons_text(reasons: object) -> str:
    if not isinstance(reasons, list):
        return ""
    return "; ".join(f"{r.get('rule')}: {r.get('text')}" for r in reasons if isinstance(r, dict) and r.get("decides", True))


def export_rows(run: Path | str, flips: Iterable[dict]) -> list[dict]:
    """Rows of :data:`EXPORT_COLUMNS`: each flip with its judge columns, one row per labeller of the flip (one row
    with an empty label and labeller when nobody labelled it)."""
    labels = get_labels(run)
    out = []
    for f in flips:
        base = {
            "id": f["id"], "prompt": f.get("prompt", ""), "base_text": f.get("base_text", ""),
            "clamped_text": f.get("clamped_text", ""), "base_refusal": f.get("base_refusal"),
            "clamped_refusal": f.get("clamped_refusal"), "valid": f.get("valid"),
            "clamped_degenerate": f.get("clamped_degenerate"),
            "base_reasons": _reasons_text(f.get("base_reasons")), "clamped_reasons": _reasons_text(f.get("clamped_reasons")),
        }
        by = labels.get(int(f["id"]), {})
        if not by:
            out.append({**base, "manual_audit_label": "", "manual_audit_note": "", "labeller": ""})
        for who, lab in sorted(by.items()):
            out.append({**base, "manual_audit_label": lab.label, "manual_audit_note": lab.note, "labeller": who})
    return out


def export_csv(run: Path | str, flips: Iterable[dict]) -> str:
    """The CSV text of :func:`export_rows`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    writer.writerows(export_rows(run, flips))
    return buf.getvalue()


def label_rows(run: Path | str) -> list[dict]:
    """The current labels as rows of :data:`CSV_COLUMNS`, one per (flip, labeller), by flip id then labeller."""
    return [{"flip_id": fid, "label": lab.label, "labeller": who, "note": lab.note}
            for fid, by in get_labels(run).items() for who, lab in sorted(by.items())]


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def label_csv(run: Path | str) -> str:
    """The current labels as CSV text with :data:`CSV_COLUMNS` (what ``labels import`` reads)."""
    return _csv_text(label_rows(run))


def write_label_csv(run: Path | str, out: Path) -> int:
    """Write :func:`label_csv` to ``out``, which must not exist yet. Returns the number of rows."""
    rows = label_rows(run)
    text = _csv_text(rows)
    out = Path(out)
    if not out.parent.is_dir():
        raise LabError(f"folder {out.parent} does not exist")
    try:
        with open(out, "x", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except FileExistsError:
        raise LabError(f"{out} already exists; labels export never overwrites a file, pick a new name") from None
    except OSError as exc:
        raise LabError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(rows)


def flip_ids(run: Path | str) -> set[int]:
    """The ids in the run's ``flips.jsonl``."""

    path = run_dir(run) / "flips.jsonl"
    if not path.is_file():
        raise LabError(f"run directory {path.parent} has no flips.jsonl; labels belong to flips")
    ids = set()
    for rec in read_jsonl(path):
        try:
            ids.add(int(rec["id"]))
        except (KeyError, TypeError, ValueError):
            continue
    return ids


def parse_label_csv(text: str, known_ids: set[int], source: str = "CSV") -> list[dict]:
    """Check every row of a label CSV (:data:`CSV_COLUMNS`) and return its events; the first bad row raises a
    :class:`LabError` naming it (row 1 = the first row after the header)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise LabError(f"{source} is empty; expected the header {','.join(CSV_COLUMNS)}")
    header = [h.strip() if h is not None else "" for h in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise LabError(f"{source} has no column {', '.join(missing)}; expected exactly {','.join(CSV_COLUMNS)}")
    extra = [h for h in header if h not in CSV_COLUMNS]
    if extra or len(header) != len(set(header)):
        raise LabError(f"{source} has unexpected columns {', '.join(repr(h) for h in extra) or '(a repeated column)'}; "
                       f"expected exactly {','.join(CSV_COLUMNS)}")
    reader.fieldnames = header
    out: list[dict] = []
    first_row: dict[tuple[int, str], int] = {}
    for n, row in enumerate(reader, 1):
        where = f"{source} row {n} (line {reader.line_num})"
        if None in row or any(row.get(c) is None for c in CSV_COLUMNS):
            raise LabError(f"{where} has {'more' if None in row else 'fewer'} fields than the header's {len(CSV_COLUMNS)}")
        try:
            fid = check_flip_id(row["flip_id"])
            if fid not in known_ids:
                raise LabError(f"flip id {fid} is not in the run's flips.jsonl")
            label = row["label"].strip()
            if label == "":
                raise LabError(f"label is empty; choose {', '.join(LABELS)}")
            check_label(label)
            ev = label_event(fid, label, row["labeller"], row["note"])
        except LabError as exc:
            raise LabError(f"{where}: {exc}") from None
        key = (ev["flip_id"], ev["labeller"])
        if key in first_row:
            raise LabError(f"{where}: flip {fid} by labeller {ev['labeller']!r} is already labelled in row {first_row[key]}")
        first_row[key] = n
        out.append(ev)
    return out


def import_label_csv(run: Path | str, text: str, source: str = "CSV") -> int:
    """Check every row against the run's flips, then append them all (one write) or nothing. Returns the count."""
    path = run_dir(run)
    rows = parse_label_csv(text, flip_ids(path), source)
    return append_events(path, rows)


def label_dicts(run: Path | str) -> list[dict]:
    """The current labels as plain dicts (for JSON output)."""
    return [asdict(lab) for by in get_labels(run).values() for lab in by.values()]
