"""Judge–human agreement: Cohen's κ on hand-computed examples, its edge cases, and the tables of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.store import agreement, labels
from engine.store.agreement import Confusion, Kappa, cohen_kappa


@pytest.fixture(autouse=True)
def data(tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("SAE_LAB_DATA", str(d))
    return d


def make_run(path: Path, valid: list[bool]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"command": "flips", "model": "tiny"}))
    (path / "flips.jsonl").write_text("".join(json.dumps({"id": i, "prompt": f"p{i}", "valid": v}) + "\n" for i, v in enumerate(valid)))
    return path


def test_kappa_two_classes_by_hand():
    # judge × human over n = 10:            human genuine   human not
    #   judge valid                               4              2        (6)
    #   judge not valid                           1              3        (4)
    #                                            (5)            (5)
    # p_o = (4 + 3) / 10 = 0.7
    # p_e = P(valid)·P(genuine) + P(invalid)·P(not) = 0.6·0.5 + 0.4·0.5 = 0.5
    # κ = (0.7 − 0.5) / (1 − 0.5) = 0.4
    pairs = [("genuine", "genuine")] * 4 + [("genuine", "not")] * 2 + [("not", "genuine")] * 1 + [("not", "not")] * 3
    k = cohen_kappa(pairs, ("genuine", "not"))
    assert k.n == 10 and k.p_observed == pytest.approx(0.7) and k.p_expected == pytest.approx(0.5)
    assert k.value == pytest.approx(0.4) and k.reason is None


def test_kappa_three_classes_by_hand():
    # a, b over 6 flips: (g,g) (g,g) (n,n) (n,g) (u,u) (g,n)
    # p_o = 4/6 = 12/18
    # a: g 3, n 2, u 1;  b: g 3, n 2, u 1  →  p_e = (3/6)² + (2/6)² + (1/6)² = (9 + 4 + 1)/36 = 7/18
    # κ = (12/18 − 7/18) / (1 − 7/18) = (5/18) / (11/18) = 5/11 ≈ 0.4545
    g, n, u = "genuine", "not", "unsure"
    k = cohen_kappa([(g, g), (g, g), (n, n), (n, g), (u, u), (g, n)], labels.LABELS)
    assert k.value == pytest.approx(5 / 11)


def test_kappa_edge_cases():
    empty = cohen_kappa([], ("genuine", "not"))
    assert empty == Kappa(None, 0, reason=empty.reason) and "n = 0" in empty.reason
    # Both sides put everything in one class: p_o = 1, p_e = 1·1 = 1 → 0/0 → None with the reason.
    same = cohen_kappa([("genuine", "genuine")] * 3, ("genuine", "not"))
    assert same.value is None and same.n == 3 and "divides by zero" in same.reason
    # Only one side in one class: judge all valid, humans 3 genuine / 1 not.
    # p_o = 3/4, p_e = 1·(3/4) + 0·(1/4) = 3/4 → κ = 0 / (1/4) = 0 (defined).
    one_side = cohen_kappa([("genuine", "genuine")] * 3 + [("genuine", "not")], ("genuine", "not"))
    assert one_side.value == pytest.approx(0.0) and one_side.reason is None
    # Complete disagreement over two balanced classes: p_o = 0, p_e = 0.5 → κ = −1.
    assert cohen_kappa([("genuine", "not"), ("not", "genuine")], ("genuine", "not")).value == pytest.approx(-1.0)


def test_judge_agreement_of_a_run(tmp_path):
    run = make_run(tmp_path / "run", [True, True, True, False, False, False])
    votes = [(0, "genuine", "ann"), (1, "not", "ann"), (2, "unsure", "ann"), (3, "not", "ann"), (4, "genuine", "ann"),
             (0, "genuine", "bob"), (1, "not", "bob"), (3, "genuine", "bob"), (4, "genuine", "bob"),
             (9, "genuine", "ann")]  # flip 9 is not in flips.jsonl
    for fid, lab, who in votes:
        labels.set_label(run, fid, lab, labeller=who)
    # consensus: 0 genuine, 1 not, 2 unsure, 3 tie → unsure, 4 genuine, 9 genuine (unknown); 5 unlabelled
    ja = agreement.judge_agreement(run)
    assert ja.confusion == Confusion(valid_genuine=1, valid_not=1, invalid_genuine=1, invalid_not=0)
    assert (ja.n, ja.n_unsure, ja.n_unlabelled, ja.n_unknown) == (3, 2, 1, 1)
    # p_o = 1/3; judge valid 2/3, humans genuine 2/3 → p_e = (2/3)(2/3) + (1/3)(1/3) = 5/9; κ = (3/9 − 5/9)/(4/9) = −0.5
    assert ja.kappa.value == pytest.approx(-0.5)
    assert ja.accuracy == pytest.approx(1 / 3)
    assert [r["judge"] for r in ja.confusion.rows()] == ["valid", "not valid"]

    d = agreement.disagreements(run)
    assert [(x.flip_id, x.judge_valid, x.consensus) for x in d] == [(1, True, "not"), (4, False, "genuine")]
    assert d[0].labels == {"ann": "not", "bob": "not"}

    pairs = agreement.labeller_agreement(run)
    # ann, bob over flips 0, 1, 3, 4: (g,g) (n,n) (n,g) (g,g) → p_o = 3/4;
    # ann g 2 n 2, bob g 3 n 1 → p_e = (2/4)(3/4) + (2/4)(1/4) = 1/2; κ = (3/4 − 1/2)/(1/2) = 0.5
    assert [(p.a, p.b, p.n) for p in pairs] == [("ann", "bob", 4)]
    assert pairs[0].kappa.value == pytest.approx(0.5)

    full = agreement.agreement(run)
    assert full.judge == ja and full.pairs == pairs and full.labellers == ["ann", "bob"]
    js = full.to_json()
    assert js["judge_vs_human"]["n_unsure_excluded"] == 2 and js["inter_labeller"][0]["kappa"]["value"] == pytest.approx(0.5)
    json.dumps(js)


def test_no_labels_gives_no_kappa_and_the_reason(tmp_path):
    run = make_run(tmp_path / "run", [True, False])
    ja = agreement.judge_agreement(run)
    assert ja.n == 0 and ja.kappa.value is None and "n = 0" in ja.kappa.reason and ja.accuracy is None
    assert ja.n_unlabelled == 2
    assert agreement.labeller_agreement(run) == [] and agreement.disagreements(run) == []


def test_only_unsure_labels_are_excluded_and_counted(tmp_path):
    run = make_run(tmp_path / "run", [True, False])
    labels.set_label(run, 0, "unsure", labeller="ann")
    labels.set_label(run, 1, "unsure", labeller="ann")
    ja = agreement.judge_agreement(run)
    assert ja.n == 0 and ja.n_unsure == 2 and ja.kappa.value is None


def test_labellers_without_a_common_flip_get_no_pair(tmp_path):
    run = make_run(tmp_path / "run", [True, False])
    labels.set_label(run, 0, "genuine", labeller="ann")
    labels.set_label(run, 1, "not", labeller="bob")
    assert agreement.labeller_agreement(run) == []
