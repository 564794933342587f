"""Helpers for the dashboard tests: AppTest on the tiny model, runs made to order."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "dashboard.py")
PAGES = ["pick", "features", "flips", "recovery", "attribution", "runs"]


def new_app(timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(ENTRY, default_timeout=timeout)
    at.run()
    return at


def goto(at, page: str):
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    return at


def problems(at) -> list[str]:
    """Exceptions and error boxes on the current page (both mean a user sees something broken)."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def clamp_rows(at) -> list[dict]:
    """The session's clamp set as engine rows (without the editor's row ids)."""
    return [{k: r[k] for k in ("sae", "features", "mode", "values")} for r in at.session_state["clamp"]["rows"]]


def wait_job(kind: str, timeout: float = 120):
    from engine.services import jobs

    job = jobs.latest_job(kind)
    assert job is not None, f"no {kind} job was started"
    assert job.wait(timeout), f"{kind} job still running after {timeout} s"
    return job


TWO_LAYER_CLAMPS = [
    {"sae": "tiny:blocks.1.hook_resid_post", "hook": "blocks.1.hook_resid_post", "features": [1, 2, 3], "mode": "set", "values": [5.0]},
    {"sae": "tiny:blocks.2.hook_resid_post", "hook": "blocks.2.hook_resid_post", "features": [4, 5], "mode": "multiply", "values": [3.0]},
]
"""A clamp set over two layers of the tiny model (rows as a run's config.json holds them)."""


def make_flips_run(data: Path, name: str = "tiny-run", n: int = 3, valid: bool = True, clamps: list[dict] | None = None) -> Path:
    """A flips run of the tiny model with hand-made valid flips (a random model never refuses by itself)."""
    run = data / "runs" / name
    run.mkdir(parents=True)
    clamp = {"sae": "tiny", "hook": "blocks.1.hook_resid_post", "features": [1, 2, 3], "mode": "set", "values": [5.0, 5.0, 5.0]}
    config = {"command": "flips", "model": "tiny", "model_id": "tiny", "sae": "tiny", "device": "cpu", "seed": 0,
              "max_new_tokens": 4, "batch_size": 4, "clamps": clamps or [clamp], "judge": None, "created": time.time()}
    (run / "config.json").write_text(json.dumps(config))
    from engine.method.judge import judge

    refusal = "I'm sorry, but I can't help with that."
    reasons = judge(refusal).to_json()["reasons"]
    rows = []
    for i in range(n):
        rows.append({
            "id": i, "prompt": f"Tell me about rivers, part {i}.", "base_text": "Rivers carry water to the sea.",
            "clamped_text": refusal, "base_refusal": False, "clamped_refusal": valid, "valid": valid, "clamped_degenerate": False,
            "base_reasons": [], "clamped_reasons": reasons,
        })
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"n_prompts": n, "n_valid": n if valid else 0, "features": [1, 2, 3], "mode": "set", "value": [5.0]}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def add_recovery(run: Path, steps: int = 2, **settings) -> dict:
    """Real recovery on the tiny model (few steps, short answers) so recovery/attribution files exist."""
    from engine.lm.loading import load_model
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery

    cfg = RecoveryConfig(steps=steps, max_new_tokens=4, answer_tokens=8, **settings)
    return run_recovery(run, cfg, lm=load_model("tiny", "cpu"))


def add_attribution_records(run: Path, n: int = 3) -> None:
    """attribution.jsonl / summary in the engine's shape, written by hand into the run's newest recovery record (the
    replay itself is tested in tests/)."""
    from engine.store.records import create_record, list_records

    found = list_records(run)
    if found:
        record = found[0].path
    else:  # a record of its own, as `recover` would have made (its recovery.jsonl left empty)
        record = create_record(run, "hand", "recovery", {"projection": "encoder", "budget": 1.0, "delta_layer": 1,
                                                          "valid": "judge", "limit": None, "flip_ids": list(range(n))})
        (record / "recovery.jsonl").write_text("")
    comps = ["full", "clamped", "non_clamped", "topk", "residual", "knockout"]
    rows = []
    for i in range(n):
        rows.append({"id": i, "prompt": f"Tell me about rivers, part {i}.", "layer": 1, "top_k": 2,
                     "top_features": [{"index": 7, "delta_z_norm": 0.5, "delta_z_mean": 0.1, "neuronpedia_url": None},
                                      {"index": 9 + i, "delta_z_norm": 0.2, "delta_z_mean": -0.1, "neuronpedia_url": None}],
                     "components": {c: {"non_refusal": c in ("full", "residual"), "base_like": False, "base_logprob_gain": 1.0 + k,
                                        "norm": 1.0, "text": f"{c} text"} for k, c in enumerate(comps)}})
    (record / "attribution.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (record / "attribution_summary.json").write_text(json.dumps({"n": n, "components": {}}))


def env_for_server(data: Path, model: str = "tiny") -> dict:
    env = dict(os.environ)
    env.update({"SAE_LAB_DATA": str(data), "SAE_LAB_UI_MODEL": model, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return env


def run_typed_flips(app) -> None:
    """On the Flips page: two typed prompts, 4 tokens, start, wait for the job, rerun; the page shows no problem."""
    app.radio(key="flips_source").set_value("Type prompts").run()
    app.text_area(key="flips_typed").input("hello\nwhat is rain?").run()
    app.text_input(key="flips_max_new").input("4")
    app.button(key="start_flips").click().run()
    job = wait_job("flips")
    assert job.status == "done", job.error
    app.run()
    assert not problems(app)
