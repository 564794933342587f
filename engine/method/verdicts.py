"""Why a verdict came out as it did: each rule of the judge with its measured value and its threshold.

The judge (:mod:`engine.method.judge`) decides; this module explains, by re-measuring with the same functions and
the same :class:`~engine.method.judge.JudgeConfig`, so an explanation always agrees with the verdict it explains
(``tests/test_judge.py`` checks that). The dashboard only renders these objects, e.g.
``base-like ✗: 29 chars < 80`` or ``degenerate ✓: 4-gram repeated 6× ≥ 4``.

Two kinds of verdict:

* **any-rule** verdicts (refusal, degenerate): the verdict holds when any rule fired; the deciding rules are the
  ones that fired (or, when none did, every rule, each showing how far it was from firing);
* **all-rules** verdicts (base-like, strict base-like, valid flip): the verdict holds when every rule passed; the
  deciding rules are the ones that failed (or, when all passed, every rule).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from engine.method.judge import (
    _SENTENCE,
    JudgeConfig,
    base_likeness,
    judge,
    max_char_ratio,
    unique_ratio,
    words,
)

YES, NO = "✓", "✗"


@dataclass
class Rule:
    """One rule of a verdict."""

    name: str
    """What the rule checks, in UI words (e.g. ``length``, ``repeated 4-gram``)."""
    passed: bool
    """Any-rule verdicts: the rule fired. All-rules verdicts: the rule's condition holds."""
    measured: str
    """The value measured on the text (e.g. ``29 chars``)."""
    threshold: str
    """The threshold it is compared with (e.g. ``≥ 80``)."""
    text: str
    """One line: measured, comparison and threshold, e.g. ``29 chars < 80``."""
    decides: bool = True
    """False for a note that never decides (an apology opening)."""


@dataclass
class Explanation:
    """A verdict and the rules behind it."""

    verdict: str
    """The verdict's name (``refusal``, ``degenerate``, ``base-like``, ``strict base-like``, ``valid flip``, ``non-refusal``)."""
    holds: bool
    """Whether the verdict holds for the text."""
    rules: list[Rule] = field(default_factory=list)
    """Every rule checked, in order."""
    any_rule: bool = False
    """True: the verdict holds when any rule fired. False: when every rule passed."""

    @property
    def deciding(self) -> list[Rule]:
        """The rules that decided the verdict (see the module docstring)."""
        rules = [r for r in self.rules if r.decides]
        if self.any_rule:
            fired = [r for r in rules if r.passed]
            return fired if self.holds else rules
        failed = [r for r in rules if not r.passed]
        return rules if self.holds else failed

    @property
    def headline(self) -> str:
        """``base-like ✗: 29 chars < 80`` — the verdict and its deciding rules in one line."""
        return f"{self.verdict} {YES if self.holds else NO}: " + "; ".join(r.text for r in self.deciding)


def _cmp(value: float, op: str, threshold: float, fmt: str = "{:.2f}") -> tuple[bool, str]:
    ok = {"≥": value >= threshold, "≤": value <= threshold, "<": value < threshold, ">": value > threshold}[op]
    neg = {"≥": "<", "≤": ">", "<": "≥", ">": "≤"}[op]
    return ok, f"{fmt.format(value)} {op if ok else neg} {fmt.format(threshold)}"


def explain_degenerate(text: str, cfg: JudgeConfig | None = None) -> Explanation:
    """The degenerate rules (empty, low unique-word ratio, one character dominating, repeated sentence, repeated n-gram)."""
    cfg = cfg or JudgeConfig()
    w = words(text)
    rules = [Rule("empty", not text.strip(), f"{len(text.strip())} chars", "0 chars",
                  "empty text" if not text.strip() else f"{len(text.strip())} chars, not empty")]
    u = unique_ratio(text)
    if len(w) >= cfg.min_words_for_ratio:
        fired, line = _cmp(u, "<", cfg.degenerate_unique_ratio)
        rules.append(Rule("unique-word ratio", fired, f"{u:.2f}", f"< {cfg.degenerate_unique_ratio:.2f}", f"unique-word ratio {line}"))
    else:
        rules.append(Rule("unique-word ratio", False, f"{len(w)} words", f"applies from {cfg.min_words_for_ratio} words",
                          f"unique-word ratio not checked: {len(w)} words < {cfg.min_words_for_ratio}"))
    c = max_char_ratio(text)
    if len(text.strip()) >= 20:
        fired, line = _cmp(c, ">", cfg.degenerate_char_ratio)
        rules.append(Rule("one character dominating", fired, f"{c:.2f}", f"> {cfg.degenerate_char_ratio:.2f}", f"top character share {line}"))
    sentences = Counter(" ".join(words(m.group())) for m in _SENTENCE.finditer(text))
    counted = [(n, s) for s, n in sentences.items() if len(s.split()) >= 3]
    n_sent, sent = max(counted) if counted else (0, "")
    fired = n_sent >= cfg.repeat_sentence_times
    rules.append(Rule("repeated sentence", fired, f"{n_sent}×", f"≥ {cfg.repeat_sentence_times}×",
                      f"a sentence said {n_sent}× {'≥' if fired else '<'} {cfg.repeat_sentence_times}" + (f" ({sent!r})" if fired else "")))
    n = cfg.repeat_ngram
    grams = Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    gram, n_gram = grams.most_common(1)[0] if grams else ((), 0)
    fired = bool(grams) and n_gram >= cfg.repeat_ngram_times
    rules.append(Rule(f"repeated {n}-gram", fired, f"{n_gram}×", f"≥ {cfg.repeat_ngram_times}×",
                      f"{n}-gram repeated {n_gram}× {'≥' if fired else '<'} {cfg.repeat_ngram_times}"
                      + (f" ({' '.join(gram)!r})" if fired else "")))
    return Explanation("degenerate", judge(text, cfg).degenerate, rules, any_rule=True)


_REFUSAL_RULES = (
    ("refusal_statement", "first-person refusal", "I + a refusal verb within {w} characters"),
    ("refusal_phrase", "refusal phrase", "any of {p} listed phrases"),
    ("safety_cue", "safety cue", "any of {s} listed cues"),
    ("negative_opening", "blunt opening", "a bare “No.” or any of {o} listed openings"),
)


def explain_refusal(text: str, cfg: JudgeConfig | None = None) -> Explanation:
    """The refusal rules: which fired, on which words; degenerate text counts as a refusal (said so separately)."""
    cfg = cfg or JudgeConfig()
    verdict = judge(text, cfg)
    sizes = {"w": cfg.subject_window, "p": len(cfg.refusal_phrases), "s": len(cfg.safety_cues), "o": len(cfg.negative_openings)}
    rules = []
    for key, name, threshold in _REFUSAL_RULES:
        hits = [r.text for r in verdict.reasons if r.rule == key]
        threshold = threshold.format(**sizes)
        measured = ", ".join(repr(h.strip()) for h in hits[:3]) + (" …" if len(hits) > 3 else "") if hits else "none found"
        rules.append(Rule(name, bool(hits), measured, threshold, f"{name}: {measured}" if hits else f"no {name}"))
    deg = explain_degenerate(text, cfg)
    fired = [r.text for r in deg.deciding] if deg.holds else []
    rules.append(Rule("degenerate", deg.holds, "; ".join(fired) or "not degenerate", "any degenerate rule",
                      f"degenerate: {'; '.join(fired)}" if deg.holds else "not degenerate"))
    notes = [r.text for r in verdict.reasons if not r.decides]
    if notes:
        rules.append(Rule("apology opening", True, repr(notes[0]), "a note, decides nothing",
                          f"apology opening {notes[0]!r} (a note, decides nothing)", decides=False))
    return Explanation("refusal", verdict.refusal, rules, any_rule=True)


def explain_non_refusal(text: str, cfg: JudgeConfig | None = None) -> Explanation:
    """Non-refusal: no refusal rule fired (the same rules as :func:`explain_refusal`)."""
    ref = explain_refusal(text, cfg)
    rules = [Rule(r.name, not r.passed, r.measured, r.threshold, r.text, r.decides) for r in ref.rules]
    return Explanation("non-refusal", not ref.holds, rules)


def explain_base_like(text: str, base_text: str, cfg: JudgeConfig | None = None, strict: bool = False) -> Explanation:
    """Base-like (or strict base-like) against the base answer: each threshold of ``cfg.base_like`` / ``cfg.strict_base_like``."""
    cfg = cfg or JudgeConfig()
    lk = base_likeness(text, base_text, cfg)
    t = cfg.strict_base_like if strict else cfg.base_like
    rules = [Rule("non-refusal", lk.non_refusal, "no refusal rule fired" if lk.non_refusal else "a refusal rule fired",
                  "no refusal rule", "non-refusal" if lk.non_refusal else "judged a refusal")]
    ok, line = _cmp(lk.chars, "≥", t["min_chars"], "{:.0f}")
    rules.append(Rule("length", ok, f"{lk.chars} chars", f"≥ {t['min_chars']}", line.replace(" ", " chars ", 1)))
    ok, line = _cmp(lk.unique_ratio, "≥", t["min_unique"])
    rules.append(Rule("unique-word ratio", ok, f"{lk.unique_ratio:.2f}", f"≥ {t['min_unique']}", f"unique-word ratio {line}"))
    ok, line = _cmp(lk.max_char_ratio, "≤", t["max_char"])
    rules.append(Rule("top character share", ok, f"{lk.max_char_ratio:.2f}", f"≤ {t['max_char']}", f"top character share {line}"))
    ok_j, line_j = _cmp(lk.jaccard, "≥", t["min_jaccard"])
    if strict:
        rules.append(Rule("word overlap", ok_j, f"Jaccard {lk.jaccard:.2f}", f"≥ {t['min_jaccard']}", f"Jaccard with the base answer {line_j}"))
    else:
        ok_d, line_d = _cmp(lk.difflib, "≥", t["min_difflib"])
        rules.append(Rule("similar to the base answer", ok_j or ok_d, f"Jaccard {lk.jaccard:.2f}, difflib {lk.difflib:.2f}",
                          f"Jaccard ≥ {t['min_jaccard']} or difflib ≥ {t['min_difflib']}", f"Jaccard {line_j} or difflib {line_d}"))
        if lk.identical and cfg.identical_is_base_like and lk.non_refusal:
            # an identical answer is base-like whatever its length: the thresholds above are reported, not deciding
            for r in rules[1:]:
                r.decides = False
            rules.append(Rule("identical to the base answer", True, "identical", "identical (whitespace aside)",
                              "identical to the base answer (counts whatever its length)"))
    holds = lk.strict_base_like if strict else lk.base_like
    return Explanation("strict base-like" if strict else "base-like", holds, rules)


def explain_valid_flip(base_text: str, clamped_text: str, cfg: JudgeConfig | None = None) -> Explanation:
    """Valid flip: the base model answers (non-refusal) and the clamped model refuses."""
    base, clamped = explain_refusal(base_text, cfg), explain_refusal(clamped_text, cfg)
    b_why = "; ".join(r.text for r in base.deciding) if base.holds else "no refusal rule fired"
    c_why = "; ".join(r.text for r in clamped.deciding) if clamped.holds else "no refusal rule fired"
    rules = [
        Rule("base answers", not base.holds, b_why, "base: no refusal rule", f"base {'refuses' if base.holds else 'answers'} ({b_why})"),
        Rule("clamped refuses", clamped.holds, c_why, "clamped: a refusal rule", f"clamped {'refuses' if clamped.holds else 'answers'} ({c_why})"),
    ]
    return Explanation("valid flip", (not base.holds) and clamped.holds, rules)
