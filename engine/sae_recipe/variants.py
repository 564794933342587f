"""``python -m engine.sae_recipe variants``: train recipe variants on the cached activations and compare their quality.

Choosing the next default recipe (issue 16) means comparing training settings (width, k, training samples,
resampling, the decoder refit) on the *same* activations. This runs the recipe's own steps (``pipeline.prepare``,
``train.train_topk``, ``serve.serve_as_jumprelu``, ``serve.refit_decoder``, ``serve.quality``) once per variant and
skips the preset search, which does not change the weights. Per variant it records the held-out quality of the TopK
SAE, the served JumpReLU and the served JumpReLU after the decoder refit, each on every held-out position and on the
chat positions alone (general text left out, so corpora with and without it compare). Both served SAEs are saved as
sae_lens folders (``WORK/variants/ID/served``, ``…/refit``), loadable by path.

Results are appended to a JSON list (``--out``, default ``WORK/variants.json``); a variant already in it is skipped,
so an interrupted comparison resumes and never overwrites a finished row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from engine.errors import LabError

logger = logging.getLogger(__name__)

SETTABLE = ("d_sae", "k", "training_samples", "batch_size", "lr", "lr_end", "resample_every", "resample_until", "dead_feature_window",
            "aux_loss_coefficient")
"""``TrainConfig`` fields a variant may set (``KEY=VALUE``)."""


def parse_variant(text: str) -> dict:
    """``"k=48,d_sae=6144"`` → ``{"k": 48, "d_sae": 6144}``, typed like ``TrainConfig``; a clear error otherwise."""
    from engine.sae_recipe.train import TrainConfig

    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out: dict = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SETTABLE:
            raise LabError(f"a variant is KEY=VALUE with KEY one of {', '.join(SETTABLE)}; got {part!r}")
        cast = float if types[key] in ("float", float) else int
        try:
            number = cast(value)
        except ValueError:
            raise LabError(f"{key} must be a {'number' if cast is float else 'whole number'}; got {value!r}") from None
        if number < 0 or (number == 0 and key not in ("resample_every", "resample_until", "aux_loss_coefficient")):
            raise LabError(f"{key} must be positive; got {value!r}")
        out[key] = number
    return out


def run_variants(variants: list[dict], hook: str, general_text: int, work: Path, out: Path, model: str = "default", seed: int = 0,
                 lm=None) -> list[dict]:
    """Train, serve, refit and measure every variant not yet in ``out``; returns every row of ``out``. ``model``:
    ``default`` (the recipe's corpus) or ``tiny`` (the ladder's tiny corpus and run, for tests)."""
    import torch

    from engine.lm.loading import load_model
    from engine.sae_recipe.ladder import LadderConfig, recipe_configs, rungs
    from engine.sae_recipe.pipeline import prepare_for
    from engine.sae_recipe.serve import quality, refit_decoder, serve_as_jumprelu, write_sae_folder
    from engine.sae_recipe.train import train_topk
    from engine.store.files import write_json

    rows: list[dict] = json.loads(out.read_text()) if out.is_file() else []
    tags = {r["tag"] for r in rows}
    todo = [(v, json.dumps({"model": model, "hook": hook, "general_text": general_text, "seed": seed, **v}, sort_keys=True)) for v in variants]
    todo = [(v, t) for v, t in todo if t not in tags]
    if not todo:
        return rows
    ccfg, base, _ = recipe_configs(LadderConfig(model=model, seed=seed, general_text=general_text))
    for v, _tag in todo:  # every variant is checked before anything loads
        cfg = dataclasses.replace(base, **v)
        rungs((cfg.d_sae,), (cfg.k,))
    torch.manual_seed(seed)
    lm = lm or load_model(model, "cpu")
    prep = prepare_for(lm, model, hook, ccfg, base, work, seed)
    data, x = prep.data, prep.data.acts[hook]
    chat = data.conv < ccfg.n_train + ccfg.n_heldout  # general-text sequences come after the conversations
    held, held_chat, train = x[data.heldout], x[data.heldout & chat], x[~data.heldout]
    for v, tag in todo:
        cfg = dataclasses.replace(base, **v)
        t0 = time.time()
        topk = train_topk(train, hook, cfg, model_name=lm.name)
        train_s = time.time() - t0
        served, report = serve_as_jumprelu(topk, x[prep.calib_idx], held, cfg.k)
        folder = work / "variants" / hashlib.sha256(tag.encode()).hexdigest()[:12]
        row = {"tag": tag, "hook": hook, "general_text": general_text, "settings": cfg.to_json(), "train_seconds": round(train_s, 1),
               "topk": report["topk_heldout"], "served_thresholds": report["served"],
               "served": quality(served, held), "served_chat": quality(served, held_chat), "folder": str(folder)}
        write_sae_folder(served, folder / "served", {})
        t1 = time.time()
        row["refit"] = {**refit_decoder(served, train), "seconds": round(time.time() - t1, 1)}
        row["refit"].update(heldout=quality(served, held), heldout_chat=quality(served, held_chat))
        write_sae_folder(served, folder / "refit", {})
        rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, rows)  # atomic: a crash mid-write never truncates the finished rows
        logger.info("variant %s: served EV %.4f, refit EV %.4f", tag, row["served"]["explained_variance"], row["refit"]["heldout"]["explained_variance"])
    return rows
