"""General offline text for the SAE corpus (recipe v2, off by default: ``CorpusConfig.general_text_passages``).

The chat corpus has only ~285 distinct training answers, so the SAE sees little varied text. This module adds
plain prose that installs with the project itself, with no download: Python's own documentation.

* ``pydoc_topics``: the language reference topics of ``help()`` (``pydoc_data.topics``, ~465 k characters);
* ``stdlib_docstrings``: docstrings (≥ 200 characters) of the public functions and classes of a fixed list of
  standard-library modules.

Paragraphs are joined into passages of about ``tokens`` tokens and tokenized *without* the chat template (plain
text, as a document). Every token is labelled ``OTHER``, so the refusal/answer contrast of the preset search never
sees them. Passages are split once, seeded, into train and held-out pools, like the prompts.
"""

from __future__ import annotations

import importlib
import inspect
import random

from engine.errors import LabError

SOURCES = ("pydoc_topics", "stdlib_docstrings")
"""Known sources, in the order passages are drawn from."""

STDLIB_MODULES = ("argparse", "collections", "csv", "datetime", "decimal", "email.message", "fractions", "functools",
                  "itertools", "json", "logging", "os", "pathlib", "random", "re", "shutil", "statistics", "string",
                  "subprocess", "textwrap", "threading", "unittest", "urllib.parse", "zipfile")
"""Modules whose docstrings ``stdlib_docstrings`` reads."""


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _stdlib_docstrings(min_chars: int = 200) -> list[str]:
    docs: list[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj) or ""
            if len(doc) >= min_chars:
                docs.append(doc)
    return docs


def documents(sources: tuple[str, ...]) -> list[str]:
    """The raw documents of ``sources`` (deterministic order)."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise LabError(f"unknown general text source {unknown[0]!r}; known: {', '.join(SOURCES)}")
    readers = {"pydoc_topics": _pydoc_topics, "stdlib_docstrings": _stdlib_docstrings}
    return [doc for s in sources for doc in readers[s]()]


def passages(sources: tuple[str, ...], chars: int) -> list[str]:
    """Paragraphs of every document joined into passages of at least ``chars`` characters (a document's tail
    shorter than a quarter of that is dropped). Repeated passages are kept once (several help topics share text),
    so the train and held-out pools never share one."""
    out: list[str] = []
    for doc in documents(sources):
        current: list[str] = []
        size = 0
        for para in (p.strip() for p in doc.split("\n\n")):
            if not para:
                continue
            current.append(para)
            size += len(para) + 2
            if size >= chars:
                out.append("\n\n".join(current))
                current, size = [], 0
        if current and size >= chars // 4:
            out.append("\n\n".join(current))
    return list(dict.fromkeys(out))


def split_passages(sources: tuple[str, ...], chars: int, heldout_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"train": [...], "heldout": [...]}``: a seeded split of :func:`passages`."""
    pool = passages(sources, chars)
    random.Random(f"{seed}:general").shuffle(pool)
    n_held = max(1, round(len(pool) * heldout_fraction))
    return {"heldout": pool[:n_held], "train": pool[n_held:]}
