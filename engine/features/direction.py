"""The paper's feature selection: a difference-of-means refusal direction, SAE features ranked by decoder cosine with
it, optionally re-ranked by attribution to the refusal log-prob, and the top K turned into a clamp set.

1. **Direction** at ``blocks.L.hook_resid_post`` (:func:`refusal_direction`), pooled over token positions, position 0
   (the attention sink) always left out:

   * ``answers``: mean residual on the answer tokens of (prompt, forced refusal) chats minus the mean on the answer
     tokens of (prompt, the model's own answer) chats (:func:`engine.features.search.contrast_pairs` builds both);
   * ``prompts``: mean residual at the last token of the chat-formatted harmful prompts minus the mean at the last
     token of the harmless ones (the token from which the answer is predicted).

2. **Cosine ranking**: for every SAE given, ``cos(W_dec[i], r)`` for each feature i, best (most positive) first.
   The direction is taken at layer L only and compared with the decoder rows of SAEs at *every* layer, as the paper
   does (a layer-15 direction against Gemma Scope SAEs at several layers); the residual stream keeps much of a
   direction from layer to layer, but a far-away SAE's cosines are a weaker signal.

3. **Attribution** (``rerank="grad-x-act"``, :func:`refusal_attribution`): with the refusal target
   :data:`REFUSAL_TARGET` forced after each chat prompt, ``L`` = the mean log-prob of its tokens (one prompt), and the
   score of feature i is ``mean over prompts of Σ_{t ≥ 1} z_{t,i} · ∂L/∂z_{t,i}`` (gradient × activation at the
   SAE's hook, summed over all prompt and answer positions except the sink). The SAE is spliced in as
   ``h + D(z) − D(z).detach()`` so the model's output is unchanged and every SAE's score is its total effect, also
   through later SAEs. It is the one-step (linear) version of the paper's integrated gradients. The top
   ``candidates`` features by cosine are re-ordered by this score.

4. **Clamp set** (``engine.features.selection.select_clamp``): the top K features per SAE, or the top K (SAE, feature) pairs overall (the
   paper keeps 20 pairs), in mode ``set`` (value α × the feature's mean activation on refusal-answer tokens) or
   ``multiply`` (factor m). A multiply clamp only scales what is already there, so it does nothing where a feature is
   off: the selection warns (and logs) when chosen features are inactive on the model's own answers and on the
   prompts, the texts the clamp acts on during generation. On the default model refusal features are off on its own
   answers (docs/DEFAULT_SAE.md), which is why its presets use ``set``.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from engine.errors import LabError
from engine.features.search import ChatPair, _answer_ids
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE, check_fits, hook_layer

logger = logging.getLogger(__name__)

DirectionSource = Literal["answers", "prompts"]
Rerank = Literal["none", "grad-x-act"]

REFUSAL_TARGET = "I'm sorry, but I can't help with that."
"""The refusal answer forced after each prompt for the attribution score (its mean token log-prob is L)."""



# ------------------------------------------------------------------------------------------------- configs


@dataclass
class DirectionConfig:
    """How the refusal direction is found and the features are ranked."""

    layer: int = 15
    """Layer L whose blocks.L.hook_resid_post gives the difference-of-means direction."""
    source: DirectionSource = "answers"
    """answers: refusal-answer minus own-answer tokens; prompts: last token of harmful minus harmless prompts."""
    rerank: Rerank = "none"
    """none: rank by decoder cosine; grad-x-act: re-rank the top candidates by attribution to the refusal log-prob."""
    candidates: int = 40
    """Features per SAE kept in the ranking (and re-ranked by attribution)."""
    batch_size: int = 16
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise LabError(f"--layer must be a layer index ≥ 0, got {self.layer}")
        if self.source not in typing.get_args(DirectionSource):
            raise LabError(f"unknown direction source {self.source!r}; choose answers or prompts")
        if self.rerank not in typing.get_args(Rerank):
            raise LabError(f"unknown re-ranking {self.rerank!r}; choose none or grad-x-act")
        if self.candidates < 1:
            raise LabError(f"--candidates must be at least 1, got {self.candidates}")
        if self.batch_size < 1:
            raise LabError(f"--batch-size must be at least 1, got {self.batch_size}")

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RefusalDirection:
    """A difference-of-means direction in the residual stream at one layer."""

    vector: Float[Tensor, " d_model"]
    """mean(refusal side) − mean(other side), not normalised."""
    hook: str
    source: DirectionSource
    n_refusal: int
    """Token positions pooled on the refusal (or harmful) side."""
    n_other: int
    """Token positions pooled on the ordinary-answer (or harmless) side."""

    @property
    def layer(self) -> int:
        return hook_layer(self.hook)

    def to_json(self) -> dict:
        return {"hook": self.hook, "layer": self.layer, "source": self.source, "norm": round(float(self.vector.norm()), 4),
                "n_refusal_positions": self.n_refusal, "n_other_positions": self.n_other}


@dataclass(frozen=True)
class FeatureRank:
    """One feature's standing against the refusal direction."""

    feature: int
    cosine: float
    """Cosine between the decoder row W_dec[i] and the direction."""
    attribution: float | None
    """Gradient × activation score for the refusal log-prob (None without re-ranking)."""
    refusal_mean: float
    """Mean activation over refusal-answer tokens (zeros included)."""
    answer_mean: float
    """Mean activation over the model's own answer tokens (zeros included)."""
    prompt_mean: float
    """Mean activation over prompt tokens, position 0 left out (zeros included)."""

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("feature", "cosine", "attribution", "refusal_mean", "answer_mean", "prompt_mean")}
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


@dataclass
class SAERanking:
    """The ranked candidate features of one SAE, best first."""

    sae: LoadedSAE = field(repr=False)
    rows: list[FeatureRank]

    @property
    def hook(self) -> str:
        return self.sae.hook_name

    @property
    def spec(self) -> str:
        """The ``--sae`` spec of this SAE (as a clamp file names it)."""
        from engine.method.clamp_sets import sae_spec_of

        return sae_spec_of(self.sae.source)

    def to_json(self, top: int | None = None) -> dict:
        return {"sae": self.spec, "hook": self.hook, "layer": self.sae.layer, "rows": [r.to_json() for r in self.rows[:top]]}


@dataclass
class DirectionResult:
    """The direction, each SAE's ranking, and any warnings."""

    direction: RefusalDirection
    rankings: list[SAERanking]
    config: DirectionConfig
    warnings: list[str] = field(default_factory=list)

    def to_json(self, top: int | None = None) -> dict:
        return {"direction": self.direction.to_json(), "config": {k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
                "saes": [r.to_json(top) for r in self.rankings], "warnings": list(self.warnings)}


# ------------------------------------------------------------------------------------------------- one pass, many hooks


@dataclass
class _Item:
    """A token sequence and which of its positions count for which side."""

    ids: list[int]
    roles: dict[str, range]
    """``dir_a`` / ``dir_b`` (the two sides of the direction), ``refusal`` / ``answer`` / ``prompt`` (SAE statistics)."""


def _hook_acts(lm: LoadedModel, hooks: Sequence[str], items: Sequence[_Item], batch_size: int) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
    """``(start, width, {hook: [batch, width, d]})`` per batch: one pass per batch, stopping after the last hook."""
    stop = max(hook_layer(h) for h in hooks) + 1
    for start in range(0, len(items), batch_size):
        batch = lm.batch([it.ids for it in items[start : start + batch_size]])
        seen: dict[str, Tensor] = {}
        with lm.lock, torch.no_grad():
            lm.model.run_with_hooks(
                batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop,
                fwd_hooks=[(h, lambda act, hook, seen=seen: seen.__setitem__(hook.name, act.detach())) for h in hooks],
            )
        yield start, batch.tokens.shape[1], seen


def _positions(item: _Item, role: str, width: int) -> list[int]:
    """Padded positions of ``role`` in ``item`` (position 0 of the unpadded sequence, the sink, is never counted)."""
    span = item.roles.get(role, range(0))
    offset = width - len(item.ids)
    return [offset + p for p in span if p >= 1]


def _accumulate(
    lm: LoadedModel, hook: str, saes: Sequence[LoadedSAE], items: Sequence[_Item], batch_size: int
) -> tuple[dict[str, tuple[Tensor, int]], list[dict[str, tuple[Tensor, int]]]]:
    """Sums and counts: of the residual at ``hook`` over ``dir_a``/``dir_b``, and of each SAE's z over its roles."""
    hooks = sorted({hook, *(s.hook_name for s in saes)}, key=hook_layer)
    d_model = lm.d_model
    direction = {r: (torch.zeros(d_model, dtype=torch.float64), 0) for r in ("dir_a", "dir_b")}
    stats = [{r: (torch.zeros(s.d_sae, dtype=torch.float64), 0) for r in ("refusal", "answer", "prompt")} for s in saes]
    for start, width, acts in _hook_acts(lm, hooks, items, batch_size):
        for row in range(acts[hook].shape[0]):
            item = items[start + row]
            for role in direction:
                pos = _positions(item, role, width)
                if pos:
                    total, n = direction[role]
                    direction[role] = (total + acts[hook][row, pos].double().sum(0).cpu(), n + len(pos))
        for sae, stat in zip(saes, stats):
            with torch.no_grad():
                z = sae.encode(acts[sae.hook_name]).float().cpu()
            for row in range(z.shape[0]):
                item = items[start + row]
                for role in stat:
                    pos = _positions(item, role, width)
                    if pos:
                        total, n = stat[role]
                        stat[role] = (total + z[row, pos].double().sum(0), n + len(pos))
    return direction, stats


def _mean(total_n: tuple[Tensor, int]) -> Tensor:
    total, n = total_n
    return (total / max(n, 1)).float()


# ------------------------------------------------------------------------------------------------- the search


def check_layer(lm: LoadedModel, layer: int) -> int:
    """``layer`` if the model has it, else a clear error."""
    if not 0 <= layer < lm.n_layers:
        raise LabError(f"layer {layer} is out of range: model {lm.name} has layers 0..{lm.n_layers - 1}")
    return layer


def _items(
    lm: LoadedModel, source: DirectionSource, refusal_pairs: Sequence[ChatPair], answer_pairs: Sequence[ChatPair],
    harmful: Sequence[str], harmless: Sequence[str],
) -> list[_Item]:
    items: list[_Item] = []
    dir_ref, dir_ans = ("dir_a", "dir_b") if source == "answers" else ("", "")
    for pairs, side, dir_role in ((refusal_pairs, "refusal", dir_ref), (answer_pairs, "answer", dir_ans)):
        for prompt, answer in pairs:
            ids, start = _answer_ids(lm, prompt, answer)
            roles = {side: range(start, len(ids))}
            if dir_role:
                roles[dir_role] = range(start, len(ids))
            if side == "answer":  # the prompt tokens are the same in both chats: count them once
                roles["prompt"] = range(0, start)
            items.append(_Item(ids, roles))
    if source == "prompts":
        for prompts, dir_role in ((harmful, "dir_a"), (harmless, "dir_b")):
            for prompt in prompts:
                ids = lm.encode(lm.chat_prompt(prompt))
                items.append(_Item(ids, {dir_role: range(len(ids) - 1, len(ids)), "prompt": range(0, len(ids))}))
    return items


def refusal_direction_and_stats(
    lm: LoadedModel, saes: Sequence[LoadedSAE], refusal_pairs: Sequence[ChatPair], answer_pairs: Sequence[ChatPair],
    cfg: DirectionConfig, harmful: Sequence[str] = (), harmless: Sequence[str] = (),
) -> tuple[RefusalDirection, list[dict[str, Tensor]]]:
    """The direction (see module docstring) and, per SAE, its mean activation on refusal / answer / prompt tokens."""
    check_layer(lm, cfg.layer)
    for sae in saes:
        check_fits(sae, lm)
    if not refusal_pairs or not answer_pairs:
        raise LabError("the direction search needs (prompt, refusal) and (prompt, answer) pairs; got an empty list")
    if cfg.source == "prompts" and (not harmful or not harmless):
        raise LabError("--source prompts needs both harmful and harmless prompts")
    items = _items(lm, cfg.source, refusal_pairs, answer_pairs, harmful, harmless)
    sums, stats = _accumulate(lm, cfg.hook, saes, items, cfg.batch_size)
    if sums["dir_a"][1] == 0 or sums["dir_b"][1] == 0:
        raise LabError("no token positions to average on one side of the direction (all answers empty, or one-token prompts)")
    vector = _mean(sums["dir_a"]) - _mean(sums["dir_b"])
    direction = RefusalDirection(vector, cfg.hook, cfg.source, sums["dir_a"][1], sums["dir_b"][1])
    means = [{role: _mean(v) for role, v in stat.items()} for stat in stats]
    return direction, means


def decoder_cosines(sae: LoadedSAE, direction: Float[Tensor, " d_model"]) -> Float[Tensor, " d_sae"]:
    """``cos(W_dec[i], direction)`` for every feature i."""
    w = sae.W_dec.detach().float().cpu()
    r = direction.detach().float().cpu()
    if w.shape[1] != r.shape[0]:
        raise LabError(f"the SAE at {sae.hook_name} has width {w.shape[1]}, the direction {r.shape[0]}")
    return (w @ r) / (w.norm(dim=1) * r.norm()).clamp(min=1e-12)


def _splice(act: Tensor, sae: LoadedSAE, i: int, leaves: dict[int, Tensor]) -> Tensor:
    """``h + D(z) − D(z).detach()`` with z a fresh leaf stored in ``leaves[i]``: the same value, a gradient for z."""
    z = sae.encode(act)
    leaves[i] = z.detach().requires_grad_(True)
    return act + sae.decode(leaves[i]) - sae.decode(z).detach()


def refusal_attribution(
    lm: LoadedModel, saes: Sequence[LoadedSAE], prompts: Sequence[str], target: str = REFUSAL_TARGET, batch_size: int = 8
) -> list[Float[Tensor, " d_sae"]]:
    """Per SAE, ``mean over prompts of Σ_{t≥1} z_{t,i} ∂L/∂z_{t,i}``, L = mean log-prob of ``target``'s tokens.

    ``target`` is forced after each chat-formatted prompt (teacher forcing). Every SAE is spliced in at its hook as
    ``h + D(z) − D(z).detach()`` (the forward pass is unchanged) with z a leaf, all in one pass.
    """
    if not prompts:
        raise LabError("the attribution needs at least one prompt")
    for sae in saes:
        check_fits(sae, lm)
    encoded = [_answer_ids(lm, p, target) for p in prompts]
    if any(len(ids) <= start for ids, start in encoded):
        raise LabError("the refusal target is empty")
    totals = [torch.zeros(s.d_sae, dtype=torch.float64) for s in saes]
    for begin in range(0, len(encoded), batch_size):
        chunk = encoded[begin : begin + batch_size]
        batch = lm.batch([ids for ids, _ in chunk])
        width = batch.tokens.shape[1]
        leaves: dict[int, Tensor] = {}

        hooks = [(s.hook_name, lambda act, hook, i=i, s=s, leaves=leaves: _splice(act, s, i, leaves)) for i, s in enumerate(saes)]
        with lm.lock, torch.enable_grad(), lm.model.hooks(fwd_hooks=hooks):
            logits = lm.model(batch.tokens, attention_mask=batch.attention_mask)
            logp = logits.float().log_softmax(-1)
            objective = logp.new_zeros(())
            for row, (ids, start) in enumerate(chunk):
                off = width - len(ids)
                target_ids = torch.tensor(ids[start:], device=logp.device)
                where = torch.arange(off + start - 1, off + len(ids) - 1, device=logp.device)
                objective = objective + logp[row, where].gather(-1, target_ids[:, None]).mean()
            grads = torch.autograd.grad(objective, [leaves[i] for i in range(len(saes))])
        mask = torch.zeros(len(chunk), width, 1)
        for row, (ids, _) in enumerate(chunk):
            mask[row, width - len(ids) + 1 :] = 1.0  # real tokens, the sink (position 0) left out
        for i, g in enumerate(grads):
            contrib = (leaves[i].detach() * g).float().cpu() * mask
            totals[i] += contrib.sum((0, 1)).double()
    return [(t / len(prompts)).float() for t in totals]


def rank_features(
    lm: LoadedModel, saes: Sequence[LoadedSAE], refusal_pairs: Sequence[ChatPair], answer_pairs: Sequence[ChatPair],
    cfg: DirectionConfig | None = None, harmful: Sequence[str] = (), harmless: Sequence[str] = (),
    attribution_prompts: Sequence[str] | None = None,
) -> DirectionResult:
    """The direction search (module docstring): each SAE's top ``cfg.candidates`` features, best first.

    ``refusal_pairs`` / ``answer_pairs`` are (prompt, forced refusal) and (prompt, own answer) chats: they give the
    ``answers`` direction and every feature's mean activation on refusal and answer tokens. ``harmful`` /
    ``harmless`` prompts give the ``prompts`` direction. The attribution (``cfg.rerank``) uses
    ``attribution_prompts``, by default the prompts of ``answer_pairs``.
    """
    cfg = cfg or DirectionConfig()
    if not saes:
        raise LabError("no SAE to rank: give at least one (--sae SPEC)")
    direction, means = refusal_direction_and_stats(lm, saes, refusal_pairs, answer_pairs, cfg, harmful, harmless)
    logger.info("direction at %s (%s): norm %.2f from %d / %d positions", direction.hook, cfg.source,
                float(direction.vector.norm()), direction.n_refusal, direction.n_other)
    scores: list[Tensor | None] = [None] * len(saes)
    if cfg.rerank == "grad-x-act":
        prompts = list(attribution_prompts) if attribution_prompts is not None else list(dict.fromkeys(p for p, _ in answer_pairs))
        scores = list(refusal_attribution(lm, saes, prompts, batch_size=max(1, cfg.batch_size // 2)))
    rankings = []
    for sae, mean, score in zip(saes, means, scores):
        cos = decoder_cosines(sae, direction.vector)
        order = [int(i) for i in torch.argsort(cos, descending=True)[: cfg.candidates]]
        if score is not None:
            order.sort(key=lambda i: float(score[i]), reverse=True)
        rows = [FeatureRank(i, float(cos[i]), None if score is None else float(score[i]), float(mean["refusal"][i]),
                            float(mean["answer"][i]), float(mean["prompt"][i])) for i in order]
        rankings.append(SAERanking(sae, rows))
        logger.info("%s: top features %s", sae.hook_name, [(r.feature, round(r.cosine, 3)) for r in rows[:5]])
    return DirectionResult(direction, rankings, cfg)
