"""The Ray executor on a local cluster (2 CPUs, no GPU, CPU actors): same records as the local executor, a killed
worker's shard retried, sweeps sharded the same way, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.errors import LabError
from engine.scale.config import ExecutorConfig
from engine.store.files import read_jsonl
from engine.store.records import get_record

ray = pytest.importorskip("ray")

FLIPS = ["flips", "--prompts", "builtin:harmless", "--model", "tiny", "--sae", "tiny", "--features", "0,1,2", "--value", "8"]
RECOVER = ["--steps", "6", "--max-new-tokens", "4", "--answer-tokens", "8", "--batch-size", "1"]
RAY = ["--executor", "ray", "--workers", "2"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; shut down (with every worker process) at the end."""
    from engine.scale.pool import connect

    assert connect(ExecutorConfig("ray", workers=2))  # the local cluster a command starts for itself
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "run"
    assert main([*FLIPS, "--limit", "8", "--max-new-tokens", "8", "--out", str(out)]) == 0
    rows = read_jsonl(out / "flips.jsonl")
    (out / "flips.jsonl").write_text("".join(json.dumps({**r, "valid": True}) + "\n" for r in rows))  # gibberish never refuses
    return out


def _records(run: Path, name: str, file: str = "recovery.jsonl") -> list[dict]:
    return read_jsonl(get_record(run, name).path / file)


def test_local_cluster_workers_run_at_the_commands_own_priority(cluster):
    """Ray's default worker niceness is 15: beside another job the workers got half the CPU a local run gets."""
    niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
    assert niceness == os.nice(0)


def test_ray_recovery_writes_the_same_records_as_local(run, capsys):
    assert main(["recover", "--run", str(run), "--name", "local", *RECOVER]) == 0
    assert main(["recover", "--run", str(run), "--name", "ray", *RECOVER, *RAY]) == 0
    local, sharded = _records(run, "local"), _records(run, "ray")
    assert [r["id"] for r in sharded] == list(range(8))
    assert sharded == local  # identical content and order
    for i in range(8):
        assert (get_record(run, "ray").path / "deltas" / f"{i}.safetensors").read_bytes() == \
            (get_record(run, "local").path / "deltas" / f"{i}.safetensors").read_bytes()
    assert get_record(run, "ray").summary == get_record(run, "local").summary


def test_ray_flips_and_attribution_match_local(run, tmp_path, capsys):
    args = [*FLIPS, "--limit", "6", "--max-new-tokens", "8", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), *RAY]) == 0
    assert read_jsonl(tmp_path / "a" / "flips.jsonl") == read_jsonl(tmp_path / "b" / "flips.jsonl")
    work = tmp_path / "attr"
    shutil.copytree(run, work)
    assert main(["attribute", "--run", str(work), "--recovery", "local", "--top-k", "3"]) == 0
    assert main(["attribute", "--run", str(work), "--recovery", "ray", "--top-k", "3", *RAY]) == 0
    assert _records(work, "local", "attribution.jsonl") == _records(work, "ray", "attribution.jsonl")


def test_a_killed_worker_is_replaced_and_every_flip_is_recovered_once(run, tiny_lm):
    """SIGKILL one actor process (pid from the actor itself) mid-run: its shard is retried on a new worker."""
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery
    from engine.scale.pool import RayPool

    killed: list[int] = []

    def on_event(ev) -> None:  # the first streamed step: a shard is in flight on worker 0
        if not killed:
            pool = RayPool.live[-1]
            killed.append(pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    cfg = RecoveryConfig(steps=6, max_new_tokens=4, answer_tokens=8, batch_size=1)
    out = run_recovery(run, cfg, lm=tiny_lm, name="killed", exe=ExecutorConfig("ray", workers=2), on_event=on_event)
    assert killed, "no worker was killed"
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # the process really is gone
    ids = [r["id"] for r in _records(run, "killed")]
    assert ids == list(range(8)) and out["n_valid"] == 8 and not out["cancelled"]
    if (get_record(run, "local").path / "recovery.jsonl").is_file():
        assert _records(run, "killed") == _records(run, "local")


def test_ray_sweep_over_three_budgets_matches_local(run, capsys):
    sweep = ["sweep", "--run", str(run), "--budgets", "0,2,5", *RECOVER]
    assert main([*sweep, "--name", "sl"]) == 0
    assert main([*sweep, "--name", "sr", *RAY]) == 0
    a, b = get_record(run, "sl", "sweep"), get_record(run, "sr", "sweep")
    assert a.summary["points"] == b.summary["points"] and len(b.summary["points"]) == 3
    for budget in ("budget_0", "budget_2", "budget_5"):
        assert read_jsonl(a.path / budget / "recovery.jsonl") == read_jsonl(b.path / budget / "recovery.jsonl")


def test_bad_executor_input_is_one_clear_line(run, capsys):
    start = time.time()
    assert main(["recover", "--run", str(run), *RECOVER, "--executor", "ray", "--ray-address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "no Ray cluster answers at 127.0.0.1:9" in err and err.count("\n") == 1 and time.time() - start < 10
    assert main(["recover", "--run", str(run), *RECOVER, "--executor", "ray", "--workers", "0"]) == 2
    assert "at least 1, got 0" in capsys.readouterr().err
    assert main(["recover", "--run", str(run), *RECOVER, "--executor", "ray", "--ray-address", "nonsense"]) == 2
    assert "is not host:port" in capsys.readouterr().err
    with pytest.raises(LabError, match="choose local or ray"):
        ExecutorConfig("slurm").check()  # type: ignore[arg-type]


def test_ray_absent_names_the_install_command(monkeypatch):
    import builtins

    from engine.scale.pool import require_ray

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(LabError, match=r"pip install ray=="):
        require_ray()
