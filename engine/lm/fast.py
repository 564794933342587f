"""Copy-free forward passes for TransformerLens' gated MLP and unembedding.

TransformerLens 3.x computes ``F.linear(x, W.T.contiguous())`` in these modules to match Hugging Face's bf16
accumulation order bit for bit. That copies every weight on every call; for the default model's 49152×576
unembedding that is 113 MB per forward, which dominated token-by-token generation on CPU (measured: 3.9 s of
6.2 s for 20 tokens). ``x @ W`` reads the same weights in place. Results agree to float32 rounding; the hook
points are called exactly as before, so hooks and caches see the same activations.
"""

from __future__ import annotations

import types

import torch
from transformer_lens import HookedTransformer
from transformer_lens.components import Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP


def _gated_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(x @ self.W_gate)  # [batch, pos, d_mlp]
    pre_linear = self.hook_pre_linear(x @ self.W_in)  # [batch, pos, d_mlp]
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)  # [batch, pos, d_mlp]
    return post_act @ self.W_out + self.b_out  # [batch, pos, d_model]


def _unembed_forward(self, residual: torch.Tensor) -> torch.Tensor:
    residual = self.hook_in(residual)
    return self.hook_out(residual @ self.W_U + self.b_U)  # [batch, pos, d_vocab]


def accelerate(model: HookedTransformer) -> HookedTransformer:
    """Swap in the copy-free forwards on this model's modules (idempotent; other instances untouched)."""
    for module in model.modules():
        if isinstance(module, GatedMLP) and not module.cfg.is_layer_norm_activation():
            module.forward = types.MethodType(_gated_mlp_forward, module)
        elif isinstance(module, Unembed):
            module.forward = types.MethodType(_unembed_forward, module)
    return model
