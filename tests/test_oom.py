"""Out of memory mid-run: one clear message naming the batch size, the finished records stay on disk, resume completes.

The GPU is simulated on CPU: a forward (flips) or the per-batch problem build (recovery) raises
``torch.cuda.OutOfMemoryError`` on the Nth batch.
"""

from __future__ import annotations

import json

import pytest
import torch

from engine.errors import LabError
from engine.lm.gpu import OutOfMemory, is_out_of_memory, memory_status, oom_guard
from engine.store.files import read_jsonl

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"


def _flips_inputs(lm):
    from engine.lm.sae_sources import load_sae
    from engine.method.clamp import ClampSpec
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.method.prompts import load_prompts

    specs = [ClampSpec(load_sae("tiny", lm), [0, 1, 2], "set", [8.0])]
    return specs, load_prompts("builtin:harmless", 6), GenerationConfig(max_new_tokens=4, batch_size=2), JudgeConfig()


def _oom_on_prefill(lm, monkeypatch, n: int) -> None:
    """The model's forward raises CUDA OOM on its ``n``-th prompt pass (a pass over more than one position)."""
    forward = lm.model.forward
    seen = [0]

    def failing(tokens, *args, **kwargs):
        if tokens.shape[1] > 1:
            seen[0] += 1
            if seen[0] == n:
                raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", failing)


def test_flips_oom_names_the_batch_size_keeps_records_and_resumes(tmp_path, tiny_lm, monkeypatch):
    from engine.method.flips import resume_flips_run, write_flips_run

    specs, prompts, gen, judge = _flips_inputs(tiny_lm)
    settings = {"model": "tiny", "prompts": "builtin:harmless", "limit": 6}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    _oom_on_prefill(tiny_lm, monkeypatch, 3)  # two prompt passes a batch (base, clamped): the second batch fails
    with pytest.raises(OutOfMemory) as info:
        write_flips_run(tiny_lm, specs, prompts, gen, judge, tmp_path / "a", settings)
    msg = str(info.value)
    assert "batch size 2 → try batch size 1" in msg and "the 2 prompts finished so far are saved" in msg
    assert "\n" not in msg and "--" not in msg
    assert isinstance(info.value, LabError) and isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert [r["id"] for r in read_jsonl(tmp_path / "a" / "flips.jsonl")] == [0, 1]
    monkeypatch.undo()
    resumed = resume_flips_run(tmp_path / "a", tiny_lm)
    whole = write_flips_run(tiny_lm, specs, prompts, gen, judge, tmp_path / "b", settings)
    assert resumed == whole and not resumed["cancelled"]
    assert read_jsonl(tmp_path / "a" / "flips.jsonl") == read_jsonl(tmp_path / "b" / "flips.jsonl")


def test_recovery_oom_keeps_finished_records_and_resumes(tmp_path, tiny_lm, monkeypatch):
    import engine.recovery.driver as driver
    from engine.method.flips import write_flips_run
    from engine.recovery.config import RecoveryConfig

    specs, prompts, gen, judge = _flips_inputs(tiny_lm)
    run = tmp_path / "run"
    run.mkdir()
    write_flips_run(tiny_lm, specs, prompts[:4], gen, judge, run, {"model": "tiny", "prompts": "builtin:harmless"})
    rows = read_jsonl(run / "flips.jsonl")  # the tiny model never refuses: mark every flip valid
    (run / "flips.jsonl").write_text("".join(json.dumps({**r, "valid": True}) + "\n" for r in rows))
    cfg = RecoveryConfig(steps=2, max_new_tokens=3, answer_tokens=6, batch_size=2)

    build, calls = driver.build_problem, [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)
        return build(*args, **kwargs)

    monkeypatch.setattr(driver, "build_problem", failing)
    with pytest.raises(OutOfMemory, match=r"during recovery at batch size 2 → try batch size 1; the 2 prompts finished"):
        driver.run_recovery(run, cfg, lm=tiny_lm, name="r")
    rec = run / "recoveries" / "r"
    assert [r["id"] for r in read_jsonl(rec / "recovery.jsonl")] == [0, 1]
    assert sorted(p.name for p in (rec / "deltas").iterdir()) == ["0.safetensors", "1.safetensors"]
    monkeypatch.undo()
    done = driver.run_recovery(run, cfg, lm=tiny_lm, name="r", resume=True)
    assert not done["cancelled"] and [r["id"] for r in read_jsonl(rec / "recovery.jsonl")] == [0, 1, 2, 3]


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError(CUDA_OOM),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
    RuntimeError("CUDA error: out of memory"),
    MemoryError(),
])
def test_out_of_memory_errors_are_recognised(exc):
    assert is_out_of_memory(exc)
    with pytest.raises(OutOfMemory, match="at batch size 8 → try batch size 4; no prompts had finished yet"):
        with oom_guard("flips generation", 8, lambda: 0):
            raise exc


def test_other_errors_pass_through_unchanged():
    err = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not is_out_of_memory(err) and not is_out_of_memory(ValueError("out of range"))
    with pytest.raises(RuntimeError) as info, oom_guard("recovery", 8, lambda: 0):
        raise err
    assert info.value is err


def test_batch_size_one_suggests_something_else():
    msg = str(OutOfMemory("recovery", 1, 3, "prompts"))
    assert "batch size is already 1" in msg and "try batch size" not in msg and "the 3 prompts finished" in msg


def test_a_dashboard_job_shows_the_same_one_message():
    from engine.services.jobs import _describe, start_job

    err = OutOfMemory("recovery", 8, 5, "prompts")

    def work(job):  # noqa: ARG001
        raise err

    job = start_job("recovery", work)
    assert job.wait(30)
    assert job.status == "failed" and job.error == str(err) == _describe(err)
    assert "batch size" in _describe(torch.cuda.OutOfMemoryError(CUDA_OOM))  # raised outside a driver's guard


def test_memory_status_without_cuda_is_none_and_jobs_show_no_gpu_line():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by tests/test_gpu.py")
    from engine.services.jobs import Job

    assert memory_status() is None and memory_status("cpu") is None
    job = Job(kind="flips")
    assert job.summary()["gpu_memory"] is None and job.memory_line == ""


def test_info_reports_gpu_memory_field(monkeypatch):
    """``info``'s gpu field lists each CUDA device's memory: none here without CUDA, every device with it."""
    from engine.cli import info

    monkeypatch.setattr("engine.lm.hub.hub_reachable", lambda *a, **k: False)
    memory = info.cmd_info(None)["gpu"]["memory"]
    assert len(memory) == torch.cuda.device_count()
    assert all(m["total_gib"] > 0 and 0 <= m["allocated_gib"] <= m["reserved_gib"] + 1e-9 for m in memory)
