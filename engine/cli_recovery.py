"""CLI commands that continue a run: recover, sweep, attribute (added as their engines land)."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register the run-continuing subcommands on ``sub`` (none yet)."""
