"""A tiny random model and SAEs for fast tests and UI tests: no downloads, built in milliseconds.

The tokenizer is byte-level (every UTF-8 byte is a token) with the same chat markers as SmolLM2, so the chat
template, stop tokens and decoding follow exactly the code paths the default model uses.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from engine.lm.fast import accelerate
from engine.lm.models import LoadedModel

_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges and the two chat markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_model(seed: int = 0, n_layers: int = 4, d_model: int = 32, device: torch.device | str = "cpu") -> LoadedModel:
    """A random llama-style HookedTransformer (RMS norm, rotary, gated MLP) like the default, only tiny."""
    tokenizer = byte_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=8,
        n_heads=d_model // 8,
        d_mlp=2 * d_model,
        d_vocab=len(tokenizer),
        n_ctx=512,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        gated_mlp=True,
        final_rms=True,
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        seed=seed,
        device=str(device),
        init_weights=True,
        initializer_range=0.2,  # large random weights make generations vary with the input
    )
    model = HookedTransformer(cfg, move_to_device=False)
    model.to(device, print_details=False)
    accelerate(model)
    model.tokenizer = tokenizer  # set directly: TransformerLens' set_tokenizer re-loads tokenizers by hub name
    model.eval()
    return LoadedModel(name="tiny", model=model, tokenizer=tokenizer, device=torch.device(device))


def tiny_sae(
    d_in: int,
    d_sae: int = 64,
    hook_name: str = "blocks.1.hook_resid_post",
    architecture: str = "jumprelu",
    seed: int = 0,
    model_name: str = "tiny",
):
    """A random sae_lens SAE (``jumprelu``, ``standard`` or ``topk``) with unit-norm decoder rows."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    meta = SAEMetadata(hook_name=hook_name, model_name=model_name)
    gen = torch.Generator().manual_seed(seed)
    if architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    elif architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=max(1, d_sae // 8), metadata=meta))
    else:
        raise ValueError(architecture)
    with torch.no_grad():
        w = torch.randn(d_sae, d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.copy_(0.05 * torch.randn(d_sae, generator=gen))
        sae.b_dec.zero_()
        if architecture == "jumprelu":
            sae.threshold.fill_(0.1)
    sae.eval()
    return sae
