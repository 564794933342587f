"""``ksweep``: flips and recovery with the top-K direction features, for several K (the paper's Table 11)."""

from __future__ import annotations

from engine.cli.args import add_dataclass_options, dataclass_from_args, int_list, positive_int


def add_command(sub) -> None:
    from engine.features.direction import DirectionConfig
    from engine.features.selection import SelectionConfig
    from engine.lm.dtypes import DTYPE_CHOICES
    from engine.recovery.config import RecoveryConfig

    k = sub.add_parser("ksweep", help="flips + recovery with the top-K direction features, for several K")
    k.add_argument("--prompts", required=True, help="prompts to flip and recover (builtin:… | FILE.json/.jsonl/.csv)")
    k.add_argument("--ks", required=True, type=int_list, help="comma-separated K, e.g. 5,10,20")
    k.add_argument("--out", required=True, help="folder for k_<K>/ runs and ksweep.json")
    k.add_argument("--limit", type=positive_int, default=None, help="use the first N prompts")
    k.add_argument("--model", default="default", help="default | tiny | a local Hugging Face checkpoint folder | a TransformerLens official name (from the HF cache first)")
    k.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="number format: auto (float32 on CPU, bfloat16 on CUDA above 1B parameters) | float32 | bfloat16 | float16")
    k.add_argument("--sae", action="append", default=None, help="SAE to rank (repeatable; default: every shipped default SAE)")
    k.add_argument("--direction-prompts", type=positive_int, default=24, help="prompts used from each direction source (default: 24)")
    k.add_argument("--harmless", default="builtin:harmless",
                   help="direction: prompts of the (prompt, answer) pairs, and the harmless side of --source prompts (default: builtin:harmless)")
    k.add_argument("--harmful", default="builtin:harmful", help="direction: the harmful side of --source prompts (default: builtin:harmful)")
    k.add_argument("--device", default="auto")
    add_dataclass_options(k, DirectionConfig, skip=("batch_size",))
    add_dataclass_options(k, SelectionConfig, skip=("top_k", "per"))
    add_dataclass_options(k, RecoveryConfig)
    k.set_defaults(handler=cmd_ksweep)


def cmd_ksweep(args) -> dict:
    from engine.cli.features import default_saes
    from engine.features.direction import DirectionConfig, check_layer, rank_features
    from engine.features.search import contrast_pairs
    from engine.features.selection import SelectionConfig
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from engine.method.generation import GenerationConfig
    from engine.method.prompts import load_prompts
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.ksweep import check_ks, run_ksweep
    from engine.store.files import prepare_run_dir

    ks = check_ks(args.ks)
    direction = dataclass_from_args(DirectionConfig, args)
    select = dataclass_from_args(SelectionConfig, args, top_k=max(ks), per="overall")
    recovery = dataclass_from_args(RecoveryConfig, args)
    prompts = load_prompts(args.prompts, args.limit)
    # the direction's texts are read before the model loads, so a bad source fails at once
    harmless = load_prompts(args.harmless, args.direction_prompts)
    harmful = load_prompts(args.harmful, args.direction_prompts) if direction.source == "prompts" else []
    prepare_run_dir(args.out)
    specs = args.sae or default_saes(args.model)
    lm = load_model(args.model, args.device, args.dtype)
    check_layer(lm, direction.layer)
    saes = [load_sae(s, lm) for s in dict.fromkeys(specs)]
    refusal_pairs, answer_pairs = contrast_pairs(lm, harmless)
    ranking = rank_features(lm, saes, refusal_pairs, answer_pairs, direction, harmful=harmful, harmless=harmless)
    gen = GenerationConfig(max_new_tokens=recovery.max_new_tokens)
    settings = {"model": args.model, "prompts": args.prompts, "limit": args.limit, "direction_harmless": args.harmless,
                "direction_harmful": args.harmful if direction.source == "prompts" else None}
    return run_ksweep(lm, ranking, ks, prompts, args.out, select, recovery, gen, settings=settings)
