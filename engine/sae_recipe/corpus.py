"""The chat corpus the default SAEs are trained on (an SAE trained on plain text has no refusal feature: docs/DEFAULT_SAE.md).

Conversations are built from our own prompt lists (``train_prompts``):

* each turn is a user request (harmless or harmful) answered either with **the model's own greedy answer**
  (:func:`own_answers`, generated once per prompt with ``engine.method.generation``) or with a **forced refusal** in one of
  ~20 phrasings (about 60 / 40);
* 1–3 turns per conversation, so the same answer is seen in several contexts;
* every token carries a label: not an answer (0), an ordinary answer (1) or a refusal answer (2); the labels drive
  the contrast search of refusal features.

Prompts are split once (seeded) into *train* and *held-out*; held-out conversations use only held-out prompts, so
the quality numbers and the choice of the clamp preset never see a training prompt.

Recipe v2 (off by default): ``general_text_passages`` adds plain-text passages of Python's own documentation
(``general_text.py``) as extra sequences with no turns, every token labelled OTHER.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.method.generation import GenerationConfig, generate
from engine.method.judge import judge
from engine.sae_recipe.train_prompts import HARMFUL_TRAIN, HARMLESS_TRAIN, REFUSALS, TOPICS

logger = logging.getLogger(__name__)

OTHER, ANSWER, REFUSAL = 0, 1, 2
"""Token labels."""


@dataclass(frozen=True)
class Turn:
    prompt: str
    answer: str
    refusal: bool


@dataclass
class Conversation:
    """One tokenized chat with a label per token."""

    turns: list[Turn]
    ids: list[int]
    labels: list[int]
    """OTHER / ANSWER / REFUSAL per token."""
    split: str
    """``train`` or ``heldout``."""


@dataclass
class CorpusConfig:
    """Settings of :func:`build_corpus` (recorded in the manifest)."""

    n_train: int = 2000
    """Training conversations."""
    n_heldout: int = 250
    """Held-out conversations."""
    refusal_rate: float = 0.4
    """Share of turns answered with a forced refusal."""
    harmful_rate: float = 0.35
    """Share of turns whose request comes from the harmful list."""
    turn_weights: tuple[float, float, float] = (0.15, 0.35, 0.5)
    """Probability of 1, 2 and 3 turns (mostly several: later turns are new contexts, while single turns repeat
    and repeated token prefixes are collected once)."""
    heldout_fraction: float = 0.12
    """Share of each prompt list reserved for held-out conversations (and for choosing the preset)."""
    answer_tokens: int = 64
    """Length cap of the model's own answers."""
    seed: int = 0
    """Seed of the prompt split and the conversation sampling."""
    general_text_passages: int = 0
    """Recipe v2: training passages of general offline text (``general_text.py``), every token labelled OTHER;
    held-out passages are added in the ratio ``n_heldout / n_train``; 0 = off (the shipped SAEs)."""
    general_text_sources: tuple[str, ...] = ("pydoc_topics", "stdlib_docstrings")
    """Recipe v2: where general text comes from (``general_text.SOURCES``)."""
    general_text_tokens: int = 256
    """Recipe v2: length cap of a general-text passage in tokens."""

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in V2_CORPUS_FIELDS or getattr(self, k) != self.__dataclass_fields__[k].default}


V2_CORPUS_FIELDS = ("general_text_passages", "general_text_sources", "general_text_tokens")
"""Recipe-v2 options: left out of ``to_json`` while at their defaults (off), so existing cache keys and manifests stay."""


def split_prompts(cfg: CorpusConfig) -> dict[str, dict[str, list[str]]]:
    """``{"train"|"heldout": {"harmless": [...], "harmful": [...]}}``, a seeded split of each list."""
    out: dict[str, dict[str, list[str]]] = {"train": {}, "heldout": {}}
    for name, prompts in (("harmless", HARMLESS_TRAIN), ("harmful", HARMFUL_TRAIN)):
        shuffled = list(prompts)
        random.Random(f"{cfg.seed}:{name}").shuffle(shuffled)
        n_held = max(1, round(len(shuffled) * cfg.heldout_fraction))
        out["heldout"][name] = shuffled[:n_held]
        out["train"][name] = shuffled[n_held:]
    return out


def own_answers(
    lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 64, cache: Path | None = None
) -> dict[str, str]:
    """The model's greedy answer to each prompt, optionally cached in the JSON file ``cache``."""
    key = hashlib.sha256(json.dumps([lm.name, max_new_tokens, list(prompts)]).encode()).hexdigest()[:16]
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            logger.info("own answers: %d from cache %s", len(data["answers"]), cache)
            return data["answers"]
    from tqdm.auto import tqdm

    answers: dict[str, str] = {}
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    with tqdm(total=len(prompts), desc="own answers", unit="prompt", file=sys.stderr) as bar:
        for g in generate(lm, list(prompts), gen):
            answers[prompts[g.index]] = g.text.strip()
            bar.update(1)
            if len(answers) % batch_size == 0:
                logger.info("own answers: %d/%d", len(answers), len(prompts))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "answers": answers}))
    return answers


def opens_with_refusal(text: str, within: int = 80) -> bool:
    """The model rarely refuses by itself; when an own answer does (a refusal rule of the judge fires in its first
    ``within`` characters, repetition rules aside), the answer is labelled a refusal."""
    return any(r.decides and not r.rule.startswith("degenerate") and r.start < within for r in judge(text).reasons)


def refusal_text(rng: random.Random) -> str:
    return rng.choice(REFUSALS).replace("{topic}", rng.choice(TOPICS))


def sample_turns(pool: dict[str, list[str]], answers: dict[str, str], cfg: CorpusConfig, rng: random.Random) -> list[Turn]:
    """1–3 turns; each a harmless or harmful request with its own answer or a forced refusal."""
    n_turns = rng.choices([1, 2, 3], weights=cfg.turn_weights)[0]
    turns = []
    for _ in range(n_turns):
        prompt = rng.choice(pool["harmful"] if rng.random() < cfg.harmful_rate else pool["harmless"])
        if rng.random() < cfg.refusal_rate or not answers.get(prompt):
            turns.append(Turn(prompt, refusal_text(rng), True))
        else:
            turns.append(Turn(prompt, answers[prompt], opens_with_refusal(answers[prompt])))
    return turns


def tokenize_chat(lm: LoadedModel, turns: Sequence[Turn]) -> tuple[list[int], list[int]]:
    """Token ids of the chat (the model's own template) and a label per token from the answers' character spans."""
    messages = []
    for t in turns:
        messages += [{"role": "user", "content": t.prompt}, {"role": "assistant", "content": t.answer}]
    text = lm.tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    for t in turns:
        start = text.index(t.answer, text.index(t.prompt, cursor) + len(t.prompt))
        spans.append((start, start + len(t.answer), REFUSAL if t.refusal else ANSWER))
        cursor = start + len(t.answer)
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for s, e in enc["offset_mapping"]:
        label = OTHER
        for a, b, kind in spans:
            if a <= s and e <= b and e > s:
                label = kind
                break
        labels.append(label)
    return list(enc["input_ids"]), labels


def build_corpus(lm: LoadedModel, cfg: CorpusConfig | None = None, answer_cache: Path | None = None) -> list[Conversation]:
    """All training and held-out conversations (deterministic for a given ``cfg.seed`` and model)."""
    cfg = cfg or CorpusConfig()
    pools = split_prompts(cfg)
    every = [p for split in pools.values() for lst in split.values() for p in lst]
    answers = own_answers(lm, every, cfg.answer_tokens, cache=answer_cache)
    rng = random.Random(cfg.seed)
    out: list[Conversation] = []
    for split, n in (("train", cfg.n_train), ("heldout", cfg.n_heldout)):
        for _ in range(n):
            turns = sample_turns(pools[split], answers, cfg, rng)
            ids, labels = tokenize_chat(lm, turns)
            out.append(Conversation(turns, ids, labels, split))
    if cfg.general_text_passages > 0:
        out += general_text_sequences(lm, cfg)
    n_tok = sum(len(c.ids) for c in out)
    logger.info("corpus: %d conversations, %d tokens", len(out), n_tok)
    return out


def general_text_sequences(lm: LoadedModel, cfg: CorpusConfig) -> list[Conversation]:
    """Plain-text passages (no chat template, no turns), every token labelled OTHER: ``general_text_passages`` for
    training and a proportional number held out, from disjoint seeded pools (``general_text.split_passages``)."""
    from engine.sae_recipe.general_text import split_passages

    pools = split_passages(tuple(cfg.general_text_sources), 4 * cfg.general_text_tokens, cfg.heldout_fraction, cfg.seed)
    wanted = {"train": cfg.general_text_passages, "heldout": max(1, round(cfg.general_text_passages * cfg.n_heldout / max(cfg.n_train, 1)))}
    out: list[Conversation] = []
    for split, n in wanted.items():
        if n > len(pools[split]):
            raise LabError(f"general text: {n} {split} passages asked for, but the sources "
                           f"{', '.join(cfg.general_text_sources)} hold only {len(pools[split])}")
        for text in pools[split][:n]:
            ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"][: cfg.general_text_tokens])
            out.append(Conversation([], ids, [OTHER] * len(ids), split))
    logger.info("general text: %d train + %d held-out passages", wanted["train"], wanted["heldout"])
    return out
