"""Copy-free forward passes for TransformerLens' gated MLP and unembedding, and a copy-free attention weight layout.

TransformerLens 3.x computes ``F.linear(x, W.T.contiguous())`` in these modules to match Hugging Face's bf16
accumulation order bit for bit. That copies every weight on every call; for the default model's 49152×576
unembedding that is 113 MB per forward, which dominated token-by-token generation on CPU (measured: 3.9 s of
6.2 s for 20 tokens). ``x @ W`` reads the same weights in place. Results agree to float32 rounding; the hook
points are called exactly as before, so hooks and caches see the same activations.

Attention has the same problem without a forward to swap: every call rearranges ``W_Q``/``W_K``/``W_V``
(``[head, d_model, d_head]`` → ``[(head d_head), d_model]``) and makes ``W_O`` contiguous as ``[d_model, (head d_head)]``,
which copies all four (profiled on the default model, batch 8: ``aten::copy_`` was the largest single cost of a
decoding step). :func:`_relayout_attention` stores each of these parameters once as a strided view of a
``[d_model, (head d_head)]`` block, so TransformerLens' own rearranges become views and ``.contiguous()`` a no-op. The
values, shapes and names are unchanged (``state_dict`` and hooks see the same tensors); only the strides differ.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from transformer_lens import HookedTransformer
from transformer_lens.components import Unembed
from transformer_lens.components.abstract_attention import AbstractAttention
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


def _as_view(module: nn.Module, name: str, order: tuple[int, int, int], view_order: tuple[int, int, int]) -> None:
    """Re-store parameter ``name`` as a view of a contiguous block: ``block = W.permute(order)`` flattened to 2-D."""
    param = getattr(module, name, None)
    if not isinstance(param, nn.Parameter) or param.dim() != 3:
        return
    shape = param.detach().permute(order).shape  # e.g. [d_model, head, d_head]
    block = param.detach().permute(order).reshape(shape[0], -1).contiguous()  # [d_model, (head d_head)]
    view = block.view(shape).permute(view_order)  # the original shape, strided over the block
    setattr(module, name, nn.Parameter(view, requires_grad=param.requires_grad))


def _relayout_attention(attn: AbstractAttention) -> None:
    """Q/K/V weights ``[head, d_model, d_head]`` and ``W_O`` ``[head, d_head, d_model]`` over ``[d_model, (head d_head)]``."""
    if attn.cfg.load_in_4bit or attn.cfg.use_split_qkv_input or attn.cfg.use_attn_in:
        return
    for name in ("W_Q", "_W_K", "_W_V", "W_K", "W_V"):
        if name in attn._parameters:
            _as_view(attn, name, (1, 0, 2), (1, 0, 2))
    if "W_O" in attn._parameters:
        _as_view(attn, "W_O", (2, 0, 1), (1, 2, 0))


def accelerate(model: HookedTransformer) -> HookedTransformer:
    """Swap in the copy-free forwards on this model's modules (idempotent; other instances untouched)."""
    for module in model.modules():
        if isinstance(module, AbstractAttention):
            _relayout_attention(module)
        elif isinstance(module, GatedMLP) and not module.cfg.is_layer_norm_activation():
            module.forward = types.MethodType(_gated_mlp_forward, module)
        elif isinstance(module, Unembed):
            module.forward = types.MethodType(_unembed_forward, module)
    return model
