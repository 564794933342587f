"""``features direction``: rank SAE features by decoder cosine with a difference-of-means refusal direction (the paper's
feature selection, ``engine.features.direction``) and write the top K as a clamp file for ``flips --clamp``."""

from __future__ import annotations

import logging

from engine.cli.args import Parser, add_dataclass_options, dataclass_from_args, positive_int
from engine.errors import LabError

logger = logging.getLogger(__name__)


def add_command(sub) -> None:
    from engine.features.direction import DirectionConfig
    from engine.features.selection import SelectionConfig
    from engine.lm.dtypes import DTYPE_CHOICES

    group = sub.add_parser("features", help="feature selection (direction search) and feature-card precompute")
    inner = group.add_subparsers(dest="features_command", required=True, parser_class=Parser)
    d = inner.add_parser("direction", help="rank features by cosine with a refusal direction; write the top K as a clamp file")
    d.add_argument("--sae", action="append", default=None,
                   help="SAE to rank (repeatable): default:HOOK | LOCAL_FOLDER | RELEASE/SAE_ID | tiny:HOOK "
                        "(default: every shipped default SAE, for the default model)")
    d.add_argument("--model", default="default", help="default | tiny | a local Hugging Face checkpoint folder | a TransformerLens official name (from the HF cache first)")
    d.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="number format: auto (float32 on CPU, bfloat16 on CUDA above 1B parameters) | float32 | bfloat16 | float16")
    d.add_argument("--prompts", type=positive_int, default=24, help="prompts used from each source (default: 24)")
    d.add_argument("--harmless", default="builtin:harmless",
                   help="prompts of the (prompt, answer) pairs, and the harmless side of --source prompts (default: builtin:harmless)")
    d.add_argument("--harmful", default="builtin:harmful", help="the harmful side of --source prompts (default: builtin:harmful)")
    d.add_argument("--max-new-tokens", type=positive_int, default=48, help="length of the model's own answers (default: 48)")
    d.add_argument("--out", default=None, help="clamp file to write (FILE.json), usable by flips --clamp")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_dataclass_options(d, DirectionConfig)
    add_dataclass_options(d, SelectionConfig)
    d.set_defaults(handler=cmd_direction)
    p = inner.add_parser("precompute", help="precompute every feature card of an SAE into the card store (resumable)")
    p.add_argument("--sae", required=True, help="SAE: default:HOOK | LOCAL_FOLDER | RELEASE/SAE_ID | tiny:HOOK")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(handler=cmd_precompute)


def default_saes(model: str) -> list[str]:
    """The SAEs ranked when no ``--sae`` is given: every shipped default SAE, for the default model only."""
    from engine.lm.models import is_default_model
    from engine.lm.sae_sources import default_sae_names

    names = default_sae_names() if is_default_model(model) else []
    if not names:
        raise LabError(f"no --sae given and model {model!r} has no default SAE; pass --sae SPEC (repeatable)")
    return [f"default:{hook}" for hook in names]


def cmd_direction(args) -> dict:
    from pathlib import Path

    from engine.features.direction import DirectionConfig, check_layer
    from engine.features.selection import SelectionConfig, search_direction_clamp, write_direction_clamp
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.prompts import load_prompts

    # Cheap checks first, so bad input fails before the model loads.
    cfg = dataclass_from_args(DirectionConfig, args)
    select = dataclass_from_args(SelectionConfig, args)
    specs = args.sae or default_saes(args.model)
    if args.out is not None and not Path(args.out).parent.is_dir():
        raise LabError(f"cannot write {args.out}: folder {Path(args.out).parent} does not exist")
    harmless = load_prompts(args.harmless, args.prompts)
    harmful = load_prompts(args.harmful, args.prompts) if cfg.source == "prompts" else []
    lm = load_model(args.model, args.device, args.dtype)
    check_layer(lm, cfg.layer)
    saes = [load_sae(spec, lm) for spec in dict.fromkeys(specs)]
    found = search_direction_clamp(lm, saes, harmless, harmful, cfg, select, max_new_tokens=args.max_new_tokens)
    result, selection = found.result, found.selection
    out = {**result.to_json(top=select.top_k), "selection": selection.to_json(), "warnings": found.warnings,
           "texts": {"refusal_pairs": found.refusal_pairs, "answer_pairs": found.answer_pairs, "harmless": args.harmless,
                     "harmful": args.harmful if cfg.source == "prompts" else None}}
    if args.out is not None:
        extra = {"model": lm.name, "texts": out["texts"], "command": "python -m engine features direction"}
        out["out"] = str(write_direction_clamp(args.out, result, selection, extra))
    return out


def cmd_precompute(args) -> dict:
    """Compute, resume or reuse the card store of one SAE (``engine.features.card_precompute``); Ctrl-C keeps the
    finished chunks, and running the same command again resumes after them."""
    import threading

    from engine.features.card_precompute import precompute_cards
    from engine.features.corpus import card_corpus
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae

    lm = load_model(args.model, args.device)
    sae = load_sae(args.sae, lm)
    corpus = card_corpus(lm)

    def progress(done: int, total: int, what: str) -> None:
        logger.info("cards %d/%d %s", done, total, what)

    result = precompute_cards(lm, sae, corpus, cancel=threading.Event(), progress=progress)
    return {"store": str(result.path), "status": result.status, "reused": result.reused,
            "resumed_chunks": result.resumed_chunks, "computed_chunks": result.computed_chunks,
            "seconds": round(result.seconds, 2), "size_bytes": result.size_bytes, "d_sae": sae.d_sae,
            "corpus": {"version": corpus.version, "texts": len(corpus.texts), "per_source": corpus.counts}}
