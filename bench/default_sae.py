"""Quality and flip figures of the shipped default SAE, written as JSON.

    .venv/bin/python bench/default_sae.py [--out bench/results/default_sae.json] [--batch-size 50] [--alpaca N]

* quality: each shipped SAE's ``quality.json`` (held-out explained variance, L0, dead fraction) and preset;
* flips: ``python -m engine flips --features auto`` (the same CLI code path, in-process) on ``builtin:harmless``
  and on the first N (default 100) prompts of ``../shared/data/alpaca_harmless.json`` — skipped, and said so, when
  that file is absent. Counted: valid flips, and among them fluent refusals vs degenerate texts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALPACA = ROOT.parent / "shared" / "data" / "alpaca_harmless.json"


def quality_figures() -> dict:
    from engine.paths import DEFAULT_SAE_DIR

    out = {}
    for folder in sorted(p for p in DEFAULT_SAE_DIR.iterdir() if (p / "quality.json").is_file()):
        q = json.loads((folder / "quality.json").read_text())
        preset = json.loads((folder / "preset.json").read_text())
        out[folder.name] = {
            "heldout": q["heldout"], "topk_heldout": q["topk_heldout"], "served": q["served"], "floors": q["floors"],
            "meets_floors": q["meets_floors"], "preset": {"k": preset["k"], "alpha": preset["alpha"], "features": preset["features"]},
        }
    return out


def flip_figures(prompts: str, run_dir: Path, batch_size: int, limit: int | None, sae: str = "default") -> dict:
    from engine.cli.main import main as cli_main

    args = ["flips", "--prompts", prompts, "--features", "auto", "--sae", sae, "--out", str(run_dir), "--batch-size", str(batch_size)]
    if limit:
        args += ["--limit", str(limit)]
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(args)
    if rc != 0:
        raise SystemExit(f"flips failed on {prompts} (exit {rc})")
    rows = [json.loads(line) for line in (run_dir / "flips.jsonl").read_text().splitlines() if line.strip()]
    valid = [r for r in rows if r["valid"]]
    fluent = [r for r in valid if not r["clamped_degenerate"]]
    return {
        "command": "python -m engine " + " ".join(args),
        "n_prompts": len(rows),
        "n_base_refusal": sum(r["base_refusal"] for r in rows),
        "n_clamped_refusal": sum(r["clamped_refusal"] for r in rows),
        "n_valid": len(valid),
        "valid_rate": round(len(valid) / len(rows), 3) if rows else 0.0,
        "n_valid_fluent": len(fluent),
        "n_valid_degenerate": len(valid) - len(fluent),
        "fluent_share_of_valid": round(len(fluent) / len(valid), 3) if valid else 0.0,
        "seconds": round(time.time() - t0, 1),
        "examples": [{"prompt": r["prompt"], "clamped_text": r["clamped_text"]} for r in fluent[:5]],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "default_sae.json"))
    p.add_argument("--runs", default="/tmp/sae-lab-bench", help="where the flip run directories go")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--alpaca", type=int, default=100, help="first N alpaca prompts")
    p.add_argument("--sae", default="default", help="default or default:HOOK")
    p.add_argument("--quality-only", action="store_true", help="refresh the quality figures, keep the flip figures in --out")
    args = p.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    if args.quality_only:
        result = json.loads(out.read_text()) if out.is_file() else {"flips": {}}
        result["quality"] = quality_figures()
        out.write_text(json.dumps(result, indent=2))
        return 0
    result: dict = {"quality": quality_figures(), "flips": {}}
    result["flips"]["builtin_harmless"] = flip_figures("builtin:harmless", runs / "builtin_harmless", args.batch_size, None, args.sae)
    if ALPACA.is_file():
        result["flips"]["alpaca_first_100"] = flip_figures(str(ALPACA), runs / "alpaca", args.batch_size, args.alpaca, args.sae)
    else:
        result["flips"]["alpaca_first_100"] = {"skipped": f"{ALPACA} is absent"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in result["flips"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
