"""``python -m engine.sae_recipe train|preset-multi|verify``: reproduce the shipped default SAEs offline, choose the
multi-layer preset, or check their hashes.

    python -m engine.sae_recipe train [--hook H ...] [--tokens N] [--out DIR] [--work DIR]
    python -m engine.sae_recipe preset-multi [--ks-15 K,..] [--alphas-15 A,..] [--ks-20 K,..] [--alphas-20 A,..]
                                             [--extra K15:A15:K20:A20,..] [--candidates contrast|direction] [--out DIR]
    python -m engine.sae_recipe verify [--out DIR]

``train`` builds the chat corpus, collects activations once for all hooks, trains one TopK SAE per hook, serves it
as JumpReLU, chooses its clamp preset by measurement and writes each sae_lens folder plus ``manifest.json``.
Intermediate results (own answers, activations) are cached in ``--work`` so a rerun with the same settings skips
them. On 2 CPU cores the whole recipe takes about 20 minutes. ``preset-multi`` measures a grid of clamps over both
shipped SAEs and writes ``presets/default-multi.json`` (``engine.sae_recipe.multi_preset``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path

from engine.errors import LabError

logger = logging.getLogger("engine.sae_recipe")

DEFAULT_HOOKS = ("blocks.15.hook_resid_post", "blocks.20.hook_resid_post")
PRIMARY = DEFAULT_HOOKS[0]
CALIBRATION_POSITIONS = 60_000


def _file_hashes(out: Path) -> dict[str, str]:
    from engine.sae_recipe.serve import sha256

    return {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def _collected(lm, convs, hooks, tcfg, work: Path, key: str):
    import torch

    from engine.sae_recipe.train import Collected, collect

    path = work / f"acts-{key}.pt"
    if path.is_file():
        logger.info("activations from cache %s", path)
        raw = torch.load(path)
        acts = {h.removeprefix("acts:"): v.float() for h, v in raw.items() if h.startswith("acts:")}
        return Collected(acts, raw["conv"], raw["pos"], raw["label"], raw["heldout"], json.loads(raw["stats"]))
    data = collect(lm, convs, hooks, tcfg)
    data.acts = {h: v.half().float() for h, v in data.acts.items()}  # the cache is fp16: a rerun must see the same data
    raw = {f"acts:{h}": v.half() for h, v in data.acts.items()}
    torch.save({**raw, "conv": data.conv, "pos": data.pos, "label": data.label, "heldout": data.heldout, "stats": json.dumps(data.stats)}, path)
    return data


def cmd_train(args) -> dict:
    import torch

    from engine.lm.loading import load_model
    from engine.lm.saes import LoadedSAE, hook_layer
    from engine.sae_recipe.corpus import ANSWER, REFUSAL, CorpusConfig, build_corpus, split_prompts
    from engine.sae_recipe.preset import PresetConfig, choose_preset
    from engine.sae_recipe.serve import serve_as_jumprelu, write_sae_folder
    from engine.sae_recipe.train import TrainConfig, train_topk

    hooks = args.hook or list(DEFAULT_HOOKS)
    for h in hooks:
        if not h.startswith("blocks.") or hook_layer(h) > 29:
            raise LabError(f"hook {h!r} is not a block hook of the default model (blocks.0 … blocks.29)")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ccfg, tcfg, pcfg = CorpusConfig(seed=args.seed), TrainConfig(seed=args.seed), PresetConfig()
    if args.ks:
        pcfg.ks = tuple(int(v) for v in args.ks.split(","))
    if args.alphas:
        pcfg.alphas = tuple(float(v) for v in args.alphas.split(","))
    if args.tokens:
        tcfg.training_samples = args.tokens
    torch.manual_seed(args.seed)
    t_start = time.time()
    lm = load_model("default", "cpu")
    convs = build_corpus(lm, ccfg, answer_cache=work / "answers.json")
    # the default hooks are always collected together (outliers are dropped at every hook), so training one of them
    # alone sees exactly the same activations and reuses the cache
    collect_hooks = sorted(set(DEFAULT_HOOKS) | set(hooks))
    key = hashlib.sha256(json.dumps([ccfg.to_json(), tcfg.outlier_factor, collect_hooks]).encode()).hexdigest()[:12]
    data = _collected(lm, convs, collect_hooks, tcfg, work, key)
    gen = torch.Generator().manual_seed(args.seed)
    train_idx = torch.nonzero(~data.heldout).squeeze(1)
    calib_idx = train_idx[torch.randperm(len(train_idx), generator=gen)[:CALIBRATION_POSITIONS]]
    validation = split_prompts(ccfg)["heldout"]["harmless"]
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"saes": {}}
    for hook in hooks:
        t0 = time.time()
        x = data.acts[hook]
        ckpt = work / f"topk-{key}-{hashlib.sha256(json.dumps([hook, tcfg.to_json()]).encode()).hexdigest()[:12]}"
        if not (ckpt / "cfg.json").is_file():
            train_topk(x[~data.heldout], hook, tcfg).save_model(str(ckpt))
        else:
            logger.info("trained TopK SAE from cache %s", ckpt)
        from sae_lens.saes.topk_sae import TopKSAE

        topk = TopKSAE.load_from_disk(str(ckpt))  # the same object whether just trained or cached
        served, report = serve_as_jumprelu(topk, x[calib_idx], x[data.heldout], tcfg.k)
        loaded = LoadedSAE(served, f"default:{hook}", hook)
        mask = ~data.heldout
        preset = choose_preset(lm, loaded, x[mask & (data.label == REFUSAL)], x[mask & (data.label == ANSWER)], validation, pcfg)
        q = report[f"jumprelu_{report['served']}_heldout"]
        quality = {
            "heldout": q, **report, "floors": FLOORS, "meets_floors": meets_floors(q),
            "train_seconds": round(time.time() - t0, 1),
        }
        write_sae_folder(served, out / hook, {"quality.json": quality, "preset.json": preset})
        manifest["saes"][hook] = {"k": preset["k"], "alpha": preset["alpha"], "heldout": q, "preset_grid": pcfg.to_json(),
                                  "command": "python -m engine.sae_recipe train " + " ".join(sys.argv[2:])}
        logger.info("%s written: %s", hook, q)
    (out / "answers.json").write_text(json.dumps({"model": lm.name, "answers": json.loads((work / "answers.json").read_text())["answers"]}, indent=1))
    import sae_lens

    manifest.update({
        "primary": PRIMARY if (out / PRIMARY).is_dir() else hooks[0],
        "model": lm.name,
        "architecture": "TopK-trained, served as JumpReLU (see docs/DEFAULT_SAE.md)",
        "recipe": {"command": "python -m engine.sae_recipe train " + " ".join(sys.argv[2:]), "corpus": ccfg.to_json(), "train": tcfg.to_json(),
                   "preset": pcfg.to_json(), "calibration_positions": CALIBRATION_POSITIONS, "hooks": list(DEFAULT_HOOKS)},
        "seeds": {"corpus": ccfg.seed, "train": tcfg.seed, "torch": args.seed},
        "collection": data.stats,
        "versions": {"torch": torch.__version__, "sae_lens": sae_lens.__version__, "python": platform.python_version()},
        "total_seconds_last_run": round(time.time() - t_start, 1),
    })
    manifest["files"] = _file_hashes(out)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return {"written": str(out), "saes": manifest["saes"], "seconds": manifest["total_seconds_last_run"]}


def cmd_preset_multi(args) -> dict:
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.sae_recipe.corpus import CorpusConfig, split_prompts
    from engine.sae_recipe.multi_preset import HIGH, LOW, NAME, MultiPresetConfig, choose_multi_preset

    def numbers(text: str | None, cast):
        try:
            return tuple(cast(v) for v in text.split(",") if v.strip()) if text else None
        except ValueError:
            raise LabError(f"expected comma-separated numbers, got {text!r}") from None

    grid = {name: numbers(getattr(args, name), int if name.startswith("ks") else float)
            for name in ("ks_15", "alphas_15", "ks_20", "alphas_20")}
    extra = []
    for item in (args.extra or "").split(","):
        if item.strip():
            parts = item.split(":")
            try:
                extra.append((int(parts[0]), float(parts[1]), int(parts[2]), float(parts[3])))
            except (ValueError, IndexError):
                raise LabError(f"--extra takes K15:A15:K20:A20 settings separated by commas, got {item!r}") from None
            if len(parts) != 4:
                raise LabError(f"--extra takes K15:A15:K20:A20 settings separated by commas, got {item!r}")
    cfg = MultiPresetConfig(**{k: v for k, v in grid.items() if v is not None}, extra=tuple(extra), candidates=args.candidates)
    out = Path(args.out)
    for hook in (LOW, HIGH):
        if not (out / hook / "cfg.json").is_file():
            raise LabError(f"no shipped SAE at {out / hook}; train it first")
    t0 = time.time()
    lm = load_model("default", "cpu")
    saes = {}
    for hook in (LOW, HIGH):
        saes[hook] = load_sae(str(out / hook), lm)
        saes[hook].source = f"default:{hook}"
    validation = split_prompts(CorpusConfig())["heldout"]["harmless"]
    preset = choose_multi_preset(lm, saes, validation, cfg, work=Path(args.work))
    command = "python -m engine.sae_recipe preset-multi " + " ".join(sys.argv[2:])
    preset["command"] = command.strip()
    (out / "presets").mkdir(exist_ok=True)
    path = out / "presets" / f"{NAME}.json"
    path.write_text(json.dumps(preset, indent=2))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    setting = {k: preset[k] for k in ("k_15", "alpha_15", "k_20", "alpha_20")}
    manifest.setdefault("presets", {})[NAME] = {**setting, "candidates": cfg.candidates, "grid": cfg.to_json(),
                                                "command": preset["command"]}
    manifest["files"] = _file_hashes(out)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    best = next(g for g in preset["selection"]["grid"] if all(g[k] == v for k, v in setting.items()))
    return {"written": str(path), **setting, "fluent_refusals": best["fluent_refusals"], "degenerate": best["degenerate"],
            "n": best["n"], "ablation": preset["selection"]["ablation"], "seconds": round(time.time() - t0, 1)}


FLOORS = {"explained_variance_min": 0.7, "l0_min": 16, "l0_max": 64, "dead_fraction_max": 0.5}
"""Quality floors of a shipped SAE on held-out activations (checked by tests/test_default_sae.py)."""


def meets_floors(q: dict) -> bool:
    return (q["explained_variance"] >= FLOORS["explained_variance_min"] and FLOORS["l0_min"] <= q["l0"] <= FLOORS["l0_max"]
            and q["dead_fraction"] <= FLOORS["dead_fraction_max"])


def cmd_verify(args) -> dict:
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise LabError(f"no manifest.json in {out}")
    expected = json.loads(manifest_path.read_text())["files"]
    actual = _file_hashes(out)
    bad = sorted(k for k in expected if actual.get(k) != expected[k])
    extra = sorted(set(actual) - set(expected))
    if bad:
        raise LabError(f"hash mismatch or missing file: {', '.join(bad)}")
    return {"ok": True, "files": len(expected), "unlisted": extra}


def main(argv: list[str] | None = None) -> int:
    from engine.paths import DEFAULT_SAE_DIR

    p = argparse.ArgumentParser(prog="python -m engine.sae_recipe", description="train or verify the shipped default SAEs")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="reproduce the default SAEs (offline, ~20 min on 2 CPU cores)")
    t.add_argument("--hook", action="append", help=f"hook to train (repeatable; default: {', '.join(DEFAULT_HOOKS)})")
    t.add_argument("--tokens", type=int, default=None, help="training samples per SAE (default 480000)")
    t.add_argument("--out", default=str(DEFAULT_SAE_DIR), help="where to write the SAE folders and manifest")
    t.add_argument("--work", default="/tmp/sae-lab-default", help="cache for own answers and activations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ks", default=None, help="preset grid: numbers of features K, e.g. 15,20")
    t.add_argument("--alphas", default=None, help="preset grid: value multipliers α, e.g. 4,5")
    m = sub.add_parser("preset-multi", help="choose the multi-layer preset (layers 15 and 20) by measurement")
    m.add_argument("--ks-15", dest="ks_15", default=None, help="grid: layer-15 feature counts, e.g. 10,15")
    m.add_argument("--alphas-15", dest="alphas_15", default=None, help="grid: layer-15 multipliers, e.g. 3,4")
    m.add_argument("--ks-20", dest="ks_20", default=None, help="grid: layer-20 feature counts, e.g. 10,20")
    m.add_argument("--alphas-20", dest="alphas_20", default=None, help="grid: layer-20 multipliers, e.g. 2,3")
    m.add_argument("--extra", default=None, help="settings measured besides the grid, K15:A15:K20:A20 separated by commas, e.g. 15:3.5:5:2")
    m.add_argument("--candidates", default="contrast", choices=["contrast", "direction"],
                   help="contrast rows of each preset.json (default) or the layer-15 direction search")
    m.add_argument("--out", default=str(DEFAULT_SAE_DIR), help="folder of the shipped SAEs (presets/ and manifest.json are written there)")
    m.add_argument("--work", default="/tmp/sae-lab-default", help="cache of measured settings")
    v = sub.add_parser("verify", help="check the shipped files against manifest.json")
    v.add_argument("--out", default=str(DEFAULT_SAE_DIR))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = {"train": cmd_train, "preset-multi": cmd_preset_multi, "verify": cmd_verify}[args.command](args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
