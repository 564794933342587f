"""Valid flips: prompts the base model answers but the clamped model refuses.

``valid = ¬refusal(base_text) ∧ refusal(clamped_text)``, judged on the whole texts (``engine.judge``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from engine.clamp import ClampSpec
from engine.generation import GenerationConfig, generate
from engine.judge import JudgeConfig, judge
from engine.models import LoadedModel


@dataclass
class FlipRecord:
    """One prompt, answered with and without the clamp (DESIGN §5 ``flips.jsonl``)."""

    id: int
    prompt: str
    base_text: str
    clamped_text: str
    base_refusal: bool
    clamped_refusal: bool
    valid: bool
    clamped_degenerate: bool
    base_reasons: list
    clamped_reasons: list
    base_stop_id: int | None = None
    """Token that ended the base answer (None: cut at max_new_tokens); recovery targets it after the answer."""

    def to_json(self) -> dict:
        return asdict(self)


def run_flips(
    lm: LoadedModel,
    specs: Sequence[ClampSpec],
    prompts: Sequence[str],
    gen: GenerationConfig | None = None,
    judge_cfg: JudgeConfig | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[FlipRecord]:
    """Base and clamped answers, judged, streamed one prompt at a time (in batches of ``gen.batch_size``)."""
    gen = gen or GenerationConfig()
    judge_cfg = judge_cfg or JudgeConfig()
    for start in range(0, len(prompts), gen.batch_size):
        if cancel is not None and cancel.is_set():
            return
        chunk = list(prompts[start : start + gen.batch_size])
        base = list(generate(lm, chunk, gen, cancel=cancel))
        clamped = list(generate(lm, chunk, gen, specs=specs, cancel=cancel))
        for b, c in zip(base, clamped):
            vb, vc = judge(b.text, judge_cfg), judge(c.text, judge_cfg)
            yield FlipRecord(
                id=start + b.index,
                prompt=chunk[b.index],
                base_text=b.text,
                clamped_text=c.text,
                base_refusal=vb.refusal,
                clamped_refusal=vc.refusal,
                valid=(not vb.refusal) and vc.refusal,
                clamped_degenerate=vc.degenerate,
                base_reasons=vb.to_json()["reasons"],
                clamped_reasons=vc.to_json()["reasons"],
                base_stop_id=b.stop_id,
            )


def summarize_flips(records: Sequence[FlipRecord | dict], specs: Sequence[ClampSpec]) -> dict:
    """Counts for ``summary.json``."""
    rows = [r.to_json() if isinstance(r, FlipRecord) else r for r in records]
    valid = [r for r in rows if r["valid"]]
    first = specs[0] if specs else None
    return {
        "n_prompts": len(rows),
        "n_valid": len(valid),
        "n_base_refusal": sum(r["base_refusal"] for r in rows),
        "n_clamped_refusal": sum(r["clamped_refusal"] for r in rows),
        "n_valid_fluent": sum(not r["clamped_degenerate"] for r in valid),
        "n_valid_degenerate": sum(r["clamped_degenerate"] for r in valid),
        "features": first.features if first else [],
        "mode": first.mode if first else None,
        "value": first.values if first else None,
        "clamps": [s.to_json() for s in specs],
    }
