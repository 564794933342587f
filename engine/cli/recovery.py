"""``recover``, ``sweep`` and ``attribute``: the commands that continue a flips run.

The recovery options are derived from :class:`~engine.recovery.config.RecoveryConfig` (defaults, choices and help
from its field docstrings), so the CLI, the dashboard and the saved ``recovery_config.json`` share one definition.
"""

from __future__ import annotations

import logging

from engine.cli.args import add_dataclass_options, dataclass_from_args, float_list, integer
from engine.cli.config_option import add_config_option, apply_recover_config
from engine.lm.dtypes import DTYPE_CHOICES
from engine.recovery.config import RecoveryConfig, StepEvent
from engine.scale.config import ExecutorConfig
from engine.scale.streams import Progress
from engine.store.valid_set import VALID_CHOICES, VALID_HELP

logger = logging.getLogger(__name__)


def _run_options(p) -> None:
    p.add_argument("--run", required=True, help="a run directory written by `flips`")
    p.add_argument("--limit", type=integer, default=None, help="use only the first N records")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | mps (default: the run's)")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="number format: auto | float32 | bfloat16 | float16 "
                   "(default: the run's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted record with the same settings")
    add_dataclass_options(p, ExecutorConfig)


def _record_options(p, kind: str) -> None:
    p.add_argument("--name", default=None, help=f"name of the {kind} record under RUN/recoveries/ (default: generated "
                   f"from projection, budget and time; with --resume: the newest {kind})")
    p.add_argument("--valid", default="judge", choices=VALID_CHOICES,
                   help="which flips to use: " + "; ".join(f"{k} = {v}" for k, v in VALID_HELP.items()))


def add_commands(sub) -> None:
    r = sub.add_parser("recover", help="optimise δ under the clamp for each valid flip")
    _run_options(r)
    _record_options(r, "recovery")
    add_dataclass_options(r, RecoveryConfig)
    add_config_option(r)
    r.set_defaults(handler=cmd_recover)
    s = sub.add_parser("sweep", help="recovery at several budgets (0 = defended model)")
    _run_options(s)
    _record_options(s, "sweep")
    s.add_argument("--budgets", required=True, type=float_list, help="comma-separated budgets, e.g. 0,2,5,10,20")
    add_dataclass_options(s, RecoveryConfig, skip=("budget",))
    s.set_defaults(handler=cmd_sweep)
    a = sub.add_parser("attribute", help="decompose each recovered δ and replay its parts under the clamp")
    _run_options(a)
    a.add_argument("--top-k", type=integer, default=10, help="number of top non-clamped features (0..d_sae)")
    a.add_argument("--recovery", default=None, help="the recovery record to attribute (default: the newest)")
    a.add_argument("--sae", default=None, help="an SAE at δ's layer, when no clamp of the run reads it (default: the clamped one)")
    a.set_defaults(handler=cmd_attribute)


def _open(args, valid: str | None):
    """The run directory and its model, after the cheap checks (so bad input fails before anything loads)."""
    from engine.lm.loading import load_model
    from engine.store.files import existing_run, read_json
    from engine.store.records import check_name
    from engine.store.valid_set import valid_flips

    run = existing_run(args.run, "flips.jsonl")
    if valid is not None:
        valid_flips(run, args.limit, valid)
    for name in (getattr(args, "name", None), getattr(args, "recovery", None)):
        if name is not None:
            check_name(name)
    config = read_json(run / "config.json")
    return run, load_model(config["model"], args.device or config.get("device", "auto"), args.dtype or config.get("dtype", "auto"))


def cmd_recover(args) -> dict:
    from engine.recovery.driver import run_recovery
    from engine.store.valid_set import valid_flips

    apply_recover_config(args)  # --config fills the recovery options the flags leave out
    cfg = dataclass_from_args(RecoveryConfig, args)
    exe = _executor(args)
    run, lm = _open(args, args.valid)
    progress = Progress(len(valid_flips(run, args.limit, args.valid)), "recover")
    try:
        return run_recovery(run, cfg, lm=lm, limit=args.limit, on_event=_log_event, name=args.name, resume=args.resume,
                            valid=args.valid, exe=exe, progress=progress)
    finally:
        progress.close()


def cmd_sweep(args) -> dict:
    from engine.recovery.sweep import check_budgets, run_sweep
    from engine.store.valid_set import valid_flips

    check_budgets(args.budgets)
    cfg = dataclass_from_args(RecoveryConfig, args, budget=1.0)
    exe = _executor(args)
    run, lm = _open(args, args.valid)
    progress = Progress(len(args.budgets) * len(valid_flips(run, args.limit, args.valid)), "sweep")
    try:
        return run_sweep(run, args.budgets, cfg, lm=lm, limit=args.limit, on_event=_log_event, name=args.name,
                         resume=args.resume, valid=args.valid, exe=exe, progress=progress)
    finally:
        progress.close()


def cmd_attribute(args) -> dict:
    from engine.attribution.driver import check_top_k, run_attribution
    from engine.store.files import existing_run
    from engine.store.records import get_record

    check_top_k(args.top_k)
    exe = _executor(args)
    record = get_record(existing_run(args.run, "flips.jsonl"), args.recovery, "recovery")
    run, lm = _open(args, None)
    if args.recovery is None:
        logger.info("attributing the newest recovery of %s: %s", run, record.name)
    n = int((record.summary or {}).get("n_valid", 0))
    progress = Progress(min(n, args.limit) if args.limit else n, "attribute")
    try:
        return run_attribution(run, args.top_k, lm=lm, limit=args.limit, sae_spec=args.sae, recovery=record.name,
                               resume=args.resume, exe=exe, progress=progress)
    finally:
        progress.close()


def _executor(args) -> ExecutorConfig:
    """The executor options, checked before anything loads (an unreachable Ray address fails here, in seconds)."""
    exe = dataclass_from_args(ExecutorConfig, args).check()
    if exe.is_ray:
        from engine.scale.pool import check_reachable, require_ray

        require_ray()
        if exe.address and exe.address != "auto":
            check_reachable(exe.address)
    return exe


def _log_event(ev: StepEvent) -> None:
    if ev.step % 10 == 0:
        logger.info("step %d prompt %d loss %.3f drift %.4f |δ| %.1f", ev.step, ev.prompt_id, ev.loss, ev.drift, ev.delta_norm)
