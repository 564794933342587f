"""Precompute every feature card of an SAE into a store (:mod:`engine.features.card_store`). No streamlit import.

The work is split into resumable chunks, each saved atomically (temp file + rename) in ``<store>.partial/``:

1. ``acts-NNNNN``: the corpus in chunks of ``chunk_texts`` texts; every non-zero SAE activation (token, feature,
   value) — SAEs are sparse, so this is small;
2. ``dec-NNNNN``: the features in chunks of ``chunk_features``; decoder-cosine neighbours and logit effects;
3. the store itself, assembled from the chunks, written to a temp file and renamed into place; then the partial
   folder is removed.

Cancelling (the ``cancel`` event, or a crash) between chunks leaves the finished chunks; running again resumes
after them. A finished store is never recomputed or overwritten: :func:`precompute_cards` returns it as it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import LabError
from engine.features.card_store import STORE_FORMAT, CardStore, StoreConfig, store_key, store_path, weights_hash
from engine.features.corpus import Corpus
from engine.features.search import sae_activations
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE, check_fits

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``(done, total, what)`` after each chunk."""


@dataclass(frozen=True)
class PrecomputeResult:
    """What a precompute did."""

    path: Path
    """The store (exists only when ``status`` is ``done``)."""
    status: str
    """``done`` or ``cancelled``."""
    reused: bool
    """The store already existed; nothing was computed."""
    resumed_chunks: int
    """Chunks found finished from an earlier, interrupted run."""
    computed_chunks: int
    seconds: float
    size_bytes: int
    """Size of the store file (0 when not done)."""


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _acts_chunk(lm: LoadedModel, sae: LoadedSAE, seqs: list[list[int]], first_token: int, cfg: StoreConfig) -> dict[str, torch.Tensor]:
    """Every non-zero activation of ``seqs`` (position 0 of each skipped), with global token indices."""
    acts = sae_activations(lm, sae, seqs, cfg.batch_size)
    toks, feats, vals = [], [], []
    offset = first_token
    for seq, z in zip(seqs, acts):
        nz = (z[1:] > 0).nonzero()
        toks.append(nz[:, 0] + 1 + offset)
        feats.append(nz[:, 1])
        vals.append(z[1:][nz[:, 0], nz[:, 1]])
        offset += len(seq)
    return {"tok": torch.cat(toks).long(), "feat": torch.cat(feats).int(), "val": torch.cat(vals).float()}


@torch.no_grad()
def _dec_chunk(lm: LoadedModel, sae: LoadedSAE, lo: int, hi: int, cfg: StoreConfig, w_norm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Neighbours (decoder cosine, self excluded) and top/bottom logit effects of features ``lo..hi-1``."""
    rows = w_norm[lo:hi]
    out: dict[str, torch.Tensor] = {}
    k = min(cfg.n_neighbours, w_norm.shape[0] - 1)
    if k > 0:
        cos = rows @ w_norm.T
        cos[torch.arange(hi - lo), torch.arange(lo, hi)] = -float("inf")
        top = torch.topk(cos, k, dim=1)
        out["nb_index"], out["nb_cos"] = top.indices.int(), top.values.float()
    w_u = lm.model.W_U.float()
    effect = (sae.W_dec[lo:hi].float().to(w_u.device) @ w_u).cpu()
    n = min(cfg.n_logits, effect.shape[1])
    up, down = torch.topk(effect, n, dim=1), torch.topk(-effect, n, dim=1)
    out.update(up_ids=up.indices.int(), up_val=up.values.float(), down_ids=down.indices.int(), down_val=-down.values.float())
    return out


def _assemble(acts: dict[str, np.ndarray], seqs: list[list[int]], d_sae: int, cfg: StoreConfig) -> dict[str, torch.Tensor]:
    """The per-feature arrays from every non-zero activation (vectorised; see the store's table)."""
    tok, feat, val = acts["tok"], acts["feat"].astype(np.int64), acts["val"]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_total = int(offsets[-1])
    n_read = int((lengths - 1).clip(min=0).sum())
    count = np.bincount(feat, minlength=d_sae)
    total = np.bincount(feat, weights=val, minlength=d_sae)
    peak = np.zeros(d_sae, dtype=np.float32)
    np.maximum.at(peak, feat, val)
    bins = cfg.n_bins
    safe_peak = np.where(peak > 0, peak, 1.0)
    which = np.minimum((val / safe_peak[feat] * bins).astype(np.int64), bins - 1)
    hist = np.bincount(feat * bins + which, minlength=d_sae * bins).reshape(d_sae, bins)

    # examples: sort by feature, then value descending; top ranks, then one random rank per quantile band
    order = np.lexsort((-val, feat))
    starts = np.concatenate([[0], np.cumsum(count)])[:-1]
    ranks = np.full((d_sae, cfg.n_examples), -1, dtype=np.int64)
    top = np.arange(cfg.n_top)[None, :]
    ranks[:, : cfg.n_top] = np.where(top < count[:, None], top, -1)
    if cfg.n_quantile:
        q = np.arange(cfg.n_quantile)
        lo = (q[None, :] * count[:, None]) // cfg.n_quantile
        hi = ((q[None, :] + 1) * count[:, None]) // cfg.n_quantile
        u = np.random.default_rng(cfg.seed).random((d_sae, cfg.n_quantile))
        ranks[:, cfg.n_top :] = np.where(hi > lo, lo + (u * (hi - lo)).astype(np.int64), -1)
    has = ranks >= 0
    pick = np.where(has, starts[:, None] + ranks.clip(min=0), 0)
    pick = np.where(has, order[pick] if len(order) else 0, 0)
    ex_token = np.where(has, tok[pick] if len(tok) else -1, -1)
    ex_value = np.where(has, val[pick] if len(val) else 0.0, 0.0).astype(np.float32)
    ex_quantile = np.where(has, 1.0 - (ranks + 0.5) / np.maximum(count[:, None], 1), 0.0).astype(np.float32)

    # windows: the feature's activation on the tokens around each example, looked up in the (feature, token) order
    keys = np.sort(feat * n_total + tok)
    key_val = val[np.lexsort((tok, feat))]
    shift = np.arange(-cfg.before, cfg.after + 1)
    where = ex_token[:, :, None] + shift[None, None, :]
    text = np.searchsorted(offsets, ex_token.clip(min=0), side="right") - 1
    inside = has[:, :, None] & (where >= offsets[text][:, :, None]) & (where < offsets[text + 1][:, :, None])
    query = np.arange(d_sae)[:, None, None] * n_total + where.clip(0, max(n_total - 1, 0))
    at = np.searchsorted(keys, query).clip(max=max(len(keys) - 1, 0))
    found = (keys[at] == query) if len(keys) else np.zeros_like(query, dtype=bool)
    window = np.where(found, key_val[at] if len(key_val) else 0.0, 0.0)
    window = np.where(inside, window, np.nan).astype(np.float16)
    return {
        "corpus_ids": torch.tensor(np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])),
        "text_offsets": torch.tensor(offsets), "density": torch.tensor(count / max(n_read, 1), dtype=torch.float32),
        "mean_active": torch.tensor(total / np.maximum(count, 1), dtype=torch.float32), "max_act": torch.tensor(peak),
        "hist": torch.tensor(hist, dtype=torch.int32), "ex_token": torch.tensor(ex_token, dtype=torch.int64),
        "ex_value": torch.tensor(ex_value), "ex_quantile": torch.tensor(ex_quantile), "ex_window": torch.tensor(window),
    }


def precompute_cards(
    lm: LoadedModel, sae: LoadedSAE, corpus: Corpus, cfg: StoreConfig | None = None,
    cancel: threading.Event | None = None, progress: Progress | None = None,
) -> PrecomputeResult:
    """Compute (or resume, or reuse) the card store of ``sae`` over ``corpus`` (see the module docstring)."""
    cfg = (cfg or StoreConfig()).check()
    check_fits(sae, lm)
    t0 = time.perf_counter()
    key = store_key(lm, sae, corpus.version, cfg)
    path = store_path(sae, key)
    if path.is_file():
        CardStore(path, expect_key=key)  # a readable store of this key
        return PrecomputeResult(path, "done", True, 0, 0, time.perf_counter() - t0, path.stat().st_size)
    part = path.with_suffix(".partial")
    part.mkdir(parents=True, exist_ok=True)
    seqs = [lm.encode(t) for t in corpus.texts]
    if not any(len(s) > 1 for s in seqs):
        raise LabError("the corpus has no text longer than one token: a feature card needs more")
    firsts = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    text_chunks = [(i, min(i + cfg.chunk_texts, len(seqs))) for i in range(0, len(seqs), cfg.chunk_texts)]
    feat_chunks = [(i, min(i + cfg.chunk_features, sae.d_sae)) for i in range(0, sae.d_sae, cfg.chunk_features)]
    jobs = [("acts", n, c) for n, c in enumerate(text_chunks)] + [("dec", n, c) for n, c in enumerate(feat_chunks)]
    total = len(jobs) + 1
    resumed = computed = 0
    w_norm = None
    for done, (kind, n, (lo, hi)) in enumerate(jobs):
        target = part / f"{kind}-{n:05d}.safetensors"
        if target.is_file():
            resumed += 1
        else:
            if cancel is not None and cancel.is_set():
                logger.info("card precompute cancelled after %d of %d chunks", done, total)
                return PrecomputeResult(path, "cancelled", False, resumed, computed, time.perf_counter() - t0, 0)
            if kind == "acts":
                tensors = _acts_chunk(lm, sae, seqs[lo:hi], int(firsts[lo]), cfg)
            else:
                if w_norm is None:
                    w = sae.W_dec.detach().float().cpu()
                    w_norm = w / w.norm(dim=1, keepdim=True).clamp(min=1e-12)
                tensors = _dec_chunk(lm, sae, lo, hi, cfg, w_norm)
            _save_atomic(tensors, target)
            computed += 1
        if progress is not None:
            progress(done + 1, total, f"{'corpus texts' if kind == 'acts' else 'features'} {lo}–{hi - 1}")
    parts = [_load(part / f"acts-{n:05d}.safetensors") for n in range(len(text_chunks))]
    acts = {k: torch.cat([p[k] for p in parts]).numpy() for k in ("tok", "feat", "val")}
    arrays = _assemble(acts, seqs, sae.d_sae, cfg)
    decs = [_load(part / f"dec-{n:05d}.safetensors") for n in range(len(feat_chunks))]
    for k in ("nb_index", "nb_cos", "up_ids", "up_val", "down_ids", "down_val"):
        if k in decs[0]:
            arrays[k] = torch.cat([d[k] for d in decs])
        else:  # no neighbours asked for (or a one-feature SAE)
            arrays[k] = torch.full((sae.d_sae, 0), -1, dtype=torch.int32 if k == "nb_index" else torch.float32)
    used = set(arrays["corpus_ids"].tolist()) | set(arrays["up_ids"].flatten().tolist()) | set(arrays["down_ids"].flatten().tolist())
    vocab = {int(i): lm.tokenizer.decode([int(i)], skip_special_tokens=False) for i in sorted(used)}
    meta = {"format": STORE_FORMAT, "key": key, "sae": sae.source, "hook": sae.hook_name, "d_sae": sae.d_sae,
            "weights": weights_hash(sae), "model": lm.name, "corpus_version": corpus.version, "corpus_counts": corpus.counts,
            "n_texts": len(seqs), "n_tokens": int(sum(max(len(s) - 1, 0) for s in seqs)), "nnz": int(len(acts["val"])),
            "cfg": asdict(cfg), "created": time.time(), "seconds": round(time.perf_counter() - t0, 2)}
    _save_atomic(arrays, path, {"meta": json.dumps(meta), "vocab": json.dumps(vocab)})
    shutil.rmtree(part, ignore_errors=True)
    if progress is not None:
        progress(total, total, "store written")
    logger.info("card store %s: %d features, %d tokens, %.1f s", path.name, sae.d_sae, meta["n_tokens"], meta["seconds"])
    return PrecomputeResult(path, "done", False, resumed, computed, time.perf_counter() - t0, path.stat().st_size)
