"""Argument types shared by every command, and argparse options derived from a config dataclass.

A dataclass is the single home of a setting: its default, its ``Literal`` choices and the one-line docstring
under the field become the option's default, ``choices`` and help (as sparsify does with its configs). The CLI
restates nothing by hand.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from typing import Any, Literal

from engine.errors import FieldError, LabError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one clear line (a :class:`LabError`), not usage + message."""

    def error(self, message: str):  # type: ignore[override]
        raise LabError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_list(text: str) -> list[int]:
    """``"5,10,20"`` → ``[5, 10, 20]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    """``"0,2,5"`` → ``[0.0, 2.0, 5.0]``."""
    try:
        return [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``cls`` (``snake_case`` → ``--snake-case``), except dict fields and ``skip``.

    ``Literal`` fields get ``choices``; ``bool`` fields are on/off flags; a field's ``metadata["aliases"]`` adds
    older spellings. Values are checked again by the dataclass itself when it is built.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        help_text = docs.get(f.name, "")
        if tp is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif tp is int:
            kwargs["type"] = integer
        elif tp is float:
            kwargs["type"] = finite_float
        elif tp is str:
            kwargs["type"] = str
        else:  # dicts and lists are not command-line settings
            continue
        shown = "none" if default is None and optional else default
        group.add_argument(*flags, help=f"{help_text} (default: {shown})", **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the options :func:`add_dataclass_options` added (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    try:
        return cls(**{**values, **overrides})
    except FieldError as exc:  # the dataclass names the field in words; the command line adds its option
        raise LabError(f"{exc.flag}: {exc}") from None
