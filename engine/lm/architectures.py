"""Hugging Face ``config.json`` → TransformerLens config, for the architectures the lab loads from files.

TransformerLens' own ``convert_hf_model_config`` keys on the *name*: a gemma-2 folder gets the hard-coded official
shapes, and a path that happens to contain "llama" is treated as llama without reading its config. So the lab maps
the checkpoint's own config here, one function per architecture, reading every shape from it (the field choices
follow TransformerLens 3.9's per-architecture branches). The weights are then converted by TransformerLens'
per-architecture converters (``get_pretrained_state_dict`` with ``hf_model=``), which make no hub call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from engine.errors import LabError

N_CTX_CAP = 8192
"""Rotary tables are built for n_ctx positions; chats here are far shorter, so longer contexts are capped."""


def _rope_theta(hf: Any, default: float = 10000.0) -> float:
    theta = getattr(hf, "rope_theta", None)
    if theta is None:
        params = getattr(hf, "rope_parameters", None) or {}
        theta = params.get("rope_theta", default) if isinstance(params, dict) else default
    return float(theta)


def _n_ctx(hf: Any, *names: str) -> int:
    for name in names:
        value = getattr(hf, name, None)
        if value:
            return min(int(value), N_CTX_CAP)
    return 2048


def _gpt2(hf: Any) -> dict:
    return {
        "d_model": hf.n_embd, "d_head": hf.n_embd // hf.n_head, "n_heads": hf.n_head,
        "d_mlp": hf.n_inner or 4 * hf.n_embd, "n_layers": hf.n_layer, "n_ctx": _n_ctx(hf, "n_ctx", "n_positions"),
        "eps": hf.layer_norm_epsilon, "d_vocab": hf.vocab_size, "act_fn": hf.activation_function,
        "use_attn_scale": getattr(hf, "scale_attn_weights", True), "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": hf.scale_attn_by_inverse_layer_idx, "normalization_type": "LN",
    }


def _llama_like(hf: Any) -> dict:
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    kv = getattr(hf, "num_key_value_heads", None)
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": _n_ctx(hf, "max_position_embeddings"), "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act,
        # TransformerLens uses grouped-query attention whenever this is set, so only set it when it groups.
        "n_key_value_heads": kv if kv and kv != hf.num_attention_heads else None,
        "normalization_type": "RMS", "positional_embedding_type": "rotary", "rotary_adjacent_pairs": False,
        "rotary_dim": d_head, "rotary_base": _rope_theta(hf), "final_rms": True, "gated_mlp": True,
    }


def _llama(hf: Any) -> dict:
    scaling = (getattr(hf, "rope_parameters", None) or {}).get("rope_type", "default")
    if scaling not in ("default", None):
        raise LabError(f"llama checkpoints with rope scaling {scaling!r} are not supported here; load them by their "
                       "TransformerLens official name instead")
    return _llama_like(hf)


def _qwen2(hf: Any) -> dict:
    cfg = _llama_like(hf)
    cfg["n_key_value_heads"] = hf.num_key_value_heads
    cfg.update({"use_attn_scale": True, "tokenizer_prepends_bos": True, "default_prepend_bos": False})
    return cfg


def _gemma2(hf: Any) -> dict:
    d_head = hf.head_dim
    layer_types = getattr(hf, "layer_types", None) or ["sliding_attention", "full_attention"] * (hf.num_hidden_layers // 2 + 1)
    soft_attn = getattr(hf, "attn_logit_softcapping", None)
    soft_out = getattr(hf, "final_logit_softcapping", None)
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": _n_ctx(hf, "max_position_embeddings"), "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size, "act_fn": getattr(hf, "hidden_activation", None) or hf.hidden_act,
        "initializer_range": hf.initializer_range, "normalization_type": "RMS", "rotary_base": _rope_theta(hf),
        "rotary_dim": d_head, "positional_embedding_type": "rotary", "use_attn_scale": True,
        "attn_scale": math.sqrt(hf.query_pre_attn_scalar), "n_key_value_heads": hf.num_key_value_heads,
        "window_size": hf.sliding_window, "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types[: hf.num_hidden_layers]],
        "attn_scores_soft_cap": float(soft_attn) if soft_attn else -1.0,
        "output_logits_soft_cap": float(soft_out) if soft_out else -1.0,
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True,
    }


CONVERTERS: dict[str, Callable[[Any], dict]] = {
    "GPT2LMHeadModel": _gpt2,
    "LlamaForCausalLM": _llama,
    "Qwen2ForCausalLM": _qwen2,
    "Gemma2ForCausalLM": _gemma2,
}
"""The architectures the lab loads from a folder or the cache (each is tested on a tiny random checkpoint)."""

MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM"}
"""``model_type`` → architecture, for a config.json without ``architectures``."""


def architecture_of(config: dict, where: str) -> str:
    """The checkpoint's architecture from its raw ``config.json``, or a clear error naming it and the supported ones."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else MODEL_TYPES.get(str(config.get("model_type")))
    if arch not in CONVERTERS:
        shown = arch or f"model_type {config.get('model_type')!r}"
        raise LabError(f"{where} holds a {shown} model, which the lab cannot load from files; supported architectures: "
                       f"{', '.join(CONVERTERS)}")
    return arch


def tl_config_dict(arch: str, hf_config: Any) -> dict:
    """The HookedTransformerConfig fields for ``arch`` read from a transformers config object."""
    return {**CONVERTERS[arch](hf_config), "original_architecture": arch}
