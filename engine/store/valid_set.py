"""Which flips of a run count as valid: the judge's verdict, or the hand labels (the paper's manual audit).

* ``judge``: ``valid`` as judged in ``flips.jsonl`` (base answered, clamped refused);
* ``labels``: the judge's valid flips minus those the labellers call ``not`` (a false flip);
* ``genuine``: only the flips the labellers call ``genuine``, whatever the judge said (the human overrides it).

A flip's label over several labellers is their consensus (``engine.store.labels.consensus``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from engine.errors import LabError
from engine.store.files import read_jsonl

ValidChoice = Literal["judge", "labels", "genuine"]
VALID_CHOICES: tuple[str, ...] = get_args(ValidChoice)
VALID_HELP = {
    "judge": "the judge's valid flips",
    "labels": "the judge's valid flips minus those labelled 'not'",
    "genuine": "only the flips labelled 'genuine'",
}


def check_valid_choice(valid: str) -> ValidChoice:
    if valid not in VALID_CHOICES:
        raise LabError(f"unknown valid set {valid!r}; choose {', '.join(VALID_CHOICES)}")
    return valid  # type: ignore[return-value]


def _consensus(run: Path) -> dict[int, str]:
    from engine.store.labels import consensus

    return consensus(run)


def select(rows: list[dict], valid: ValidChoice, labels: dict[int, str]) -> list[dict]:
    """The rows of ``flips.jsonl`` that ``valid`` keeps, in file order."""
    if valid == "judge":
        return [r for r in rows if r.get("valid")]
    if valid == "labels":
        return [r for r in rows if r.get("valid") and labels.get(int(r["id"])) != "not"]
    return [r for r in rows if labels.get(int(r["id"])) == "genuine"]


def valid_counts(run: Path) -> dict[str, int]:
    """How many flips each choice keeps (for the dashboard's picker)."""
    rows = read_jsonl(Path(run) / "flips.jsonl")
    labels = _consensus(Path(run))
    return {v: len(select(rows, v, labels)) for v in VALID_CHOICES}  # type: ignore[arg-type]


def valid_flips(run: Path, limit: int | None = None, valid: str = "judge") -> list[dict]:
    """The flips ``valid`` keeps, the first ``limit`` of them; an empty set is a clear error."""
    choice = check_valid_choice(valid)
    if limit is not None and limit < 1:
        raise LabError(f"the number of flips to use must be a positive number, got {limit}")
    rows = read_jsonl(Path(run) / "flips.jsonl")
    labels = _consensus(Path(run)) if choice != "judge" else {}
    kept = select(rows, choice, labels)
    if not kept:
        if choice == "judge":
            raise LabError(f"run {run} has no valid flips to recover (flips.jsonl has none with valid=true)")
        n_gen = sum(v == "genuine" for v in labels.values())
        raise LabError(f"the valid set '{choice}' ({VALID_HELP[choice]}) of run {run} is empty: {len(labels)} of its "
                       f"{len(rows)} flips are labelled, {n_gen} of them 'genuine'")
    return kept[:limit] if limit is not None else kept
