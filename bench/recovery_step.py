"""One recovery step ÷ one naive full-model step, default model, same tokens, one run; plus batch throughput.

    .venv/bin/python bench/recovery_step.py [--repeats 5] [--batch 8]

* recovery step: blocks ℓ+1..L−1 from the cached h(ℓ), gradient w.r.t. δ only, unembedding at answer positions,
  encoder projection and Adam (what ``engine.recovery.optimize`` does each step);
* naive A: full forward + backward with parameter gradients (what a straightforward implementation pays);
* naive B: full forward + backward with parameters frozen (gradient w.r.t. δ only, but all layers and all
  positions unembedded).
Throughput: prompts·steps per second at batch B vs batch 1 (same prompts). Goals: ratio A ≤ 0.30; on a GPU,
batch 8 throughput ≥ 4× batch 1.

Cross-layer: δ at layer 15 with the shipped multi-layer clamp (``preset:default-multi``, layers 15 and 20), one
``optimize_delta`` step of
``--projection jacobian`` (probes, penalty, correction steps) ÷ one ``optimize_delta`` step of the single-layer
encoder projection, same prompt, same run; for several probe settings and for the Gauss–Newton restoration (the
default). Goal: ≤ 3× the encoder step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import default_clamp, prompts, write


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16 (auto: bf16 on CUDA above 1B parameters)")
    args = ap.parse_args()

    from engine.lm.dtypes import dtype_name
    from engine.lm.loading import load_model
    from engine.method.clamp import clamped
    from engine.method.generation import GenerationConfig, generate
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.objective import DeltaObjective
    from engine.recovery.problem import build_problem, default_delta_layer
    from engine.recovery.projection import EncoderProjector

    lm = load_model("default", args.device, args.dtype)
    spec, clamp_desc = default_clamp(lm)
    ps, source = prompts(args.batch)
    answers = [g.text for g in generate(lm, ps, GenerationConfig(max_new_tokens=48, batch_size=args.batch))]
    flips = [{"id": i, "prompt": p, "base_text": a, "clamped_text": ""} for i, (p, a) in enumerate(zip(ps, answers))]
    layer = default_delta_layer([spec])
    cfg = RecoveryConfig()

    def make(batch):
        problem = build_problem(lm, [spec], batch, cfg.answer_tokens, layer)
        obj = DeltaObjective(lm, [spec], problem)
        rows = torch.zeros(problem.h_def.shape, device=lm.device, requires_grad=True)  # δ is fp32 in every dtype, as in optimize
        gen = torch.zeros(problem.h_def.shape[0], lm.d_model, device=lm.device, requires_grad=True)
        opt = torch.optim.Adam([rows, gen], lr=0.1)
        proj = EncoderProjector(obj.same_layer)

        def step():
            opt.zero_grad(set_to_none=True)
            obj.losses(obj.evaluate(rows, gen), "answer", 5.0).sum().backward()
            with torch.no_grad():
                for t in (rows, gen):
                    t.grad.copy_(proj(t.grad))
            opt.step()

        return problem, step

    problem1, step1 = make(flips[:1])
    tokens = problem1.tokens
    n_tokens = tokens.shape[1]
    t_step = timed(step1, args.repeats)

    params = [p for p in lm.model.parameters()]

    def naive(with_params: bool):
        for p in params:
            p.requires_grad_(with_params)
        delta = torch.zeros(1, n_tokens, lm.d_model, device=lm.device, requires_grad=True)

        def add(act, hook):
            return act + delta

        def run():
            lm.model.zero_grad(set_to_none=True)
            with clamped(lm, [spec], [(f"blocks.{layer}.hook_resid_post", add)]):
                logits = lm.model(tokens)
            logp = logits.log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])
            (-logp.mean()).backward()

        return run

    with torch.enable_grad():
        t_full_params = timed(naive(True), args.repeats)
        t_full_frozen = timed(naive(False), args.repeats)
    for p in params:
        p.requires_grad_(False)

    _, step_b = make(flips[: args.batch])
    t_batch = timed(step_b, max(2, args.repeats // 2))
    speedup = (args.batch / t_batch) / (1 / t_step)
    print(f"batch {args.batch} ÷ batch 1 throughput on {lm.device} ({dtype_name(lm.dtype)}): {speedup:.2f}× "
          f"({args.batch / t_batch:.2f} vs {1 / t_step:.2f} prompt-steps/s); goal on a GPU ≥ 4×", flush=True)
    cross = cross_layer(lm, flips[:1], layer, t_full_params, args.repeats)
    write("recovery_step", {
        "what": "seconds per optimisation step; ratios vs naive full-model steps on the same tokens",
        "device": str(lm.device), "clamp": clamp_desc, "delta_layer": layer, "tokens": n_tokens, "prompt_source": source,
        "recovery_step_s": t_step, "full_fwd_bwd_param_grads_s": t_full_params, "full_fwd_bwd_frozen_s": t_full_frozen,
        "ratio_vs_param_grads": t_step / t_full_params, "ratio_vs_frozen": t_step / t_full_frozen,
        "batch": args.batch, "batch_step_s": t_batch,
        "throughput_prompt_steps_per_s": {"batch_1": 1 / t_step, f"batch_{args.batch}": args.batch / t_batch},
        "batch_speedup": speedup, "dtype": dtype_name(lm.dtype),
        "cross_layer": cross,
        "goals": {"ratio_vs_param_grads": "<= 0.30", "gpu_batch_speedup": ">= 4", "cross_layer_vs_encoder": "<= 3"},
    })


CROSS_SETTINGS = (
    {"correction": "adam", "n_probes": 8, "probe_every": 1, "correction_steps": 5},  # the paper's: every step 8 + 1 probes, 5 corrections
    {"correction": "adam", "n_probes": 8, "probe_every": 5, "correction_steps": 2},
    {"correction": "adam", "n_probes": 4, "probe_every": 5, "correction_steps": 1},
    {"correction": "adam", "n_probes": 8, "probe_every": 10, "correction_steps": 0},
    # the lab's default: up to 6 Gauss–Newton restorations per step (CG 8) until the held drift is under 0.025
    {"correction": "gauss-newton"},
    {"correction": "gauss-newton", "cg_iters": 8, "correction_steps": 1},
    {"correction": "gauss-newton", "cg_iters": 16, "correction_steps": 1},
)


def cross_layer(lm, flips, layer: int, t_full_params: float, repeats: int) -> dict:
    """Seconds per ``optimize_delta`` step: single-layer encoder vs cross-layer jacobian (per setting), one prompt."""
    import dataclasses

    from engine.method.clamp_sets import load_clamp_set, read_clamp_file
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.objective import DeltaObjective
    from engine.recovery.optimize import optimize_delta
    from engine.recovery.problem import build_problem

    try:  # the shipped multi-layer preset, the clamp set every cross-layer run of docs/RECOVERY.md uses
        multi = load_clamp_set(lm, read_clamp_file("preset:default-multi")[0])
    except Exception as exc:  # noqa: BLE001 - no shipped multi-layer preset: nothing to measure
        return {"skipped": f"no shipped preset:default-multi ({exc})"}
    steps = 4

    def per_step(specs, cfg) -> float:
        problem = build_problem(lm, specs, flips, cfg.answer_tokens, layer)
        obj = DeltaObjective(lm, specs, problem)
        budget = torch.full((len(flips),), cfg.budget, device=lm.device)
        with torch.enable_grad():
            return timed(lambda: optimize_delta(obj, cfg, budget), max(1, repeats // 2)) / (steps + 1)

    base = RecoveryConfig(steps=steps)
    same = [s for s in multi if s.hook_name == f"blocks.{layer}.hook_resid_post"]
    t_enc = per_step(same, base)  # the single-layer encoder step on the preset's own layer-ℓ clamp
    rows = []
    for setting in CROSS_SETTINGS:
        t = per_step(multi, dataclasses.replace(base, projection="jacobian", **setting))
        rows.append({**setting, "step_s": t, "ratio_vs_encoder": t / t_enc, "ratio_vs_param_grads": t / t_full_params,
                     "within_3x": t / t_enc <= 3.0})
        print(f"cross-layer {setting}: {t:.3f} s/step = {t / t_enc:.2f}× encoder, {t / t_full_params:.2f}× naive")
    t_none = per_step(multi, dataclasses.replace(base, projection="none", drift_penalty=0.0))
    return {"clamps": "preset:default-multi", "features": {s.hook_name: len(s.features) for s in multi},
            "steps_timed": steps, "encoder_step_s": t_enc,
            "none_cross_layer_step_s": t_none, "settings": rows}


if __name__ == "__main__":
    main()
