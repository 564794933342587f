"""``--config FILE`` for ``flips`` and ``recover``: a ready configuration fills the options the command line leaves out.

Flags given on the command line always win; the parser records which ones were given (not merely equal to their
defaults), so ``--max-new-tokens 64`` overrides a configuration's 128 even though 64 is the default. Before anything
loads, the files the configuration needs are looked up in the local Hugging Face cache; with the hub unreachable a
missing file fails in seconds with the list of what to download.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import HubUnreachableError, LabError

if TYPE_CHECKING:  # the parser is built before any command runs: keep torch out of its imports
    from engine.method.run_config import RunConfig

logger = logging.getLogger(__name__)

_GIVEN = "_flags_given"
"""Namespace attribute: the dests whose flags appeared on the command line."""
_TRACKED: dict[type, type] = {}


def add_config_option(parser: argparse.ArgumentParser, optional: tuple[str, ...] = ()) -> None:
    """Add ``--config`` to ``parser`` (call last), make the ``optional`` dests not required, and record given flags."""
    parser.add_argument("--config", default=None, help="a ready configuration (configs/*.json): fills the options not given "
                        "here, and checks first that its files are in the local Hugging Face cache (docs/PAPER_CONFIG.md)")
    for action in parser._actions:
        if action.dest in optional:
            action.required = False
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        action.__class__ = _tracked(type(action))


def _tracked(cls: type) -> type:
    if cls not in _TRACKED:
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: N807
            setattr(namespace, _GIVEN, getattr(namespace, _GIVEN, frozenset()) | {self.dest})
            cls.__call__(self, parser, namespace, values, option_string)

        _TRACKED[cls] = type(f"Given{cls.__name__}", (cls,), {"__call__": __call__})
    return _TRACKED[cls]


def given(args: argparse.Namespace) -> frozenset[str]:
    """The dests whose flags were on the command line."""
    return getattr(args, _GIVEN, frozenset())


def _fill(args: argparse.Namespace, dest: str, value) -> None:
    if value is not None and dest not in given(args) and hasattr(args, dest):
        setattr(args, dest, value)


def apply_flips_config(args: argparse.Namespace) -> RunConfig | None:
    """Fill ``flips`` options from ``args.config`` and check the cache; None without ``--config``."""
    from engine.method.run_config import read_run_config

    if not getattr(args, "config", None):
        if args.prompts is None:
            raise LabError("flips needs --prompts (or a --config that names them)")
        return None
    cfg = read_run_config(args.config)
    for dest, value in (("model", cfg.model), ("dtype", cfg.dtype), ("device", cfg.device), ("prompts", cfg.prompts),
                        ("max_new_tokens", cfg.generation.max_new_tokens), ("batch_size", cfg.generation.batch_size),
                        ("seed", cfg.generation.seed)):
        _fill(args, dest, value)
    single = given(args) & {"sae", "features", "mode", "value"}
    if not single:
        _fill(args, "clamp", cfg.clamp_path())
    if args.prompts is None:
        raise LabError(f"configuration {cfg.name} names no prompts: pass --prompts (e.g. an AdvBench JSON file)")
    check_cached(cfg, args)
    return cfg


def config_rows(cfg: RunConfig | None, args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """The clamp rows with the configuration's mode and value, when the clamp file is the configuration's own."""
    if cfg is None or args.clamp != cfg.clamp_path():
        return rows
    return cfg.clamp_rows(rows)


def check_cached(cfg: RunConfig, args: argparse.Namespace) -> None:
    """Raise (hub unreachable) or warn (hub reachable: the loaders download) about files not in the cache."""
    from engine.lm.hub import hub_reachable
    from engine.method.clamp_sets import read_clamp_file
    from engine.method.run_config import missing_downloads

    clamp = getattr(args, "clamp", None)
    rows = None
    if clamp is not None and (clamp.startswith("preset:") or Path(clamp).is_file()):
        rows, _ = read_clamp_file(clamp)
    missing = missing_downloads(cfg, rows, model_files=args.model == cfg.model, clamp_file=clamp,
                                need_clamp=clamp is not None or "sae" not in given(args))
    unbuilt = [m for m in missing if m.startswith("clamp file")]
    if unbuilt:
        raise LabError(f"configuration {cfg.name}: {unbuilt[0]}")
    if not missing:
        return
    if hub_reachable():
        logger.warning("configuration %s: not in the local Hugging Face cache yet, the loaders will download: %s",
                       cfg.name, ", ".join(missing))
        return
    raise HubUnreachableError(f"configuration {cfg.name}: not in the local Hugging Face cache and the hub is unreachable; "
                              f"download these {len(missing)} files first: {', '.join(missing)}")


def apply_recover_config(args: argparse.Namespace) -> RunConfig | None:
    """Fill the RecoveryConfig options of ``recover`` from ``args.config`` (flags given win); None without it."""
    from engine.method.run_config import read_run_config

    if not getattr(args, "config", None):
        return None
    cfg = read_run_config(args.config)
    for key, value in cfg.recovery.items():
        _fill(args, key, value)
    return cfg
