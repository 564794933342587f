"""Clamped generation speed ÷ plain generation speed, default model, same prompts, one run.

    .venv/bin/python bench/generation.py [--prompts 8] [--tokens 40] [--repeats 2]

Plain and clamped batches alternate so drifting machine load hits both alike. Goal: ratio ≥ 0.85.
"""

from __future__ import annotations

import argparse
import time

from _common import default_clamp, prompts, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from engine.generation import GenerationConfig, generate
    from engine.models import load_model

    lm = load_model("default", args.device)
    spec, clamp_desc = default_clamp(lm)
    ps, source = prompts(args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.tokens, batch_size=args.batch_size)
    list(generate(lm, ps[:1], GenerationConfig(max_new_tokens=2)))  # warm-up
    totals = {"plain": [0, 0.0], "clamped": [0, 0.0]}
    for _ in range(args.repeats):
        for name, specs in (("plain", []), ("clamped", [spec])):
            t = time.perf_counter()
            outs = list(generate(lm, ps, cfg, specs=specs))
            totals[name][1] += time.perf_counter() - t
            totals[name][0] += sum(len(o.token_ids) for o in outs)
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    write("generation", {
        "what": "generated tokens per second, greedy, batched; clamped ÷ plain",
        "device": str(lm.device), "prompts": len(ps), "prompt_source": source, "max_new_tokens": args.tokens,
        "batch_size": args.batch_size, "repeats": args.repeats, "clamp": clamp_desc,
        "plain_tokens_per_s": rate["plain"], "clamped_tokens_per_s": rate["clamped"],
        "ratio_clamped_over_plain": rate["clamped"] / rate["plain"], "goal": ">= 0.85",
    })


if __name__ == "__main__":
    main()
