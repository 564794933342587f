"""``python -m engine …``: the headless contract (docs/CLI.md), calling the same functions as the dashboard."""
