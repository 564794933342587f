"""Prompt sources: ``builtin:harmless``, ``builtin:harmful``, a JSON list, JSONL, or CSV.

JSON/JSONL rows are strings or objects with ``instruction``, ``prompt`` or ``goal``; CSV needs one of those
columns. Every problem is a :class:`LabError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from engine.errors import LabError
from engine.method.builtin_prompts import HARMFUL, HARMLESS

BUILTIN = {"builtin:harmless": HARMLESS, "builtin:harmful": HARMFUL}
PROMPT_KEYS = ("instruction", "prompt", "goal")
MAX_PROMPT_BYTES = 20_000_000
"""Prompt files larger than this are refused (a UI upload limit too)."""


def load_prompts(source: str, limit: int | None = None) -> list[str]:
    """Instructions from ``source`` (see module docstring), the first ``limit`` of them."""
    if limit is not None and limit < 1:
        raise LabError(f"--limit must be a positive number of prompts, got {limit}")
    if source in BUILTIN:
        prompts = list(BUILTIN[source])
    elif source.startswith("builtin:"):
        raise LabError(f"unknown built-in prompt set {source!r}; choose {' or '.join(BUILTIN)}")
    else:
        path = Path(source)
        if not path.is_file():
            raise LabError(f"prompt file {source} does not exist")
        if path.stat().st_size > MAX_PROMPT_BYTES:
            raise LabError(f"prompt file {source} is larger than {MAX_PROMPT_BYTES // 1_000_000} MB")
        prompts = parse_prompts(path.read_bytes(), path.name)
    return prompts[:limit] if limit else prompts


def parse_prompts(data: bytes, name: str) -> list[str]:
    """Parse prompt-file bytes; ``name``'s suffix chooses the format (.csv, .jsonl, else JSON)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabError(f"{name} is not UTF-8 text") from None
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        prompts = _from_csv(text, name)
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise LabError(f"{name} line {n} is not valid JSON: {exc.msg}") from None
        prompts = [_from_row(r, name, i) for i, r in enumerate(rows)]
    else:
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(rows, list):
            raise LabError(f"{name} must hold a JSON list of prompts")
        prompts = [_from_row(r, name, i) for i, r in enumerate(rows)]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise LabError(f"{name} contains no prompts")
    return prompts


def _from_row(row: object, name: str, index: int) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in PROMPT_KEYS:
            if isinstance(row.get(key), str):
                return row[key]
    raise LabError(f"{name} row {index} has no {'/'.join(PROMPT_KEYS)} text field")


def _from_csv(text: str, name: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    column = next((k for k in PROMPT_KEYS if k in fields), None)
    if column is None:
        raise LabError(f"{name} has no prompt, instruction or goal column (columns: {', '.join(fields) or 'none'})")
    original = (reader.fieldnames or [])[fields.index(column)]
    return [row[original] or "" for row in reader]
