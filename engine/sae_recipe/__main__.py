"""``python -m engine.sae_recipe train|preset|preset-multi|ladder|variants|verify``: reproduce the shipped default SAEs offline, choose
the multi-layer preset, build the width ladder in the user cache, or check their hashes.

    python -m engine.sae_recipe train [--hook H ...] [--tokens N] [--d-sae W] [--k K] [--out DIR] [--work DIR] [--resample-every N]
                                      [--general-text N]
    python -m engine.sae_recipe ladder [--widths W,..] [--ks K,..] [--hook H] [--model default|tiny] [--work DIR] [--tokens N]
    python -m engine.sae_recipe preset [--hook H] [--ks K,..] [--alphas A,..] [--out DIR] [--work DIR]
    python -m engine.sae_recipe preset-multi [--ks-15 K,..] [--alphas-15 A,..] [--ks-20 K,..] [--alphas-20 A,..]
                                             [--extra K15:A15:K20:A20,..] [--candidates contrast|direction] [--out DIR]
    python -m engine.sae_recipe variants --variant KEY=VALUE,... [--variant ...] [--general-text N] [--hook H] [--out FILE]
    python -m engine.sae_recipe verify [--out DIR]

``train`` builds the chat corpus, collects activations once for all hooks, trains one TopK SAE per hook, serves it
as JumpReLU, chooses its clamp preset by measurement and writes each sae_lens folder plus ``manifest.json``.
Intermediate results (own answers, activations) are cached in ``--work`` so a rerun with the same settings skips
them. On 2 CPU cores the whole recipe takes about 20 minutes. ``preset-multi`` measures a grid of clamps over both
shipped SAEs and writes ``presets/default-multi.json`` (``engine.sae_recipe.multi_preset``). ``ladder`` trains one
SAE per (width, k) by the same steps into ``cache_dir()/ladder/NAME`` (``engine.sae_recipe.ladder``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

from engine.errors import LabError
from engine.sae_recipe.pipeline import CALIBRATION_POSITIONS, DEFAULT_HOOKS, FLOORS, PRIMARY, meets_floors  # noqa: F401 (re-exported)

logger = logging.getLogger("engine.sae_recipe")


def _file_hashes(out: Path) -> dict[str, str]:
    from engine.sae_recipe.serve import sha256

    return {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def cmd_train(args) -> dict:
    import torch

    from engine.lm.loading import load_model
    from engine.lm.saes import hook_layer
    from engine.sae_recipe.corpus import CorpusConfig
    from engine.sae_recipe.ladder import rungs
    from engine.sae_recipe.pipeline import build_sae, prepare
    from engine.sae_recipe.preset import PresetConfig
    from engine.sae_recipe.serve import write_sae_folder
    from engine.sae_recipe.train import TrainConfig

    hooks = args.hook or list(DEFAULT_HOOKS)
    for h in hooks:
        if not h.startswith("blocks.") or hook_layer(h) > 29:
            raise LabError(f"hook {h!r} is not a block hook of the default model (blocks.0 … blocks.29)")
    out, work = Path(args.out), Path(args.work)
    ccfg, tcfg, pcfg = CorpusConfig(seed=args.seed), TrainConfig(seed=args.seed), PresetConfig()
    if args.ks:
        pcfg.ks = tuple(int(v) for v in args.ks.split(","))
    if args.alphas:
        pcfg.alphas = tuple(float(v) for v in args.alphas.split(","))
    for name in ("tokens", "d_sae", "k"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise LabError(f"--{name.replace('_', '-')} must be a positive whole number; got {value}")
    if args.tokens:
        tcfg.training_samples = args.tokens
    tcfg.d_sae, tcfg.k = args.d_sae or tcfg.d_sae, args.k or tcfg.k
    rungs((tcfg.d_sae,), (tcfg.k,))  # the ladder's own check: k no larger than the width
    if args.resample_every < 0 or args.general_text < 0:
        raise LabError("the resampling interval and the number of general-text passages must be 0 (off) or positive")
    tcfg.resample_every, ccfg.general_text_passages = args.resample_every, args.general_text
    tcfg.refit_decoder = args.refit_decoder
    torch.manual_seed(args.seed)
    t_start = time.time()
    lm = load_model("default", "cpu")
    # the default hooks are always collected together (outliers are dropped at every hook), so training one of them
    # alone sees exactly the same activations and reuses the cache
    collect_hooks = sorted(set(DEFAULT_HOOKS) | set(hooks))
    prep = prepare(lm, ccfg, tcfg, collect_hooks, work, args.seed)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"saes": {}}
    for hook in hooks:
        built = build_sae(lm, prep, hook, tcfg, pcfg, work)
        preset, q = built.preset, built.quality["heldout"]
        write_sae_folder(built.served, out / hook, {"quality.json": built.quality, "preset.json": preset})
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
        "collection": prep.data.stats,
        "versions": {"torch": torch.__version__, "sae_lens": sae_lens.__version__, "python": platform.python_version()},
        "total_seconds_last_run": round(time.time() - t_start, 1),
    })
    manifest["files"] = _file_hashes(out)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return {"written": str(out), "saes": manifest["saes"], "seconds": manifest["total_seconds_last_run"]}


def _grid(text: str | None, cast, what: str) -> tuple | None:
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip()) if text else None
    except ValueError:
        raise LabError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if values is not None and (not values or any(v <= 0 for v in values)):
        raise LabError(f"{what}: every value must be positive, got {text!r}")
    return values


def cmd_preset(args) -> dict:
    """Re-choose one shipped SAE's ``preset.json`` on a new (K, α) grid without retraining it: the same contrast
    search and validation prompts as ``train``, on the activation cache of the corpus recorded in the manifest."""
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.sae_recipe.corpus import ANSWER, REFUSAL, CorpusConfig
    from engine.sae_recipe.pipeline import prepare
    from engine.sae_recipe.preset import PresetConfig, choose_preset
    from engine.sae_recipe.train import TrainConfig

    out = Path(args.out)
    folder, manifest_path = out / args.hook, out / "manifest.json"
    if not (folder / "cfg.json").is_file():
        raise LabError(f"no SAE at {folder}; train it first (python -m engine.sae_recipe train --hook {args.hook})")
    if not manifest_path.is_file():
        raise LabError(f"no manifest.json in {out}: the corpus the SAE was trained on is unknown")
    manifest = json.loads(manifest_path.read_text())
    pcfg = PresetConfig()
    pcfg.ks = _grid(args.ks, int, "--ks") or pcfg.ks
    pcfg.alphas = _grid(args.alphas, float, "--alphas") or pcfg.alphas
    corpus = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest["recipe"]["corpus"].items()}
    ccfg, tcfg = CorpusConfig(**corpus), TrainConfig(seed=manifest["seeds"]["train"])
    t0 = time.time()
    lm = load_model("default", "cpu")
    prep = prepare(lm, ccfg, tcfg, sorted(set(DEFAULT_HOOKS) | {args.hook}), Path(args.work), manifest["seeds"]["torch"])
    sae = load_sae(str(folder), lm)
    data, x, mask = prep.data, prep.data.acts[args.hook], ~prep.data.heldout
    preset = choose_preset(lm, sae, x[mask & (data.label == REFUSAL)], x[mask & (data.label == ANSWER)], prep.validation, pcfg)
    command = ("python -m engine.sae_recipe preset " + " ".join(args.argv)).strip()
    preset["command"] = command
    (folder / "preset.json").write_text(json.dumps(preset, indent=2))
    entry = manifest.setdefault("saes", {}).setdefault(args.hook, {})
    entry.update({"k": preset["k"], "alpha": preset["alpha"], "preset_grid": pcfg.to_json(), "preset_command": command})
    manifest["files"] = _file_hashes(out)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    best = next(g for g in preset["selection"]["grid"] if (g["k"], g["alpha"]) == (preset["k"], preset["alpha"]))
    return {"written": str(folder / "preset.json"), "k": preset["k"], "alpha": preset["alpha"],
            "fluent_refusals": best["fluent_refusals"], "degenerate": best["degenerate"], "n": best["n"],
            "grid": [{k: g[k] for k in ("k", "alpha", "refusals", "fluent_refusals", "degenerate")} for g in preset["selection"]["grid"]],
            "seconds": round(time.time() - t0, 1)}


def cmd_preset_multi(args) -> dict:
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.sae_recipe.corpus import CorpusConfig, split_prompts
    from engine.sae_recipe.multi_preset import HIGH, LOW, NAME, MultiPresetConfig, choose_multi_preset

    grid = {name: _grid(getattr(args, name), int if name.startswith("ks") else float, "--" + name.replace("_", "-"))
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


def cmd_ladder(args) -> dict:
    from engine.sae_recipe.ladder import DEFAULT_KS, DEFAULT_WIDTHS, LadderConfig, build_ladder, parse_sizes

    def floats(text: str | None):
        try:
            return tuple(float(v) for v in text.split(",") if v.strip()) if text else None
        except ValueError:
            raise LabError(f"expected comma-separated numbers, got {text!r}") from None

    cfg = LadderConfig(
        widths=parse_sizes(args.widths, "widths") or DEFAULT_WIDTHS, ks=parse_sizes(args.ks, "k values") or DEFAULT_KS,
        hook=args.hook, model=args.model, work=args.work, seed=args.seed, resample_every=args.resample_every, training_samples=args.tokens,
        refit_decoder=args.refit_decoder,
        general_text=args.general_text, preset_ks=parse_sizes(args.preset_ks, "preset K values"), preset_alphas=floats(args.alphas),
        command="python -m engine.sae_recipe ladder " + " ".join(args.argv),
    )
    t0 = time.time()
    results = build_ladder(cfg)
    return {"entries": [{"name": r.name, "spec": f"default:ladder/{r.name}", "folder": str(r.folder), "built_now": r.built,
                         "seconds": r.seconds, **r.heldout} for r in results], "seconds": round(time.time() - t0, 1)}


def cmd_variants(args) -> dict:
    from engine.sae_recipe.ladder import TINY_HOOK, WORK
    from engine.sae_recipe.variants import parse_variant, run_variants

    if args.model not in WORK:
        raise LabError(f"variants are trained for the default model or the tiny test model, not {args.model!r}")
    if args.general_text < 0:
        raise LabError("the number of general-text passages must be 0 (off) or positive")
    variants = [parse_variant(text) for text in args.variant]
    work = Path(args.work or WORK[args.model])
    hook = args.hook or (TINY_HOOK if args.model == "tiny" else PRIMARY)
    rows = run_variants(variants, hook, args.general_text, work, Path(args.out) if args.out else work / "variants.json", args.model, args.seed)
    return {"rows": rows}


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
    t.add_argument("--d-sae", dest="d_sae", type=int, default=None, help="SAE width (default 4608; the shipped files must stay ≤ 16 MB)")
    t.add_argument("--k", type=int, default=None, help="TopK k, the served SAE's target L0 (default 32)")
    t.add_argument("--out", default=str(DEFAULT_SAE_DIR), help="where to write the SAE folders and manifest")
    t.add_argument("--work", default="/tmp/sae-lab-default", help="cache for own answers and activations")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ks", default=None, help="preset grid: numbers of features K, e.g. 15,20")
    t.add_argument("--alphas", default=None, help="preset grid: value multipliers α, e.g. 4,5")
    t.add_argument("--resample-every", dest="resample_every", type=int, default=0,
                   help="recipe v2: resample dead latents every N training steps (default 0: off)")
    t.add_argument("--general-text", dest="general_text", type=int, default=0,
                   help="recipe v2: add N passages of Python's own documentation to the corpus (default 0: off)")
    t.add_argument("--refit-decoder", dest="refit_decoder", action="store_true",
                   help="recipe v2: refit the decoder to the served JumpReLU codes by least squares")
    lad = sub.add_parser("ladder", help="train SAEs of several widths / k into the user cache (default:ladder/NAME)")
    lad.add_argument("--widths", default=None, help="SAE widths, e.g. 4608,9216,18432 (the default)")
    lad.add_argument("--ks", default=None, help="TopK k values, e.g. 32 (the default); one SAE per (width, k)")
    lad.add_argument("--hook", default=None, help="hook (default blocks.15.hook_resid_post; tiny model: blocks.1.hook_resid_post)")
    lad.add_argument("--model", default="default", help="default, or tiny (the random test model on a tiny corpus, seconds)")
    lad.add_argument("--work", default=None, help="cache of answers, activations and checkpoints (default /tmp/sae-lab-default; tiny: /tmp/sae-lab-tiny)")
    lad.add_argument("--seed", type=int, default=0)
    lad.add_argument("--preset-ks", dest="preset_ks", default=None, help="preset grid: numbers of features K (default 10,15)")
    lad.add_argument("--alphas", default=None, help="preset grid: value multipliers α (default 3,5)")
    lad.add_argument("--resample-every", dest="resample_every", type=int, default=0, help="recipe v2: resample dead latents every N steps")
    lad.add_argument("--general-text", dest="general_text", type=int, default=0, help="recipe v2: N passages of general offline text")
    lad.add_argument("--tokens", type=int, default=None, help="recipe v2: training samples per SAE (default 480000; names get -tN)")
    lad.add_argument("--refit-decoder", dest="refit_decoder", action="store_true",
                     help="recipe v2: refit the decoder to the served JumpReLU codes (names get -f)")
    var = sub.add_parser("variants", help="compare training settings on the cached activations (quality only, no preset)")
    var.add_argument("--variant", action="append", default=[], required=True,
                     help="TrainConfig settings, e.g. k=48,d_sae=6144,training_samples=2000000,resample_every=20 (repeatable)")
    var.add_argument("--hook", default=None, help="hook (default blocks.15.hook_resid_post; tiny model: blocks.1.hook_resid_post)")
    var.add_argument("--general-text", dest="general_text", type=int, default=0, help="N passages of general offline text in the corpus")
    var.add_argument("--model", default="default", help="default, or tiny (the test model)")
    var.add_argument("--work", default=None, help="cache of answers and activations (default as ladder); SAEs go to WORK/variants/")
    var.add_argument("--out", default=None, help="JSON list the rows are appended to (default WORK/variants.json)")
    var.add_argument("--seed", type=int, default=0)
    pr = sub.add_parser("preset", help="re-choose one trained SAE's clamp preset on a new grid (no retraining)")
    pr.add_argument("--hook", default=PRIMARY, help=f"the SAE's hook (default {PRIMARY})")
    pr.add_argument("--ks", default=None, help="grid: numbers of features K, e.g. 5,10,15 (default 10,15)")
    pr.add_argument("--alphas", default=None, help="grid: value multipliers α, e.g. 3,4,5 (default 3,5)")
    pr.add_argument("--out", default=str(DEFAULT_SAE_DIR), help="folder of the SAEs and manifest.json")
    pr.add_argument("--work", default="/tmp/sae-lab-default", help="cache of own answers and activations (train's --work)")
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
    args.argv = list(argv)[1:] if argv is not None else sys.argv[2:]  # the options after the sub-command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = {"train": cmd_train, "preset": cmd_preset, "preset-multi": cmd_preset_multi, "ladder": cmd_ladder, "variants": cmd_variants,
                  "verify": cmd_verify}[args.command](args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
