"""CLI commands that continue a run: ``recover``, ``sweep`` (and ``attribute`` once it lands)."""

from __future__ import annotations

import argparse
import logging

from engine.errors import LabError

logger = logging.getLogger("engine")


def _recovery_args(p: argparse.ArgumentParser, budget: bool = True) -> None:
    from engine.cli import _finite_float, _positive_int

    p.add_argument("--run", required=True, help="a run directory written by `flips`")
    if budget:
        p.add_argument("--budget", type=float, default=40.0, help="norm bound of δ (default 40, per position)")
    p.add_argument("--budget-kind", default="per_position", help="per_position | matrix")
    p.add_argument("--relative", action="store_true", help="budget is a fraction of the median residual norm")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--boundary-steps", type=int, default=0)
    p.add_argument("--lr", type=_finite_float, default=0.1)
    p.add_argument("--projection", default="encoder", help="encoder | none | jacobian")
    p.add_argument("--method", default="delta", help="delta | soft-suffix")
    p.add_argument("--where", default="prompt+gen", help="prompt | prompt+gen")
    p.add_argument("--delta-layer", type=int, default=None, help="layer of δ (jacobian: below the clamp)")
    p.add_argument("--answer-tokens", type=_positive_int, default=48)
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--drift-threshold", type=_finite_float, default=None,
                   help="keep the best δ with drift ≤ this (default 0.05; none for --projection none)")
    p.add_argument("--limit", type=int, default=None, help="recover only the first N valid flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | mps (default: the run's)")


def add_commands(sub) -> None:
    r = sub.add_parser("recover", help="optimise δ under the clamp for each valid flip")
    _recovery_args(r)
    r.set_defaults(handler=cmd_recover)
    s = sub.add_parser("sweep", help="recovery at several budgets (0 = defended model)")
    _recovery_args(s, budget=False)
    s.add_argument("--budgets", required=True, help="comma-separated budgets, e.g. 0,2,5,10,20")
    s.set_defaults(handler=cmd_sweep)
    a = sub.add_parser("attribute", help="decompose each recovered δ and replay its parts under the clamp")
    a.add_argument("--run", required=True)
    a.add_argument("--top-k", type=int, default=10, help="number of top non-clamped features (0..d_sae)")
    a.add_argument("--limit", type=int, default=None)
    a.add_argument("--device", default=None)
    a.set_defaults(handler=cmd_attribute)


def _config(args, budget: float):
    from engine.recovery.config import RecoveryConfig

    return RecoveryConfig(
        projection=args.projection, method=args.method, where=args.where, budget=budget, budget_kind=args.budget_kind,
        budget_relative=args.relative, steps=args.steps, boundary_steps=args.boundary_steps, lr=args.lr,
        answer_tokens=args.answer_tokens, drift_threshold=args.drift_threshold, delta_layer=args.delta_layer,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
    )


def _model_for(args):
    from engine.models import load_model
    from engine.recovery.run import valid_flips
    from engine.runs import existing_run, read_json

    run = existing_run(args.run, "flips.jsonl")
    valid_flips(run, args.limit)  # fail on "no valid flips" before loading anything
    config = read_json(run / "config.json")
    return run, load_model(config["model"], args.device or config.get("device", "auto"))


def cmd_recover(args) -> dict:
    from engine.recovery.run import run_recovery

    cfg = _config(args, args.budget)
    run, lm = _model_for(args)
    return run_recovery(run, cfg, lm=lm, limit=args.limit, on_event=_log_event)


def cmd_sweep(args) -> dict:
    from engine.recovery.run import run_sweep

    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise LabError(f"--budgets must be comma-separated numbers, got {args.budgets!r}") from None
    cfg = _config(args, 1.0)
    run, lm = _model_for(args)
    return run_sweep(run, budgets, cfg, lm=lm, limit=args.limit, on_event=_log_event)


def cmd_attribute(args) -> dict:
    from engine.attribution.run import run_attribution
    from engine.models import load_model
    from engine.runs import existing_run, read_json

    if args.top_k < 0:
        raise LabError(f"--top-k must be ≥ 0, got {args.top_k}")
    run = existing_run(args.run, "recovery.jsonl")
    config = read_json(run / "config.json")
    lm = load_model(config["model"], args.device or config.get("device", "auto"))
    return run_attribution(run, args.top_k, lm=lm, limit=args.limit)


def _log_event(ev) -> None:
    if ev.step % 10 == 0:
        logger.info("step %d prompt %d loss %.3f drift %.4f |δ| %.1f", ev.step, ev.prompt_id, ev.loss, ev.drift, ev.delta_norm)
