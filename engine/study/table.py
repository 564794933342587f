"""The study's table: one row per SAE, built from the files its steps wrote (docs/STUDY.md, columns in
``engine.study.config.COLUMNS``), written as ``study.json`` and ``study.csv``; read back for the dashboard.

Shares are counts over the valid flips: the share of valid flips whose replay of one part alone is not a refusal
(the paper's "residual 23 of 24" is a share of 23/24). Rows that stop early (no valid flips, cancelled) leave the
recovery and attribution columns empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from engine.lm.saes import LoadedSAE
from engine.store.files import read_json, read_json_or_none
from engine.study.config import COLUMNS, PARTS

QUALITY_METRICS = ("explained_variance", "l0", "dead_fraction")
"""The quality columns plotted against the shares."""
SHARE_PARTS = ("residual", "non_clamped")
"""The parts whose shares the quality plot shows."""


def _sae_k(sae: LoadedSAE, given: int | None) -> int | None:
    if given is not None:
        return int(given)
    k = getattr(sae.sae.cfg, "k", None)
    return int(k) if isinstance(k, int) else None


def study_row(entry, sae: LoadedSAE, state: dict) -> dict:
    """The table row of one SAE (``entry``: its :class:`~engine.study.quality_study.StudySAE`) from its ``state``."""
    from engine.store.catalogue import runs_root
    from engine.store.records import get_record

    row: dict = dict.fromkeys(COLUMNS)
    preset, quality = state.get("preset") or {}, state.get("quality") or {}
    row.update(sae=entry.spec, name=entry.name, hook=sae.hook_name, d_sae=sae.d_sae, k=_sae_k(sae, entry.k),
               **{key: quality.get(key) for key in (*QUALITY_METRICS, "quality_source", "quality_tokens")},
               preset_source=preset.get("preset_source"), clamp_k=len(preset.get("features", [])) or None,
               clamp_alpha=preset.get("alpha"), run=state.get("run"), status=state.get("status") or "cancelled",
               wall_seconds=round(sum(state.get("seconds", {}).values()), 1))
    run = runs_root() / state["run"] if state.get("run") else None
    flips = read_json_or_none(run / "summary.json") if run else None
    if flips:
        row.update(n_prompts=flips.get("n_prompts"), n_valid_flips=flips.get("n_valid"))
    if run is None or not flips or not flips.get("n_valid"):
        return row
    try:
        record = get_record(run, "study")
    except Exception:  # noqa: BLE001 - no record yet (stopped before recovery): the row stays short
        return row
    rec = record.summary or {}
    row.update(recovery=record.name, recovered=rec.get("non_refusal_recovery"), mean_drift=rec.get("mean_drift"))
    att = record.attribution_summary
    if att and att.get("n"):
        n = int(att["n"])
        for part in ("full", *PARTS):
            c = att["components"].get(part)
            if c is not None:
                row[f"share_{part}"] = c["non_refusal"] / n
                row[f"gain_{part}"] = c["mean_base_logprob_gain"]
    return row


def _clean(value):
    """JSON has no NaN: a non-finite number becomes None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_table(folder: Path, saved: dict, rows: list[dict]) -> pd.DataFrame:
    """``study.json`` (rows, column meanings, the settings) and ``study.csv``; returns the table."""
    from engine.store.files import write_json

    clean = [{k: _clean(v) for k, v in r.items()} for r in rows]
    write_json(folder / "study.json", {"name": saved["name"], "run": saved["run"], "config": saved["config"],
                                       "saes": [s["spec"] for s in saved["saes"]], "columns": COLUMNS, "rows": clean})
    frame = table_frame(clean)
    tmp = folder / "study.csv.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(folder / "study.csv")
    return frame


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a frame with every documented column, in order."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_study(folder: str | Path) -> dict:
    """``study.json`` of a study folder (``rows``, ``columns``, ``config``, ``saes``, ``run``, ``name``)."""
    return read_json(Path(folder) / "study.json")


def quality_share_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Long form for the quality plot: one row per (SAE, quality metric, part) with the metric's value and the share."""
    out = []
    for _, r in table.iterrows():
        for metric in QUALITY_METRICS:
            for part in SHARE_PARTS:
                value, share = r.get(metric), r.get(f"share_{part}")
                if pd.notna(value) and pd.notna(share):
                    out.append({"sae": r["name"], "metric": metric, "value": float(value), "part": part, "share": float(share)})
    return pd.DataFrame(out, columns=["sae", "metric", "value", "part", "share"])


def gain_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Long form for the gain plot: one row per (SAE, part) with the mean base-answer log-prob gain."""
    out = []
    for _, r in table.iterrows():
        for part in ("full", *PARTS):
            gain = r.get(f"gain_{part}")
            if pd.notna(gain):
                out.append({"sae": r["name"], "part": part, "gain": float(gain)})
    return pd.DataFrame(out, columns=["sae", "part", "gain"])
