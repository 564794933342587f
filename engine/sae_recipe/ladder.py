"""The width ladder: SAEs of several widths / k trained on demand by the default recipe into the user cache.

``python -m engine.sae_recipe ladder --widths 4608,9216,18432 --ks 32`` trains one SAE per (width, k) on the
recipe's cached activations (the same corpus, collection, training, JumpReLU serving and preset search as
``train``: :mod:`engine.sae_recipe.pipeline`), into ``engine.paths.cache_dir() / "ladder" / NAME``. Each entry is a
normal sae_lens folder plus ``quality.json`` and ``preset.json``, loadable as ``default:ladder/NAME``.

Entry names: ``w{width}-k{k}``, prefixed ``tiny-`` for the tiny model, suffixed ``-L{layer}`` for a hook other than
the primary ``blocks.15.hook_resid_post`` (tiny: ``blocks.1``), ``-r{N}`` with dead-latent resampling every N steps
``-g{N}`` with N passages of general text, ``-t{N}`` with N training samples instead of the recipe's 480 000 and ``-f`` with
the decoder refit to the served codes
(recipe v2, docs/DEFAULT_SAE.md).

Built entries are skipped (resume). An entry is written to a hidden temporary folder and renamed into place when
complete, so a crashed build never leaves a half folder that :func:`built_ladder` would list.

This module imports no torch at import time (``built_ladder`` is cheap).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import LabError
from engine.paths import cache_dir
from engine.sae_recipe.pipeline import PRIMARY

if TYPE_CHECKING:
    from engine.lm.models import LoadedModel
    from engine.sae_recipe.corpus import CorpusConfig
    from engine.sae_recipe.preset import PresetConfig
    from engine.sae_recipe.train import TrainConfig

logger = logging.getLogger(__name__)

SPEC_PREFIX = "default:ladder/"
"""``load_sae`` spec prefix of a ladder entry."""
DEFAULT_WIDTHS = (4608, 9216, 18432)
DEFAULT_KS = (32,)
MODELS = ("default", "tiny")
TINY_HOOK = "blocks.1.hook_resid_post"
"""Hook of the tiny model's ladder (its middle block)."""
WORK = {"default": "/tmp/sae-lab-default", "tiny": "/tmp/sae-lab-tiny"}
"""Default ``--work`` per model (the default model shares ``train``'s cache of answers and activations)."""
_NAME = re.compile(r"^(?:(?P<model>tiny)-)?w(?P<w>\d+)-k(?P<k>\d+)(?:-L(?P<layer>\d+))?(?:-r(?P<r>\d+))?(?:-g(?P<g>\d+))?(?:-t(?P<t>\d+))?(?P<f>-f)?$")
QUALITY_KEYS = ("explained_variance", "l0", "dead_fraction", "heldout", "topk_heldout", "jumprelu_per_latent_heldout",
                "jumprelu_global_heldout", "served", "floors", "meets_floors", "train_seconds", "seconds", "settings")
"""Keys every ladder ``quality.json`` has (docs/DEFAULT_SAE.md, "Width ladder")."""


def ladder_root() -> Path:
    """Folder of the built entries: ``cache_dir()/ladder``."""
    return cache_dir() / "ladder"


@dataclass
class LadderEntry:
    """One built ladder SAE."""

    name: str
    """Folder name, e.g. ``w4608-k32``."""
    spec: str
    """``load_sae`` spec: ``default:ladder/NAME``."""
    folder: Path
    """The sae_lens folder (``cfg.json``, weights, ``quality.json``, ``preset.json``)."""
    d_sae: int
    """Width (number of latents)."""
    k: int
    """TopK k in training (≈ the served mean L0)."""
    quality: dict
    """The entry's ``quality.json``."""
    model: str = "default"
    """``default`` or ``tiny``."""
    hook: str = PRIMARY
    """Hook the SAE reads."""


def entry_name(d_sae: int, k: int, hook: str = PRIMARY, model: str = "default", resample_every: int = 0, general_text: int = 0,
               training_samples: int | None = None, refit_decoder: bool = False) -> str:
    """The folder name of a rung (see the module docstring)."""
    parts = (["tiny"] if model == "tiny" else []) + [f"w{d_sae}", f"k{k}"]
    if hook != (TINY_HOOK if model == "tiny" else PRIMARY):
        parts.append(f"L{hook.split('.')[1]}")
    if resample_every:
        parts.append(f"r{resample_every}")
    if general_text:
        parts.append(f"g{general_text}")
    if training_samples:
        parts.append(f"t{training_samples}")
    if refit_decoder:
        parts.append("f")
    return "-".join(parts)


def parse_sizes(text: str | None, what: str) -> tuple[int, ...] | None:
    """Comma-separated positive integers (``--widths``, ``--ks``); ``None`` for no text."""
    if text is None:
        return None
    values = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise LabError(f"{what} must be whole numbers separated by commas, e.g. 4608,9216; got {item!r}") from None
        if value <= 0:
            raise LabError(f"{what} must be positive; got {value}")
        values.append(value)
    if not values:
        raise LabError(f"no {what} given")
    return tuple(values)


def rungs(widths: tuple[int, ...], ks: tuple[int, ...]) -> list[tuple[int, int]]:
    """Every (width, k), sorted; a k larger than its width or a non-positive size is a ``LabError``."""
    out = []
    for w in widths:
        for k in ks:
            if isinstance(w, bool) or not isinstance(w, int) or not isinstance(k, int) or w <= 0 or k <= 0:
                raise LabError(f"ladder widths and k must be positive whole numbers; got width {w!r}, k {k!r}")
            if k > w:
                raise LabError(f"k = {k} is larger than the width {w}: a TopK SAE keeps k of its {w} latents")
            out.append((w, k))
    return sorted(set(out))


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("cfg.json", "sae_weights.safetensors", "quality.json", "preset.json"))


def built_ladder(model: str | None = None) -> list[LadderEntry]:
    """Every complete entry in the user cache (optionally of one model), sorted by width, then k, then name."""
    root = ladder_root()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir() or not _complete(folder):
            continue
        try:
            quality = json.loads((folder / "quality.json").read_text())
            s = quality["settings"]
            entry = LadderEntry(folder.name, SPEC_PREFIX + folder.name, folder, int(s["d_sae"]), int(s["k"]), quality, s["model"], s["hook"])
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ladder entry %s has an unreadable quality.json (%s); skipped", folder, exc)
            continue
        if model is None or entry.model == model:
            out.append(entry)
    return sorted(out, key=lambda e: (e.d_sae, e.k, e.name))


def build_command(name: str) -> str:
    """The command that builds the entry ``name`` (or the default ladder when the name is not one we write)."""
    m = _NAME.match(name)
    if not m:
        return "python -m engine.sae_recipe ladder"
    cmd = f"python -m engine.sae_recipe ladder --widths {int(m['w'])} --ks {int(m['k'])}"
    if m["model"]:
        cmd += " --model tiny"
    if m["layer"]:
        cmd += f" --hook blocks.{int(m['layer'])}.hook_resid_post"
    if m["r"]:
        cmd += f" --resample-every {int(m['r'])}"
    if m["g"]:
        cmd += f" --general-text {int(m['g'])}"
    if m["t"]:
        cmd += f" --tokens {int(m['t'])}"
    if m["f"]:
        cmd += " --refit-decoder"
    return cmd


def ladder_folder(name: str) -> Path:
    """The folder of the built entry ``name``; a name that is not built is a ``LabError`` naming the built entries
    and the command that builds it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise LabError(f"{name!r} is not a ladder entry name (letters, digits, '-', '_', '.'; e.g. w4608-k32)")
    folder = ladder_root() / name
    if _complete(folder):
        return folder
    built = [e.name for e in built_ladder()]
    listed = ", ".join(built) if built else "none yet"
    raise LabError(f"the ladder SAE {name!r} is not built (built: {listed}); build it with `{build_command(name)}`")


# ------------------------------------------------------------------------------------------------ building


@dataclass
class LadderConfig:
    """What ``python -m engine.sae_recipe ladder`` builds."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    """SAE widths (latents)."""
    ks: tuple[int, ...] = DEFAULT_KS
    """TopK k values; one entry per (width, k)."""
    hook: str | None = None
    """Hook to train at; ``None``: the primary hook (tiny model: ``blocks.1.hook_resid_post``)."""
    model: str = "default"
    """``default`` (SmolLM2, the recipe's full corpus) or ``tiny`` (the random test model, a tiny corpus)."""
    work: str | None = None
    """Cache of own answers, activations and TopK checkpoints; ``None``: ``WORK[model]``."""
    seed: int = 0
    """Seed of the corpus, the calibration sample and training."""
    resample_every: int = 0
    """Recipe v2: ``TrainConfig.resample_every`` (0 = off)."""
    general_text: int = 0
    """Recipe v2: ``CorpusConfig.general_text_passages`` (0 = off)."""
    training_samples: int | None = None
    """Recipe v2: ``TrainConfig.training_samples`` (activations seen in training); ``None``: the recipe's."""
    refit_decoder: bool = False
    """Recipe v2: ``TrainConfig.refit_decoder`` (names get ``-f``)."""
    preset_ks: tuple[int, ...] | None = None
    """Preset grid K; ``None``: the recipe's default (tiny: 2)."""
    preset_alphas: tuple[float, ...] | None = None
    """Preset grid α; ``None``: the recipe's default (tiny: 3)."""
    command: str = ""
    """The command line, recorded in each ``quality.json``."""
    extra: dict = field(default_factory=dict)
    """Overrides of ``TrainConfig`` fields (tests: steps, batch size)."""


@dataclass
class LadderResult:
    """One rung of a ``build_ladder`` call."""

    name: str
    """Entry name."""
    folder: Path
    """Where it is (or was already)."""
    built: bool
    """False when the entry existed and was skipped."""
    seconds: float
    """Wall time of building it (0 when skipped)."""
    heldout: dict
    """Held-out explained variance, L0, dead fraction of the served SAE."""


def recipe_configs(cfg: LadderConfig) -> tuple[CorpusConfig, TrainConfig, PresetConfig]:
    """The recipe's corpus, training and preset settings for ``cfg`` (the tiny model gets a tiny corpus and run)."""
    from engine.sae_recipe.corpus import CorpusConfig
    from engine.sae_recipe.preset import PresetConfig
    from engine.sae_recipe.train import TrainConfig

    if cfg.model == "tiny":
        ccfg = CorpusConfig(n_train=40, n_heldout=12, answer_tokens=8, seed=cfg.seed)
        tcfg = TrainConfig(batch_size=64, training_samples=64 * 30, lr=3e-3, lr_end=3e-4, lr_warm_up_steps=5, dead_feature_window=10,
                           collect_batch=16, seed=cfg.seed)
        pcfg = PresetConfig(ks=(2,), alphas=(3.0,), max_new_tokens=6, candidates=8)
    else:
        ccfg, tcfg, pcfg = CorpusConfig(seed=cfg.seed), TrainConfig(seed=cfg.seed), PresetConfig()
    ccfg.general_text_passages = cfg.general_text
    tcfg = replace(tcfg, resample_every=cfg.resample_every, refit_decoder=cfg.refit_decoder, **cfg.extra)
    if cfg.training_samples:
        tcfg = replace(tcfg, training_samples=cfg.training_samples)
    if cfg.preset_ks:
        pcfg.ks = tuple(cfg.preset_ks)
    if cfg.preset_alphas:
        pcfg.alphas = tuple(cfg.preset_alphas)
    return ccfg, tcfg, pcfg


def _check(cfg: LadderConfig) -> tuple[str, list[tuple[int, int]]]:
    if cfg.model not in MODELS:
        raise LabError(f"the ladder is built for the default model or the tiny test model, not {cfg.model!r}")
    hook = cfg.hook or (TINY_HOOK if cfg.model == "tiny" else PRIMARY)
    if not re.fullmatch(r"blocks\.\d+\.hook_resid_post", hook):
        raise LabError(f"hook {hook!r} is not a residual-stream hook blocks.N.hook_resid_post")
    if cfg.resample_every < 0 or cfg.general_text < 0:
        raise LabError("resampling interval and general-text passages must be 0 (off) or positive")
    if cfg.training_samples is not None and cfg.training_samples <= 0:
        raise LabError(f"the number of training samples must be positive; got {cfg.training_samples}")
    pairs = rungs(tuple(cfg.widths), tuple(cfg.ks))
    for k in cfg.preset_ks or ():
        if k > min(w for w, _ in pairs):
            raise LabError(f"preset K = {k} is larger than the smallest width {min(w for w, _ in pairs)}")
    return hook, pairs


def build_ladder(cfg: LadderConfig, lm: LoadedModel | None = None) -> list[LadderResult]:
    """Build every missing (width, k) entry of ``cfg``; built ones are skipped. ``lm``: an already loaded model."""
    hook, pairs = _check(cfg)
    names = {p: entry_name(p[0], p[1], hook, cfg.model, cfg.resample_every, cfg.general_text, cfg.training_samples,
                                 cfg.refit_decoder) for p in pairs}
    root = ladder_root()
    root.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[int, int], LadderResult] = {}
    for p, name in names.items():
        if _complete(root / name):
            q = json.loads((root / name / "quality.json").read_text())
            logger.info("ladder %s: already built, skipped", name)
            results[p] = LadderResult(name, root / name, False, 0.0, q["heldout"])
    todo = [p for p in pairs if p not in results]
    if todo:
        results.update(_build(cfg, hook, todo, names, lm))
    return [results[p] for p in pairs]


def _build(cfg: LadderConfig, hook: str, todo: list[tuple[int, int]], names: dict, lm) -> dict[tuple[int, int], LadderResult]:
    import torch
    from tqdm.auto import tqdm

    from engine.lm.loading import load_model
    from engine.sae_recipe.pipeline import build_sae, prepare_for
    from engine.sae_recipe.serve import write_sae_folder

    ccfg, tcfg, pcfg = recipe_configs(cfg)
    work = Path(cfg.work or WORK[cfg.model])
    torch.manual_seed(cfg.seed)
    if lm is None:
        lm = load_model(cfg.model, "cpu")
    prep = prepare_for(lm, cfg.model, hook, ccfg, tcfg, work, cfg.seed)
    root = ladder_root()
    out: dict[tuple[int, int], LadderResult] = {}
    for w, k in tqdm(todo, desc="ladder", unit="SAE", file=sys.stderr):
        name, t0 = names[(w, k)], time.time()
        rung_tcfg = replace(tcfg, d_sae=w, k=k)
        built = build_sae(lm, prep, hook, rung_tcfg, pcfg, work)
        q = built.quality
        settings = {"name": name, "spec": SPEC_PREFIX + name, "model": cfg.model, "hook": hook, "d_sae": w, "k": k,
                    "train": rung_tcfg.to_json(), "corpus": ccfg.to_json(), "preset_grid": pcfg.to_json(),
                    "activations_key": prep.key, "command": cfg.command or build_command(name)}
        quality = {**{m: q["heldout"][m] for m in ("explained_variance", "l0", "dead_fraction")}, **q,
                   "seconds": round(time.time() - t0, 1), "settings": settings}
        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_sae_folder(built.served, tmp, {"quality.json": quality, "preset.json": built.preset})
            shutil.rmtree(root / name, ignore_errors=True)  # an incomplete leftover (never listed) is replaced
            os.replace(tmp, root / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("ladder %s: %s in %.1f s", name, q["heldout"], quality["seconds"])
        out[(w, k)] = LadderResult(name, root / name, True, quality["seconds"], q["heldout"])
    return out
