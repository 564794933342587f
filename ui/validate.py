"""Number fields of the job forms: typed as text, parsed, and checked by the engine before any job can start.

A ``st.number_input`` with ``min_value``/``max_value`` shows a red hint for 0 yet hands the script its previous value,
and the browser drops "abc" or "nan" without a word, so a job could start with numbers nobody typed. Here every
number is a text box: what is typed is what is checked. The checks are the engine's own (``RecoveryConfig``'s
field rules, ``check_budgets``, ``check_top_k``, ``check_feature``, the clamp's value check, ``GenerationConfig``),
their messages are shown under the field, worded for the page (the field's label, no command-line options), and a
:class:`Form` with a bad field keeps its start button off. Nothing is coerced: 2.5 steps, 99999 for a feature of
a 4608-wide SAE or 1e999 are refused, not rounded or clamped.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Any

import streamlit as st

from engine.errors import LabError

_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def field_choices(cls, name: str) -> list[str]:
    """The allowed values of a config dataclass's ``Literal`` field, read from its type (so a form follows the engine)."""
    return list(typing.get_args(typing.get_type_hints(cls)[name]))


def page_message(exc: Exception | str, label: str, field: str | None = None) -> str:
    """An engine message worded for a page: a leading ``--flag`` (or the code name ``field``) becomes ``label``,
    a parenthesised ``(--flag)`` goes, and the first letter is upper case (unless the message starts with ``label``)."""
    msg = str(exc).strip()
    if _FLAG.match(msg):
        msg = label + msg[_FLAG.match(msg).end():]
    elif field and msg.startswith(field + " "):
        msg = label + msg[len(field):]
    msg = re.sub(r"\s*\(--[a-z][a-z0-9-]*\)", "", msg)
    return msg if msg.startswith(label) else msg[:1].upper() + msg[1:]  # a label may start in lower case ("k")


def without_flags(msg: str) -> str:
    """An engine message for a page, as it is but for its parenthesised command-line flags (``(--mode set)``)."""
    return re.sub(r"\s*\(--[a-z][a-z0-9-]*[^)]*\)", "", msg)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "…")


def parse_number(text: str | None, kind: type, label: str) -> int | float:
    """``text`` as an int (``kind`` int: whole numbers only) or a float (``nan``/``inf`` parse; the engine refuses
    them). Empty, ``abc`` or ``2.5`` for a whole number raise a LabError naming ``label``."""
    t = (text or "").strip()
    what = "a whole number" if kind is int else "a number"
    if not t:
        raise LabError(f"{label} is empty: type {what}")
    if kind is int:
        try:
            return int(t)
        except ValueError:
            raise LabError(f"{label} must be {what}, got {_shown(t)}") from None
    try:
        return float(t)
    except ValueError:
        raise LabError(f"{label} must be {what}, got {_shown(t)}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) >= 1e-4 or value == 0 else repr(value)
    return str(value)


class Form:
    """The checked fields of one job form. ``ok`` is False while any field is bad; ``problems`` lists them."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}
        self.hidden: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def problems(self) -> list[str]:
        return list(self.errors.values())

    def refuse(self, key: str, message: str, where=None, hidden: bool = False) -> None:
        """Record a problem of field ``key`` and show it in ``where`` (under the field)."""
        self.errors[key] = message
        (where or st).error(message)
        if hidden:
            self.hidden.append(message)

    def number(self, where, label: str, key: str, default: Any, *, kind: type = int,
               check: Callable[[Any], Any] | None = None, says: str | None = None, help: str | None = None,
               persist: bool = True, hidden: bool = False) -> Any:
        """A text box for one number, parsed as ``kind`` and passed through ``check`` (an engine check that returns
        the value or raises LabError). Returns the value, or None (with the message under the box) when refused.
        ``says``: how messages name the field when the label is long (default: the label). ``hidden``: the box sits
        in a popover, so its message is also listed by :meth:`show_hidden`."""
        where = where or st
        kwargs = {"persist_state": "session"} if persist else {}
        text = where.text_input(label, value=_fmt(default), key=key, help=help, **kwargs)
        try:
            value = parse_number(text, kind, says or label)
            if check is not None:
                checked = check(value)
                value = value if checked is None else checked
        except LabError as exc:
            self.refuse(key, page_message(exc, says or label), where, hidden)
            return None
        return value

    def show_hidden(self, where=None) -> None:
        """The problems of fields inside closed popovers, where they would not be seen."""
        for msg in self.hidden:
            (where or st).error(msg)


# ------------------------------------------------------------------------------------------------ engine checks


def recovery_check(name: str) -> Callable[[Any], Any]:
    """The engine's rule for ``RecoveryConfig`` field ``name``."""
    from engine.recovery.config import check_field

    return lambda value: check_field(name, value)


def seed_check(value: int) -> int:
    """Seeds: the engine's rule (``RecoveryConfig``'s, which flips runs share)."""
    return recovery_check("seed")(value)


def generation_check(name: str, label: str) -> Callable[[Any], Any]:
    """``GenerationConfig``'s own check of field ``name`` (it is built with that one value); its message, which names
    the field in code (``max_new_tokens``), names it by ``label``."""
    from engine.method.generation import GenerationConfig

    def check(value):
        try:
            GenerationConfig(**{name: value})
        except LabError as exc:
            raise LabError(page_message(exc, label, name)) from None
        return value

    return check


def at_least_one(label: str) -> Callable[[Any], Any]:
    """A count of at least 1 (the engine's rule for counts, e.g. ``load_prompts``' limit)."""

    def check(value):
        if value < 1:
            raise LabError(f"{label} must be at least 1, got {value}")
        return value

    return check


def loaded_model():
    """The sidebar's loaded model (for its context length), or None when it does not load."""
    from ui import state

    try:
        return state.get_lm()
    except LabError:
        return None


def between(lo: int, hi: int, label: str, why: str = "") -> Callable[[Any], Any]:
    """A page-side range (where the page knows a bound the engine learns only later, e.g. the run's valid flips)."""

    def check(value):
        if not lo <= value <= hi:
            raise LabError(f"{label} must be from {lo} to {hi}{f' ({why})' if why else ''}, got {value}")
        return value

    return check


def chain(*checks: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value):
        for c in checks:
            out = c(value)
            value = value if out is None else out
        return value

    return check


def context_check(lm, label: str) -> Callable[[Any], Any]:
    """A token count must fit the loaded model's context (its rotary tables end there)."""
    n_ctx = int(getattr(getattr(getattr(lm, "model", None), "cfg", None), "n_ctx", 0) or 0)

    def check(value):
        if n_ctx and value > n_ctx:
            raise LabError(f"{label} must be at most the model's context, {n_ctx} tokens, got {value}")
        return value

    return check


def budgets(where, text: str, form: Form, key: str) -> list[float] | None:
    """A sweep's budget list (``0, 2, 5``): every item a number, then the engine's ``check_budgets``."""
    from engine.recovery.sweep import check_budgets

    parts = [p.strip() for p in (text or "").replace(";", ",").split(",") if p.strip()]
    try:
        values = [parse_number(p, float, "Each budget") for p in parts]
        return check_budgets(values)
    except LabError as exc:
        msg = page_message(exc, "Budgets").replace("Budgets needs", "Budgets need").replace("Sweep budgets must", "Budgets must")
        form.refuse(key, f"{msg} (e.g. 0, 2, 5, 10)", where)
        return None


def top_k_check(d_sae: int | None) -> Callable[[int], int]:
    """Attribution's k: the engine's ``check_top_k``, and at most the SAE's width when it is known here."""
    from engine.attribution.driver import check_top_k

    def check(value: int) -> int:
        check_top_k(value)
        if d_sae is not None and value > d_sae:
            raise LabError(f"k must be at most the SAE's width, d_sae = {d_sae}, got {value}")
        return value

    return check


def delta_layer_clamped(config: dict, delta_layer: int) -> bool:
    """Whether a clamp of the run reads δ's layer (attribution then goes through that SAE)."""
    hook = f"blocks.{int(delta_layer)}.hook_resid_post"
    rows = config.get("clamps") or []
    if any("hook" not in row for row in rows):  # a row that does not say its hook: leave the check to the engine
        return True
    return any(row["hook"] == hook for row in rows)


def attribution_d_sae(config: dict, delta_layer: int | None) -> int | None:
    """The width of the run's clamped SAE at δ's layer (what attribution splits δ through), or None when it is not
    at hand (no clamp there, or the SAE does not load): the job then checks k itself."""
    from ui import state

    if delta_layer is None or config.get("model") != state.model_choice()[0]:  # another model's SAEs are not loaded here
        return None
    hook = f"blocks.{int(delta_layer)}.hook_resid_post"
    for row in config.get("clamps") or []:
        if row.get("hook") == hook:
            from engine.method.clamp_sets import sae_spec_of

            try:
                return int(state.load_sae_spec(sae_spec_of(row["sae"])).d_sae)
            except (LabError, KeyError, TypeError, ValueError):
                return None
    return None


def delta_layer_sae(text: str, delta_layer: int):
    """The SAE typed for attribution when δ's layer has no clamped SAE: loaded for the chosen model and reading δ's
    hook, else a LabError in the page's words."""
    from ui import state

    hook = f"blocks.{int(delta_layer)}.hook_resid_post"
    spec = (text or "").strip()
    if not spec:
        raise LabError(f"Type an SAE that reads {hook} (δ's layer) to split δ through it")
    sae = state.load_sae_spec(spec)
    if sae.hook_name != hook:
        raise LabError(f"The SAE {spec} reads {sae.hook_name}, but δ sits at {hook}: choose an SAE at δ's layer")
    return sae


def feature_check(sae) -> Callable[[int], int]:
    """One feature index of ``sae``: the engine's ``check_feature`` (its message names the SAE's width)."""
    from engine.features.search import check_feature

    return lambda value: check_feature(sae, value)


def clamp_value_check(value: float) -> float:
    from engine.method.clamp import check_value

    return check_value(value)


def feature_list(where, text: str, sae, form: Form, key: str) -> list[int] | None:
    """Typed feature indices (``3, 17, 42``): the engine's ``parse_features`` and ``check_feature`` on each."""
    from engine.features.search import check_feature
    from engine.method.presets import parse_features

    if (text or "").strip().lower() == "auto":  # as on the command line: the features of the SAE's shipped preset
        from engine.method.presets import load_preset, preset_path

        path = preset_path(sae)
        if path is None:
            form.refuse(key, "“auto” means the SAE's shipped preset, and this SAE has none: type indices such as 3, 17, 42.", where)
            return None
        try:
            feats = [check_feature(sae, f) for f in load_preset(path, sae).features]
        except LabError as exc:
            form.refuse(key, f"“auto” means the SAE's shipped preset, which cannot be used: {page_message(exc, 'Feature indices')}", where)
            return None
        where.caption(f"auto: the {len(feats)} features of the SAE's shipped preset ({', '.join(map(str, feats[:12]))}"
                      f"{' …' if len(feats) > 12 else ''}), with the value typed here.")
        return feats
    try:
        feats = parse_features(text or "")
        return [check_feature(sae, f) for f in feats]
    except LabError as exc:
        form.refuse(key, page_message(exc, "Feature indices"), where)
        return None
