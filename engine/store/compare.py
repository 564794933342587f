"""Comparing recovery and sweep records across runs: overlaid curves and a side-by-side table of settings and results.

A record is named ``RUN/RECORD`` (:class:`RecordRef`; the dashboard keeps the picked names in its URL, so a link
reopens the same comparison). The curves come from the saved files only: per step, the mean (and the lowest and highest)
over a recovery's prompts of ``loss_history`` / ``drift_history`` in ``recovery.jsonl``; per budget, a sweep's rates
with their Wilson intervals from ``sweep.json``. Values are written out for reading (:func:`readable`): a clamp set
clamp by clamp, lists joined, numbers to 4 significant digits, never a JSON blob.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import LabError
from engine.store.catalogue import RunInfo, get_run, list_runs
from engine.store.files import read_jsonl
from engine.store.records import RecoveryRecord

logger = logging.getLogger(__name__)

RATES = (("non_refusal", "non-refusal"), ("base_like", "base-like"), ("strict_base_like", "strict base-like"))
"""Summary ``ci`` keys and the words the tables and legends use for them."""


@dataclass(frozen=True)
class RecordRef:
    """One record of one run."""

    run: str
    """The run directory's name."""
    record: str
    """The recovery or sweep record's name in it."""

    @property
    def key(self) -> str:
        """``RUN/RECORD``: how a link names it."""
        return f"{self.run}/{self.record}"

    @property
    def label(self) -> str:
        """``RUN · RECORD``: how legends and tables name it."""
        return f"{self.run} · {self.record}"

    @classmethod
    def parse(cls, key: str) -> RecordRef:
        run, sep, record = str(key).partition("/")
        if not sep or not run or not record or "/" in record:
            raise LabError(f"{key!r} does not name a record as RUN/RECORD")
        return cls(run, record)


@dataclass
class Compared:
    """A picked record with its run."""

    ref: RecordRef
    """Its name."""
    run: RunInfo
    """The flips run it belongs to."""
    record: RecoveryRecord
    """The record itself (kind ``recovery`` or ``sweep``)."""


@dataclass
class Resolved:
    """The records a list of names found, and the names that no longer exist (deleted, or a mistyped link)."""

    found: list[Compared]
    """In the order asked for, each once."""
    missing: list[str]
    """The names not found."""


def comparable() -> list[RecordRef]:
    """Every recovery and sweep record of every run that has results, newest run first, newest record first."""
    out = []
    for info in list_runs():
        for r in info.records:
            if r.summary is not None or (r.path / "recovery.jsonl").is_file():
                out.append(RecordRef(info.name, r.name))
    return out


def resolve(keys: Sequence[str]) -> Resolved:
    """The records named ``RUN/RECORD`` in ``keys``; names that are malformed or gone are listed in ``missing``."""
    found, missing, runs = [], [], {}
    for key in dict.fromkeys(keys):
        try:
            ref = RecordRef.parse(key)
            info = runs.get(ref.run) or runs.setdefault(ref.run, get_run(ref.run))
        except LabError:
            missing.append(key)
            continue
        record = next((r for r in info.records if r.name == ref.record), None)
        if record is None:
            missing.append(key)
        else:
            found.append(Compared(ref, info, record))
    return Resolved(found, missing)


# ------------------------------------------------------------------------------------------------ curves


def step_curves(picked: Sequence[Compared]) -> list[dict]:
    """Rows ``{record, metric, step, mean, min, max, prompts}``: loss and drift per step over each recovery's prompts."""
    rows = []
    for c in picked:
        path = c.record.path / "recovery.jsonl"
        if c.record.kind != "recovery" or not path.is_file():
            continue
        records = read_jsonl(path, torn_tail=True)
        for metric, key in (("loss", "loss_history"), ("drift", "drift_history")):
            histories = [h for h in (r.get(key) or [] for r in records) if h]
            for step in range(max((len(h) for h in histories), default=0)):
                values = [float(h[step]) for h in histories if step < len(h) and h[step] is not None]
                if values:
                    rows.append({"record": c.ref.label, "metric": metric, "step": step, "mean": sum(values) / len(values),
                                 "min": min(values), "max": max(values), "prompts": len(values)})
    return rows


def sweep_curves(picked: Sequence[Compared]) -> list[dict]:
    """Rows ``{record, metric, budget, rate, lo, hi, k, n}`` of each sweep's points (``sweep.json``)."""
    rows = []
    for c in picked:
        if c.record.kind != "sweep" or not c.record.summary:
            continue
        for point in c.record.summary.get("points", []):
            for key, word in RATES:
                ci = (point.get("ci") or {}).get(key) or {}
                if ci:
                    lo, hi = (ci.get("ci95") or [None, None])[:2]
                    rows.append({"record": c.ref.label, "metric": word, "budget": point.get("budget"), "rate": ci.get("rate"),
                                 "lo": lo, "hi": hi, "k": ci.get("k"), "n": ci.get("n")})
    return rows


# ------------------------------------------------------------------------------------------------ the table


def readable(value: object) -> str:
    """A setting or result as a person reads it: ``—`` for none, yes/no, 4 significant digits, lists joined, a dict as
    ``key: value`` pairs, a clamp set one clamp after the other (``|``)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) and "features" in v for v in value):
            return " | ".join(clamp_text(v) for v in value)
        items = [readable(v) for v in value[:12]]
        return ", ".join(items) + (f", … ({len(value)} in all)" if len(value) > 12 else "") if items else "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {readable(v)}" for k, v in value.items()) or "—"
    return str(value)


def clamp_text(clamp: dict) -> str:
    """``blocks.1.hook_resid_post: 3 features (1, 2, 3) set to 5`` for one clamp of a run's ``config.json``."""
    feats = clamp.get("features") or []
    values = sorted({float(v) for v in clamp.get("values") or []})
    mode = clamp.get("mode")
    how = "zeroed" if mode == "zero" else f"{mode} {'to' if mode == 'set' else 'by'} {readable(values[0]) if len(values) == 1 else 'per feature'}"
    shown = ", ".join(map(str, feats[:8])) + (", …" if len(feats) > 8 else "")
    return f"{clamp.get('hook') or clamp.get('sae')}: {len(feats)} feature{'s' if len(feats) != 1 else ''} ({shown}) {how}"


def _rate(summary: dict | None, key: str) -> str:
    ci = ((summary or {}).get("ci") or {}).get(key) or {}
    if not ci:
        return "—"
    lo, hi = (ci.get("ci95") or [0, 0])[:2]
    return f"{ci.get('rate', 0):.0%} ({ci.get('k')}/{ci.get('n')}; 95 % CI {lo:.0%}–{hi:.0%})"


def _budget(cfg: dict) -> str:
    norm = "per position" if cfg.get("budget_kind") == "per_position" else "whole matrix"
    scale = "relative to the median residual norm" if cfg.get("budget_relative") else "absolute"
    return f"{norm}, {scale}"


def _sweep_points(summary: dict | None, key: str) -> str:
    points = (summary or {}).get("points") or []
    parts = []
    for p in points:
        ci = (p.get("ci") or {}).get(key) or {}
        parts.append(f"B {readable(p.get('budget'))}: {ci.get('k', '?')}/{ci.get('n', '?')}")
    return " · ".join(parts) or "—"


HEADLINE = (
    ("Run", "model", lambda c: c.run.config.get("model_id") or c.run.config.get("model")),
    ("Run", "clamp set", lambda c: c.run.config.get("clamps")),
    ("Run", "valid flips (judge)", lambda c: (c.run.summary or {}).get("n_valid")),
    ("Record", "kind", lambda c: c.record.kind),
    ("Record", "status", lambda c: c.record.status),
    ("Record", "valid set", lambda c: c.record.config.get("valid", "judge")),
    ("Record", "flips recovered", lambda c: len(c.record.config.get("flip_ids") or [])),
    ("Settings", "projection", lambda c: c.record.config.get("projection")),
    ("Settings", "method", lambda c: c.record.config.get("method")),
    ("Settings", "budget", lambda c: c.record.config.get("budgets") if c.record.kind == "sweep" else c.record.config.get("budget")),
    ("Settings", "budget norm", lambda c: _budget(c.record.config)),
    ("Settings", "steps", lambda c: c.record.config.get("steps")),
    ("Settings", "learning rate", lambda c: c.record.config.get("lr")),
    ("Settings", "δ layer", lambda c: c.record.config.get("delta_layer")),
    ("Settings", "δ acts on", lambda c: c.record.config.get("where")),
    ("Settings", "drift penalty λ", lambda c: c.record.config.get("drift_penalty")),
    ("Settings", "Jacobian basis", lambda c: c.record.config.get("jacobian_basis") if c.record.config.get("projection") == "jacobian" else None),
    ("Settings", "seed", lambda c: c.record.config.get("seed")),
    ("Results", "non-refusal recovery", lambda c: _sweep_points(c.record.summary, "non_refusal") if c.record.kind == "sweep"
     else _rate(c.record.summary, "non_refusal")),
    ("Results", "base-like", lambda c: _sweep_points(c.record.summary, "base_like") if c.record.kind == "sweep"
     else _rate(c.record.summary, "base_like")),
    ("Results", "strict base-like", lambda c: None if c.record.kind == "sweep" else _rate(c.record.summary, "strict_base_like")),
    ("Results", "mean drift", lambda c: (c.record.summary or {}).get("mean_drift")),
    ("Results", "floor violation", lambda c: (c.record.summary or {}).get("mean_floor_violation")),
    ("Results", "relative ‖δ‖", lambda c: (c.record.summary or {}).get("mean_delta_rel_norm")),
    ("Results", "attribution", lambda c: c.record.has_attribution),
)
"""The table's rows: (section, setting, how to read it from a :class:`Compared`)."""
_SKIP = {"flip_ids", "created", "name", "kind", "extra", "budgets", "budget", "projection", "method", "budget_kind",
         "budget_relative", "steps", "lr", "delta_layer", "where", "drift_penalty", "jacobian_basis", "seed", "valid"}


def settings_table(picked: Sequence[Compared], differences_only: bool = False) -> list[dict]:
    """Rows ``{section, setting, <label of each record>…, differs}``, every value :func:`readable`; then every other
    record setting whose values differ (``recovery_config.json``)."""
    rows = []
    for section, name, get in HEADLINE:
        rows.append(_row(section, name, [readable(get(c)) for c in picked], picked))
    other = sorted({k for c in picked for k in c.record.config} - _SKIP)
    for key in other:
        values = [readable(c.record.config.get(key)) for c in picked]
        if len(set(values)) > 1:
            rows.append(_row("Other settings", key.replace("_", " "), values, picked))
    if differences_only:
        rows = [r for r in rows if r["differs"]]
    return rows


def _row(section: str, name: str, values: list[str], picked: Sequence[Compared]) -> dict:
    return {"section": section, "setting": name, **{c.ref.label: v for c, v in zip(picked, values)}, "differs": len(set(values)) > 1}


def readable_run_rows(rows: list[dict]) -> list[dict]:
    """``catalogue.compare_runs`` rows (which carry lists and dicts as JSON text) with their values :func:`readable`:
    a clamp set written out clamp by clamp, not a JSON blob."""
    return [{**r, "a": readable(_unjson(r.get("a"))), "b": readable(_unjson(r.get("b")))} for r in rows]


def _unjson(value: object) -> object:
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
