"""The Ray executor against the local one: the same recovery, side by side in one run.

    .venv/bin/python bench/scale.py [--flips 16] [--steps 60] [--run RUN_DIR]

Default model, CPU (or the GPU when there is one), the shipped layer-15 preset: a flips run on the built-in
harmless prompts (or ``--run``), then the recovery of its first ``--flips`` valid flips three times, each into its
own record: local, Ray with 1 worker, Ray with 2 workers (a local Ray cluster started here). Prints the wall times,
their ratios to local, the time for the Ray workers to start (model loaded once per worker) and Ray's overhead per
shard, ((Ray 1 worker − worker start) − local) / shards. Checks that the three record files are identical.
Writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per Ray worker (0: the driver's count)")
    ap.add_argument("--run", default=None, help="an existing flips run of the default model (default: make one)")
    args = ap.parse_args()

    import ray
    import torch

    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.flips import write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.presets import resolve_clamp
    from engine.method.prompts import load_prompts
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery
    from engine.scale.config import ExecutorConfig
    from engine.scale.pool import RayPool, connect
    from engine.store.files import read_jsonl
    from engine.store.records import get_record

    lm = load_model("default", "auto")
    if args.run:
        run = Path(args.run)
    else:
        run = Path(tempfile.mkdtemp(prefix="bench-scale-")) / "run"
        run.mkdir()
        spec = resolve_clamp(load_sae("default", lm), "auto")
        t = time.perf_counter()
        write_flips_run(lm, [spec], load_prompts("builtin:harmless", 30), GenerationConfig(), JudgeConfig(), run,
                        {"model": "default", "prompts": "builtin:harmless", "limit": 30})
        print(f"flips run {run} in {time.perf_counter() - t:.0f} s")
    cfg = RecoveryConfig(steps=args.steps)
    n_shards = -(-args.flips // cfg.batch_size)
    walls: dict[str, float] = {}
    t = time.perf_counter()
    run_recovery(run, cfg, lm=lm, limit=args.flips, name="bench-local")
    walls["local"] = time.perf_counter() - t
    print(f"local: {walls['local']:.1f} s")
    connect(ExecutorConfig("ray", workers=2))
    t = time.perf_counter()
    with RayPool(run, ExecutorConfig("ray", workers=1)):
        pass
    start_1 = time.perf_counter() - t
    for workers in (1, 2):
        t = time.perf_counter()
        run_recovery(run, cfg, lm=lm, limit=args.flips, name=f"bench-ray{workers}",
                     exe=ExecutorConfig("ray", workers=workers, threads=args.threads))
        walls[f"ray_{workers}"] = time.perf_counter() - t
        print(f"ray, {workers} worker(s): {walls[f'ray_{workers}']:.1f} s")
    ray.shutdown()
    recs = [read_jsonl(get_record(run, n).path / "recovery.jsonl") for n in ("bench-local", "bench-ray1", "bench-ray2")]
    same = recs[0] == recs[1] == recs[2]
    same_texts = all([r["recovered_text"] for r in x] == [r["recovered_text"] for r in recs[0]] for x in recs)
    result = {
        "device": str(lm.device), "torch_threads": torch.get_num_threads(), "flips": args.flips, "steps": args.steps,
        "batch_size": cfg.batch_size, "shards": n_shards, "wall_s": walls,
        "ratio_ray1_over_local": walls["ray_1"] / walls["local"], "ratio_ray2_over_local": walls["ray_2"] / walls["local"],
        "speedup_ray2_over_ray1": walls["ray_1"] / walls["ray_2"], "worker_start_s": start_1,
        "overhead_per_shard_s": (walls["ray_1"] - start_1 - walls["local"]) / n_shards, "records_identical": same,
        "texts_identical": same_texts, "threads_per_worker": args.threads or torch.get_num_threads(),
        "run": str(run),
    }
    print(f"Ray 1 worker / local = {result['ratio_ray1_over_local']:.2f}×, Ray 2 workers / local = "
          f"{result['ratio_ray2_over_local']:.2f}×, 2 vs 1 worker speed-up {result['speedup_ray2_over_ray1']:.2f}×; worker start "
          f"{start_1:.1f} s; overhead per shard {result['overhead_per_shard_s']:.2f} s; records identical: {same}")
    write("scale", result)


if __name__ == "__main__":
    main()
