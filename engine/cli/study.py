"""``study sae-quality``: the method once per SAE on the prompts of one flips run, one table row per SAE
(``engine.study``, docs/STUDY.md)."""

from __future__ import annotations

import logging

from engine.cli.args import Parser, add_dataclass_options, dataclass_from_args, float_list, int_list, integer, positive_int

logger = logging.getLogger(__name__)

_RECOVERY_FIXED = ("projection", "delta_layer", "method")
"""Recovery settings the study sets itself: the encoder projection, δ at the SAE's layer, the δ method."""


def add_command(sub) -> None:
    from engine.recovery.config import RecoveryConfig
    from engine.scale.config import ExecutorConfig

    s = sub.add_parser("study", help="studies over several SAEs (sae-quality)")
    ss = s.add_subparsers(dest="study_command", required=True, parser_class=Parser)
    q = ss.add_parser("sae-quality", help="per SAE: preset, flips on a run's prompts, encoder recovery, attribution; one table")
    q.add_argument("--run", required=True, help="a flips run (folder, or a run name in the store) whose prompts every SAE is run on")
    q.add_argument("--sae", action="append", default=None,
                   help="an SAE to study (repeatable; default: every built SAE of the width ladder)")
    q.add_argument("--name", default=None, help="the study's name (default: sae-quality-<time>; with --resume: the newest study)")
    q.add_argument("--resume", action="store_true", help="continue a study: finished steps are skipped, an interrupted one continues")
    q.add_argument("--limit", type=positive_int, default=None, help="use the first N prompts of the run")
    q.add_argument("--preset", default="auto", choices=["auto", "search"],
                   help="auto: an SAE's own preset.json when it has one, else the recipe's search; search: always search")
    q.add_argument("--preset-ks", type=int_list, default=[10, 15], help="search grid: numbers of features K (default: 10,15)")
    q.add_argument("--preset-alphas", type=float_list, default=[3.0, 5.0], help="search grid: value multipliers α (default: 3,5)")
    q.add_argument("--preset-prompts", type=positive_int, default=None,
                   help="search: the first N of the recipe's held-out harmless prompts (default: all)")
    q.add_argument("--preset-max-new-tokens", type=positive_int, default=64, help="search: answer length (default: 64)")
    q.add_argument("--top-k", type=integer, default=10, help="attribution: number of top non-clamped features (default: 10)")
    add_dataclass_options(q, RecoveryConfig, skip=_RECOVERY_FIXED)
    add_dataclass_options(q, ExecutorConfig)
    q.set_defaults(handler=cmd_sae_quality)


def cmd_sae_quality(args) -> dict:
    from engine.cli.recovery import _executor
    from engine.recovery.config import RecoveryConfig
    from engine.study.config import StudyConfig
    from engine.study.quality_study import run_study

    recovery = dataclass_from_args(RecoveryConfig, args)
    cfg = StudyConfig(preset=args.preset, preset_ks=tuple(args.preset_ks), preset_alphas=tuple(args.preset_alphas),
                      preset_prompts=args.preset_prompts, preset_max_new_tokens=args.preset_max_new_tokens, limit=args.limit,
                      top_k=args.top_k, recovery={k: v for k, v in recovery.to_json().items() if k not in _RECOVERY_FIXED}).check()
    exe = _executor(args)
    last = {"phase": None}

    def progress(ev) -> None:
        if ev.phase != last["phase"]:
            last["phase"] = ev.phase
            logger.info("%s", ev.line)

    return run_study(args.run, args.sae, cfg, name=args.name, resume=args.resume, exe=exe, on_progress=progress).to_json()
