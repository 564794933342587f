"""The local corpus that feature cards are computed over: only text the lab has offline. No streamlit import.

Sources, in order (each one optional except the first; see docs/DASHBOARD.md, "Feature cards"):

* ``chats``: our training prompts chatted with the answers shipped beside the default SAE
  (``engine/default_sae/answers.json``) or a forced refusal (:func:`engine.features.cards.default_corpus`);
* ``builtin``: the built-in harmless and harmful prompts (``engine/method/builtin_prompts.py``) as user turns;
* ``shared``: instructions of ``*.json`` prompt files in the shared data folder (``SAE_LAB_CORPUS_DIR``, by
  default ``../shared/data`` beside the repository) when it is present — read in place, never copied;
* ``pydoc``: paragraphs of general English prose that every Python installs (the standard library's
  ``pydoc_data.topics``, the text of ``help()``).

The corpus is identified by a hash of its texts (:attr:`Corpus.version`), so a store computed over another corpus
(another shared folder, another Python) is never served for this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.paths import PACKAGE_DIR

logger = logging.getLogger(__name__)

CORPUS_FORMAT = 1
"""Bumped when the way texts are chosen changes (it is part of :attr:`Corpus.version`)."""


@dataclass(frozen=True)
class CorpusConfig:
    """How many texts each source gives (0 leaves the source out)."""

    chats: int = 240
    """Chats of training prompts with shipped answers or refusals."""
    builtin: int = 120
    """Built-in prompts (harmless and harmful) as user turns."""
    shared: int = 60
    """Instructions per ``*.json`` file of the shared data folder (skipped when the folder is absent)."""
    pydoc: int = 120
    """Paragraphs of ``pydoc_data.topics`` prose."""
    max_chars: int = 360
    """Each text is cut to this many characters (keeps every text short and the precompute bounded)."""
    seed: int = 0
    """Which texts are drawn when a source has more than asked for."""


@dataclass(frozen=True)
class Corpus:
    """The texts and where each came from."""

    texts: list[str]
    sources: list[str]
    """One source name per text (``chats``, ``builtin``, ``shared:FILE``, ``pydoc``)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Texts per source."""

    @property
    def version(self) -> str:
        """A hash of the texts (and of :data:`CORPUS_FORMAT`): different texts, different version."""
        h = hashlib.sha256(f"corpus-format-{CORPUS_FORMAT}".encode())
        for t in self.texts:
            h.update(t.encode("utf-8", "replace"))
            h.update(b"\0")
        return h.hexdigest()[:16]


def shared_data_dir() -> Path:
    """``SAE_LAB_CORPUS_DIR``, or ``../shared/data`` beside the repository."""
    env = os.environ.get("SAE_LAB_CORPUS_DIR")
    return Path(env) if env else PACKAGE_DIR.parent.parent / "shared" / "data"


def _shared_instructions(folder: Path, per_file: int, rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if per_file <= 0 or not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("corpus: skipping %s (%s)", path, exc)
            continue
        items = [r.get("instruction") if isinstance(r, dict) else r for r in rows] if isinstance(rows, list) else []
        items = [s for s in items if isinstance(s, str) and s.strip()]
        rng.shuffle(items)
        out.extend((f"shared:{path.name}", s) for s in items[:per_file])
    return out


def _pydoc_paragraphs(n: int, rng: random.Random) -> list[str]:
    if n <= 0:
        return []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some minimal Pythons leave pydoc_data out
        return []
    paras = []
    for key in sorted(topics):
        for p in topics[key].split("\n\n"):
            p = " ".join(p.split())
            if len(p) >= 120 and not p.startswith(("***", ">>>", "+")) and p.count("_") < 6:
                paras.append(p)
    rng.shuffle(paras)
    return paras[:n]


TINY_CORPUS = CorpusConfig(chats=12, builtin=4, shared=0, pydoc=4, max_chars=100)
"""The test model's corpus: its byte tokenizer makes every character a token, so a small corpus keeps tests fast."""


def corpus_config_for(lm: LoadedModel) -> CorpusConfig:
    """The corpus settings the dashboard and the CLI use for ``lm``: :data:`TINY_CORPUS` for the tiny test model."""
    return TINY_CORPUS if lm.name == "tiny" else CorpusConfig()


def card_corpus(lm: LoadedModel, cfg: CorpusConfig | None = None) -> Corpus:
    """The corpus for ``lm`` (chat texts use its template; default settings: :func:`corpus_config_for`)."""
    from engine.features.cards import default_corpus
    from engine.method.builtin_prompts import HARMFUL, HARMLESS

    cfg = cfg or corpus_config_for(lm)
    if min(cfg.chats, cfg.builtin, cfg.shared, cfg.pydoc) < 0 or cfg.max_chars < 8:
        raise LabError("corpus sizes must be 0 or more, and max_chars at least 8")
    rng = random.Random(cfg.seed)
    pairs: list[tuple[str, str]] = [("chats", t) for t in default_corpus(lm, limit=None)[: cfg.chats]]
    builtin = HARMLESS + HARMFUL
    pairs += [("builtin", lm.chat_prompt(p)) for p in rng.sample(builtin, min(cfg.builtin, len(builtin)))]
    pairs += [(src, lm.chat_prompt(p)) for src, p in _shared_instructions(shared_data_dir(), cfg.shared, rng)]
    pairs += [("pydoc", p) for p in _pydoc_paragraphs(cfg.pydoc, rng)]
    pairs = [(s, t[: cfg.max_chars]) for s, t in pairs if t.strip()]
    if not pairs:
        raise LabError("the card corpus is empty: every source was left out")
    counts: dict[str, int] = {}
    for s, _ in pairs:
        counts[s] = counts.get(s, 0) + 1
    return Corpus([t for _, t in pairs], [s for s, _ in pairs], counts)
