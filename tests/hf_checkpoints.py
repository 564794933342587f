"""Tiny random Hugging Face checkpoints of real architectures, built at test time (no hub), and a fake HF cache.

Each checkpoint is 2 layers, width 64, with the lab's byte-level tokenizer (engine.lm.tiny) saved beside it, so the
folder is a complete checkpoint. ``put_in_cache`` lays a folder out as a Hugging Face cache snapshot
(``models--ORG--NAME/snapshots/<hash>/`` + ``refs/main``) under an official repo id.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

ARCHS = ("gpt2", "gemma2", "llama", "qwen2")
OFFICIAL = {"gpt2": "gpt2", "gemma2": "google/gemma-2-2b-it", "llama": "meta-llama/Llama-3.2-1B", "qwen2": "Qwen/Qwen2-0.5B"}
"""The official repo id each tiny checkpoint is cached under (its shapes differ from the real one on purpose)."""
GEMMA_SOFTCAP = (8.0, 5.0)
"""(attention, final logits) softcaps of the tiny gemma-2: small, so the random logits really are capped."""


def build_checkpoint(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny random ``kind`` checkpoint (config, safetensors weights, tokenizer) into ``folder``."""
    import transformers as tf

    from engine.lm.tiny import byte_tokenizer

    tok = byte_tokenizer()
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.2, **ids))
    elif kind == "gemma2":
        cfg = tf.Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256,
                              sliding_window=16, attn_logit_softcapping=GEMMA_SOFTCAP[0],
                              final_logit_softcapping=GEMMA_SOFTCAP[1], initializer_range=0.2, **ids)
        model = tf.Gemma2ForCausalLM(cfg)
    elif kind in ("llama", "qwen2"):
        cls_cfg, cls = (tf.LlamaConfig, tf.LlamaForCausalLM) if kind == "llama" else (tf.Qwen2Config, tf.Qwen2ForCausalLM)
        cfg = cls_cfg(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, **ids)
        model = cls(cfg)
    else:
        raise ValueError(kind)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def put_in_cache(folder: Path, cache: Path, repo_id: str, revision: str = "0" * 40) -> Path:
    """Copy ``folder`` into ``cache`` as the ``refs/main`` snapshot of ``repo_id``; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def point_hf_cache(monkeypatch, cache: Path) -> None:
    """Make huggingface_hub (whose constants are read at import) and any child process use ``cache``, offline."""
    from huggingface_hub import constants

    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from engine.lm.hub import hub_reachable

    hub_reachable.cache_clear()
