"""Run directories on disk: atomic JSON/JSONL files, the catalogue of runs, reopening a run, hand labels."""
