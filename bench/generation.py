"""Clamped generation speed ÷ plain generation speed, default model, same prompts, one run.

    .venv/bin/python bench/generation.py [--prompts 8] [--tokens 40] [--repeats 2]

Plain and clamped batches alternate so drifting machine load hits both alike. Goal: ratio ≥ 0.85.
Speed counts decoded row-steps (batch rows × decoding steps), not answer tokens: a batch keeps decoding rows that
already stopped, and plain answers stop earlier than clamped refusals, so answer tokens/s would flatter the clamp
(measured on the same run of 8 prompts × 40 tokens, 6 repeats: 1.10 by answer tokens, 0.97 by row-steps).
"""

from __future__ import annotations

import argparse
import time

from _common import default_clamp, prompts, write


def row_steps(outs, batch_size: int, max_new_tokens: int) -> int:
    """Rows × decoding steps actually run: each batch decodes until its longest answer (or its stop token) ends."""
    total = 0
    for start in range(0, len(outs), batch_size):
        chunk = outs[start : start + batch_size]
        steps = max(min(max_new_tokens, len(o.token_ids) + (o.stop_id is not None)) for o in chunk)
        total += steps * len(chunk)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from engine.lm.loading import load_model
    from engine.method.generation import GenerationConfig, generate

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
            totals[name][0] += row_steps(outs, args.batch_size, args.tokens)
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    write("generation", {
        "what": "decoded row-steps per second (batch rows × decoding steps), greedy, batched; clamped ÷ plain",
        "device": str(lm.device), "prompts": len(ps), "prompt_source": source, "max_new_tokens": args.tokens,
        "batch_size": args.batch_size, "repeats": args.repeats, "clamp": clamp_desc,
        "plain_row_steps_per_s": rate["plain"], "clamped_row_steps_per_s": rate["clamped"],
        "ratio_clamped_over_plain": rate["clamped"] / rate["plain"], "goal": ">= 0.85",
    })


if __name__ == "__main__":
    main()
