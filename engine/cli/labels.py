"""``labels import|export|agreement``: hand labels of a run (``RUN/labels.jsonl``, ``engine.store.labels``) as CSV with
exactly the columns ``flip_id,label,labeller,note``, and the judge–human agreement (``engine.store.agreement``)."""

from __future__ import annotations

from pathlib import Path

from engine.cli.args import Parser
from engine.errors import LabError


def add_commands(sub) -> None:
    group = sub.add_parser("labels", help="hand labels of a run: import/export CSV, judge–human agreement")
    inner = group.add_subparsers(dest="labels_command", required=True, parser_class=Parser)
    i = inner.add_parser("import", help="append the labels of a CSV (flip_id,label,labeller,note) to a run; all rows or none")
    i.add_argument("--run", required=True, help="a run directory written by `flips`")
    i.add_argument("file", help="CSV with exactly the columns flip_id,label,labeller,note")
    i.set_defaults(handler=cmd_import)
    e = inner.add_parser("export", help="write a run's current labels as CSV (flip_id,label,labeller,note); never overwrites")
    e.add_argument("--run", required=True, help="a run directory written by `flips`")
    e.add_argument("file", help="CSV file to write (must not exist)")
    e.set_defaults(handler=cmd_export)
    a = inner.add_parser("agreement", help="print the judge-vs-human table, Cohen's κ and inter-labeller κ as JSON")
    a.add_argument("--run", required=True, help="a run directory written by `flips`")
    a.set_defaults(handler=cmd_agreement)


def _run(args) -> Path:
    from engine.store.files import existing_run

    return existing_run(args.run, "flips.jsonl")


def cmd_import(args) -> dict:
    from engine.store import label_csv, labels

    run = _run(args)
    path = Path(args.file)
    if not path.is_file():
        raise LabError(f"label file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LabError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror or exc}") from None
    n = label_csv.import_label_csv(run, text, source=str(path))
    return {"run": str(run), "imported": n, "labels_file": str(run / labels.LOG_NAME), "counts": labels.label_counts(run)}


def cmd_export(args) -> dict:
    from engine.store import label_csv

    run = _run(args)
    n = label_csv.write_label_csv(run, Path(args.file))
    return {"run": str(run), "exported": n, "file": str(args.file)}


def cmd_agreement(args) -> dict:
    from engine.store.agreement import agreement

    run = _run(args)
    return {"run": str(run), **agreement(run).to_json()}
