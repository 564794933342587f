"""How far the refusal judge and the hand labels agree, and how far the labellers agree with each other.

* **Judge vs humans** (:func:`judge_agreement`): over the flips whose consensus label
  (``engine.store.labels.consensus``: the majority over labellers, a tie → ``unsure``) is ``genuine`` or ``not``,
  the 2×2 table of the judge's ``valid`` (True/False) against the consensus (``genuine`` ⇔ valid), its n and
  Cohen's κ. Flips whose consensus is ``unsure`` are left out and counted (``n_unsure``).
* **Labeller vs labeller** (:func:`labeller_agreement`): for each pair of labellers with at least one flip both
  labelled, Cohen's κ over the three labels ``genuine`` / ``not`` / ``unsure``, with n.
* :func:`disagreements`: the flips where the judge's ``valid`` and the consensus differ.

Cohen's κ = (p_o − p_e) / (1 − p_e), p_o the share of items both sides put in the same class, p_e = Σ_k a_k·b_k
with a_k, b_k each side's share of class k. It is ``None``, with the reason, when n = 0 or when p_e = 1 (both
sides put every item in the same single class, so the formula divides by zero); one side in one class alone
(p_e < 1) gives a defined κ (often 0 or negative).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

from engine.store import labels as labels_store

HUMAN_CLASSES = ("genuine", "not")
"""The consensus labels the judge is compared with (``genuine`` ⇔ the judge's valid)."""


@dataclass(frozen=True)
class Kappa:
    """Cohen's κ over n paired ratings; ``value`` is None when it is undefined, and ``reason`` says why."""

    value: float | None
    n: int
    p_observed: float | None = None
    p_expected: float | None = None
    reason: str | None = None


def cohen_kappa(pairs: Sequence[tuple[str, str]], categories: Sequence[str] | None = None) -> Kappa:
    """Cohen's κ of paired ratings ``(a, b)``."""
    n = len(pairs)
    if n == 0:
        return Kappa(None, 0, reason="no items rated by both sides (n = 0)")
    cats = list(categories) if categories is not None else sorted({x for p in pairs for x in p})
    p_o = sum(a == b for a, b in pairs) / n
    p_e = sum((sum(a == k for a, _ in pairs) / n) * (sum(b == k for _, b in pairs) / n) for k in cats)
    if 1.0 - p_e <= 1e-12:
        only = pairs[0][0]
        return Kappa(None, n, p_o, p_e, reason=f"undefined: both sides put all {n} items in one class ({only!r}), "
                                               "so chance agreement is 1 and κ divides by zero")
    return Kappa((p_o - p_e) / (1.0 - p_e), n, p_o, p_e)


@dataclass(frozen=True)
class Confusion:
    """The judge's ``valid`` (rows) against the human consensus (columns)."""

    valid_genuine: int = 0
    valid_not: int = 0
    invalid_genuine: int = 0
    invalid_not: int = 0

    @property
    def n(self) -> int:
        return self.valid_genuine + self.valid_not + self.invalid_genuine + self.invalid_not

    def rows(self) -> list[dict]:
        """The table as two rows (judge valid / judge invalid) with columns human genuine / human not."""
        return [{"judge": "valid", "human genuine": self.valid_genuine, "human not": self.valid_not},
                {"judge": "not valid", "human genuine": self.invalid_genuine, "human not": self.invalid_not}]


@dataclass(frozen=True)
class JudgeAgreement:
    confusion: Confusion
    kappa: Kappa
    n: int
    """Flips compared: consensus genuine or not, and in flips.jsonl."""
    n_unsure: int
    """Flips whose consensus is unsure (left out)."""
    n_unlabelled: int
    """Flips of flips.jsonl nobody labelled."""
    n_unknown: int = 0
    """Labelled flip ids that are not in flips.jsonl (left out)."""

    @property
    def accuracy(self) -> float | None:
        return None if self.n == 0 else (self.confusion.valid_genuine + self.confusion.invalid_not) / self.n


@dataclass(frozen=True)
class PairAgreement:
    """Two labellers over the flips both labelled (three classes)."""

    a: str
    b: str
    kappa: Kappa

    @property
    def n(self) -> int:
        return self.kappa.n


@dataclass(frozen=True)
class Disagreement:
    """A flip where the judge's ``valid`` and the human consensus differ."""

    flip_id: int
    judge_valid: bool
    consensus: str
    labels: dict[str, str] = field(default_factory=dict)
    """labeller → label."""


@dataclass(frozen=True)
class Agreement:
    judge: JudgeAgreement
    labellers: list[str]
    pairs: list[PairAgreement]

    def to_json(self) -> dict:
        j = self.judge
        return {
            "judge_vs_human": {
                "n": j.n, "n_unsure_excluded": j.n_unsure, "n_unlabelled": j.n_unlabelled, "n_unknown_flip_ids": j.n_unknown,
                "confusion": {"judge_valid": {"human_genuine": j.confusion.valid_genuine, "human_not": j.confusion.valid_not},
                              "judge_invalid": {"human_genuine": j.confusion.invalid_genuine, "human_not": j.confusion.invalid_not}},
                "accuracy": j.accuracy, "kappa": asdict(j.kappa),
            },
            "labellers": self.labellers,
            "inter_labeller": [{"a": p.a, "b": p.b, "n": p.n, "kappa": asdict(p.kappa)} for p in self.pairs],
        }


def _judge_valid(records: Iterable[dict]) -> dict[int, bool]:
    out = {}
    for rec in records:
        try:
            out[int(rec["id"])] = bool(rec.get("valid"))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _records(run: Path | str) -> list[dict]:
    from engine.store.files import read_jsonl

    path = labels_store.run_dir(run) / "flips.jsonl"
    return read_jsonl(path) if path.is_file() else []


def judge_agreement_of(valid: dict[int, bool], consensus: dict[int, str]) -> JudgeAgreement:
    """The judge-vs-human table from the judge's verdicts (flip → valid) and the consensus (flip → label)."""
    counts = {"valid_genuine": 0, "valid_not": 0, "invalid_genuine": 0, "invalid_not": 0}
    pairs: list[tuple[str, str]] = []
    n_unsure = n_unknown = 0
    for fid, label in consensus.items():
        if fid not in valid:
            n_unknown += 1
            continue
        if label not in HUMAN_CLASSES:
            n_unsure += 1
            continue
        judge = "genuine" if valid[fid] else "not"
        counts[f"{'valid' if valid[fid] else 'invalid'}_{label}"] += 1
        pairs.append((judge, label))
    unlabelled = sum(fid not in consensus for fid in valid)
    return JudgeAgreement(Confusion(**counts), cohen_kappa(pairs, HUMAN_CLASSES), len(pairs), n_unsure, unlabelled, n_unknown)


def judge_agreement(run: Path | str) -> JudgeAgreement:
    return judge_agreement_of(_judge_valid(_records(run)), labels_store.consensus(run))


def labeller_agreement_of(current: dict[int, dict[str, str]]) -> list[PairAgreement]:
    """κ (three classes) for every pair of labellers with ≥ 1 flip both labelled; ``current``: flip → labeller → label."""
    names = sorted({who for by in current.values() for who in by})
    out = []
    for a, b in combinations(names, 2):
        pairs = [(by[a], by[b]) for _, by in sorted(current.items()) if a in by and b in by]
        if pairs:
            out.append(PairAgreement(a, b, cohen_kappa(pairs, labels_store.LABELS)))
    return out


def _current(run: Path | str) -> dict[int, dict[str, str]]:
    return {fid: {who: lab.label for who, lab in by.items()} for fid, by in labels_store.get_labels(run).items()}


def labeller_agreement(run: Path | str) -> list[PairAgreement]:
    return labeller_agreement_of(_current(run))


def agreement(run: Path | str) -> Agreement:
    """The judge-vs-human table and every labeller pair's κ (one read of the labels and flips)."""
    current = _current(run)
    cons = {fid: c for fid, by in current.items() if (c := labels_store.consensus_of(by.values())) is not None}
    judge = judge_agreement_of(_judge_valid(_records(run)), cons)
    names = sorted({who for by in current.values() for who in by})
    return Agreement(judge, names, labeller_agreement_of(current))


def disagreements_of(valid: dict[int, bool], current: dict[int, dict[str, str]]) -> list[Disagreement]:
    out = []
    for fid, by in sorted(current.items()):
        c = labels_store.consensus_of(by.values())
        if fid in valid and c in HUMAN_CLASSES and (c == "genuine") != valid[fid]:
            out.append(Disagreement(fid, valid[fid], c, dict(sorted(by.items()))))
    return out


def disagreements(run: Path | str) -> list[Disagreement]:
    """Flips where the judge's ``valid`` and the consensus (``genuine`` ⇔ valid) differ; ``unsure`` never disagrees."""
    return disagreements_of(_judge_valid(_records(run)), _current(run))
