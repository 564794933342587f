"""``flips``: base vs clamped generations and valid flips, written by the same writer the dashboard uses."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.cli.args import add_dataclass_options, finite_float, integer, positive_int
from engine.cli.config_option import add_config_option, apply_flips_config, config_rows
from engine.errors import LabError
from engine.lm.dtypes import DTYPE_CHOICES
from engine.scale.config import ExecutorConfig

logger = logging.getLogger(__name__)


def add_command(sub) -> None:
    f = sub.add_parser("flips", help="base vs clamped generations and valid flips")
    f.add_argument("--prompts", required=True, help="builtin:harmless | builtin:harmful | FILE.json/.jsonl/.csv")
    f.add_argument("--out", required=True, help="run directory to write")
    f.add_argument("--model", default="default", help="default | tiny | a local Hugging Face checkpoint folder | a TransformerLens official name (from the HF cache first)")
    f.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="number format: auto (float32 on CPU, bfloat16 on CUDA above 1B parameters) | float32 | bfloat16 | float16")
    f.add_argument("--clamp", default=None, help="a clamp set across SAEs: FILE.json (rows {sae, features, mode, values}) or "
                   "preset:NAME (e.g. preset:default-multi); replaces --sae/--features/--mode/--value")
    f.add_argument("--sae", default=None, help="default | default:HOOK | tiny | LOCAL_FOLDER | RELEASE/SAE_ID (default: default)")
    f.add_argument("--features", default=None, help="auto (the SAE's preset) or i,j,k (default: auto)")
    f.add_argument("--mode", default=None, help="set | multiply | zero (default: the preset's, else set)")
    f.add_argument("--value", type=finite_float, default=None, help="clamp value (set) or factor (multiply)")
    f.add_argument("--max-new-tokens", type=positive_int, default=64)
    f.add_argument("--batch-size", type=positive_int, default=8)
    f.add_argument("--limit", type=integer, default=None, help="use the first N prompts")
    f.add_argument("--seed", type=integer, default=0)
    f.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    f.add_argument("--resume", action="store_true", help="continue an interrupted flips run in the same --out (same settings)")
    f.add_argument("--judge", default=None, help="JSON file of judge lists/thresholds (engine.method.judge.JudgeConfig)")
    add_dataclass_options(f, ExecutorConfig)
    add_config_option(f, optional=("prompts",))
    f.set_defaults(handler=cmd_flips)


def cmd_flips(args) -> dict:
    from engine.cli.recovery import _executor
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.clamp_sets import load_clamp_set, read_clamp_file
    from engine.method.flips import write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.presets import resolve_clamp
    from engine.method.prompts import load_prompts
    from engine.scale.streams import Progress
    from engine.store.files import prepare_run_dir, read_json

    # Cheap checks first, so bad input fails before the model loads.
    config = apply_flips_config(args)  # --config fills what the flags leave out, and checks the cache
    exe = _executor(args)
    prompts = load_prompts(args.prompts, args.limit)
    run = prepare_run_dir(args.out)
    if (run / "flips.jsonl").exists() and not args.resume:
        raise LabError(f"{run} already holds a flips run; pass --resume to continue it, or choose a new --out")
    judge_cfg = JudgeConfig.from_json(read_json(Path(args.judge))) if args.judge else JudgeConfig()
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    rows = None
    if args.clamp is not None:
        single = [flag for flag, value in (("--sae", args.sae), ("--features", args.features), ("--mode", args.mode),
                                           ("--value", args.value)) if value is not None]
        if single:
            raise LabError(f"--clamp gives the whole clamp set; drop {', '.join(single)}")
        rows = config_rows(config, args, read_clamp_file(args.clamp)[0])
    dtype = args.dtype
    if args.resume and dtype == "auto" and (run / "config.json").is_file():  # a resume keeps the run's number format
        dtype = read_json(run / "config.json").get("dtype", "auto")
    lm = load_model(args.model, args.device, dtype)
    if rows is not None:
        specs = load_clamp_set(lm, rows)
    else:
        specs = [resolve_clamp(load_sae(args.sae or "default", lm), args.features or "auto", args.mode, args.value)]
    settings = {"model": args.model, "prompts": args.prompts, "limit": args.limit, "source": "cli"}
    if args.clamp is not None:
        settings["clamp_file"] = args.clamp

    def log(row: dict) -> None:
        logger.debug("prompt %d/%d valid=%s", row["id"] + 1, len(prompts), row["valid"])

    progress = Progress(len(prompts), "flips")
    try:
        return write_flips_run(lm, specs, prompts, gen, judge_cfg, run, settings, on_record=log, resume=args.resume,
                               exe=exe, progress=progress)
    finally:
        progress.close()
