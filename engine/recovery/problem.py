"""The teacher-forced recovery problem for a batch of valid flips, with the layers below δ run once.

Sequence per prompt: ``prompt ‖ answer[:-1]`` where ``answer`` is the first ``answer_tokens`` tokens of the base
model's own answer, followed by the stop token that ended it when it ended within those tokens (so recovery also
learns where the base answer stops: without it the clamp can append a refusal after a recovered answer); the
logits at the last prompt position and at each answer position predict ``answer``.
Layers 0..ℓ do not depend on δ, so h(ℓ) (with every clamp at or below ℓ applied) is computed once here; each
optimisation step runs only blocks ℓ+1..L−1, and the unembedding only at the answer-predicting positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import hook_layer
from engine.method.clamp import ClampSpec, clamped


@dataclass
class Problem:
    """Tensors of one batch; masks are ``[batch, pos]`` booleans over the left-padded sequence."""

    ids: list[int]
    """Flip ids of the rows."""
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    prompt_rows: Bool[Tensor, "batch pos"]
    """Positions δ may perturb (the prompt, sink excluded)."""
    answer_rows: Bool[Tensor, "batch pos"]
    """Answer positions (the shared generation row acts here)."""
    pooled: Bool[Tensor, "batch pos"]
    """Positions pooled by the metrics (all real tokens but the sink)."""
    targets: Int[Tensor, "batch pos"]
    """Next-token targets, -100 where none."""
    first_target: Int[Tensor, " batch"]
    """The position predicting the answer's first token."""
    prompt_lens: list[int]
    h_def: Float[Tensor, "batch pos d_model"]
    """Defended resid_post at the δ layer."""
    delta_layer: int

    @property
    def target_mask(self) -> Bool[Tensor, "batch pos"]:
        return self.targets >= 0

    def subset(self, idx: Int[Tensor, " k"]) -> Problem:
        """The rows ``idx`` of this batch (same padded width, so every row's computation is unchanged)."""
        keep = idx.tolist()
        tensors = {f.name: getattr(self, f.name)[idx] for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, ids=[self.ids[i] for i in keep], prompt_lens=[self.prompt_lens[i] for i in keep], **tensors)


def delta_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def clamp_layer(spec: ClampSpec) -> int:
    """The resid_post layer a clamp acts at (ℓ for ``blocks.ℓ.hook_resid_post``, ℓ−1 for ``blocks.ℓ.hook_resid_pre``)."""
    layer = hook_layer(spec.hook_name)
    return layer - 1 if spec.hook_name.endswith("hook_resid_pre") else layer


def default_delta_layer(specs: Sequence[ClampSpec]) -> int:
    """The lowest clamped layer: δ sits where an SAE is, so the encoder projection and attribution work there."""
    if not specs:
        raise LabError("the run has no clamps, so there is no layer to put δ at")
    return min(clamp_layer(s) for s in specs)


def check_delta_layer(specs: Sequence[ClampSpec], layer: int, n_layers: int) -> int:
    """A δ layer in range and at or below the lowest clamp (a clamp below δ would see no δ at all)."""
    if not 0 <= layer < n_layers:
        raise LabError(f"--delta-layer {layer} is outside the model's layers 0..{n_layers - 1}")
    lowest = default_delta_layer(specs)
    if layer > lowest:
        raise LabError(f"--delta-layer {layer} is above the lowest clamp (layer {lowest}); δ must sit at or below every clamp")
    return layer


def target_answer(lm: LoadedModel, flip: dict, answer_tokens: int) -> list[int]:
    """The base answer's first ``answer_tokens`` tokens, plus its stop token when the answer ended within them."""
    answer = lm.encode_answer(flip["base_text"])[:answer_tokens]
    stop_id = flip.get("base_stop_id")  # absent in runs written before it was recorded
    if stop_id is not None and len(answer) < answer_tokens:
        answer.append(int(stop_id))
    return answer


def build_problem(lm: LoadedModel, specs: Sequence[ClampSpec], flips: Sequence[dict], answer_tokens: int, delta_layer: int) -> Problem:
    """Tokenise, left-pad and run the prefix (blocks 0..δ layer, clamps applied) without gradients."""
    if not 0 <= delta_layer < lm.n_layers:
        raise LabError(f"delta layer {delta_layer} is outside the model's 0..{lm.n_layers - 1}")
    seqs, prompt_lens, answers = [], [], []
    for f in flips:
        prompt = lm.encode(lm.chat_prompt(f["prompt"]))
        answer = target_answer(lm, f, answer_tokens)
        if not answer:
            raise LabError(f"flip {f['id']} has an empty base answer; nothing to recover towards")
        seqs.append(prompt + answer[:-1])
        prompt_lens.append(len(prompt))
        answers.append(answer)
    batch = lm.batch(seqs)
    n, width = batch.tokens.shape
    dev = lm.device
    prompt_rows = torch.zeros((n, width), dtype=torch.bool, device=dev)
    answer_rows = torch.zeros_like(prompt_rows)
    pooled = torch.zeros_like(prompt_rows)
    targets = torch.full((n, width), -100, dtype=torch.long, device=dev)
    first_target = torch.zeros(n, dtype=torch.long, device=dev)
    for b, (seq, p_len, answer) in enumerate(zip(seqs, prompt_lens, answers)):
        pad = width - len(seq)
        prompt_rows[b, pad + 1 : pad + p_len] = True
        answer_rows[b, pad + p_len :] = True
        pooled[b, pad + 1 :] = True
        # the last prompt position predicts answer[0], answer position k predicts answer[k + 1]
        targets[b, pad + p_len - 1 : pad + p_len - 1 + len(answer)] = torch.tensor(answer, device=dev)
        first_target[b] = pad + p_len - 1
    with clamped(lm, [s for s in specs if _fires_by(s, delta_layer)]), torch.no_grad():
        h_def = lm.model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=delta_layer + 1)
    return Problem([int(f["id"]) for f in flips], batch.tokens, batch.attention_mask, prompt_rows, answer_rows, pooled,
                   targets, first_target, prompt_lens, h_def.detach(), delta_layer)


def _fires_by(spec: ClampSpec, layer: int) -> bool:
    """Whether a clamp's hook runs inside blocks 0..layer (so it belongs to the cached prefix)."""
    hl = hook_layer(spec.hook_name)
    return hl < layer or (hl == layer and not spec.hook_name.endswith("hook_resid_pre"))


def split_specs(specs: Sequence[ClampSpec], delta_layer: int) -> tuple[list[ClampSpec], list[ClampSpec]]:
    """(clamps inside the prefix, clamps that fire while the suffix blocks run)."""
    prefix = [s for s in specs if _fires_by(s, delta_layer)]
    return prefix, [s for s in specs if s not in prefix]


def run_upper_blocks(lm: LoadedModel, problem: Problem, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos"]:
    """Blocks δ_layer+1..L−1 on ``resid``, then log-probs at the answer-predicting positions only.

    Returns ``[batch, pos]`` log-probabilities of the targets (0 where there is no target). Hooks attached by the
    caller (clamps and probes at later layers) fire as the blocks run.
    """
    model = lm.model
    resid = resid.to(model.cfg.dtype)  # δ is float32; a bfloat16 model's blocks take their own format
    for block in model.blocks[problem.delta_layer + 1 :]:
        resid = block(resid, attention_mask=problem.attention_mask)  # [batch, pos, d_model]
    mask = problem.target_mask
    picked = model.ln_final(resid[mask])  # [n_targets, d_model]
    logits = model.unembed(picked[None])[0].float()  # [n_targets, d_vocab]; log-softmax accumulates in float32
    cap = model.cfg.output_logits_soft_cap
    if cap > 0:  # gemma-2 softcaps its logits in HookedTransformer.forward; this forward must too
        logits = cap * torch.tanh(logits / cap)
    logp = logits.log_softmax(-1)
    out = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
    out[mask] = logp.gather(-1, problem.targets[mask][:, None])[:, 0]
    return out
