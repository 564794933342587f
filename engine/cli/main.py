"""``python -m engine …``: the parser and the one place errors become exit codes.

Every user mistake ends with exit code 2 and one line ``error: …`` on stderr, never a bare traceback. The
commands themselves live beside this module (``info``, ``flips``, ``recovery``, ``features``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.cli import features as features_cli
from engine.cli import flips, info, ksweep, recovery
from engine.cli import labels as labels_cli
from engine.cli import study as study_cli
from engine.cli.args import Parser
from engine.errors import LabError


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m engine", description="SAE post-intervention recovery lab (headless)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    info.add_command(sub)
    flips.add_command(sub)
    recovery.add_commands(sub)
    features_cli.add_command(sub)
    ksweep.add_command(sub)
    labels_cli.add_commands(sub)
    study_cli.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
        result = args.handler(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or --limit", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
