"""Real architectures from Hugging Face files, offline: tiny random gpt2, gemma-2 (softcapped), llama and qwen2
checkpoints built at test time, loaded from a local folder and from a warm HF cache with HF_HUB_OFFLINE=1 and the
network blocked; dtype choices and the bfloat16 path; the bad inputs (docs/MODELS.md)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from engine.errors import HubUnreachableError, LabError
from engine.method.clamp import ClampSpec, clamped
from tests.hf_checkpoints import ARCHS, GEMMA_SOFTCAP, OFFICIAL, build_checkpoint, point_hf_cache, put_in_cache

LOGIT_ATOL = 1e-4
"""TransformerLens vs Hugging Face: float32, 2 layers; measured differences are about 1e-5 (docs/MODELS.md)."""
TEXT = "Tell me about the rivers of the world, all of them, and why they flow."  # > the gemma-2 sliding window (16)


def _no_network(*args, **kwargs):
    raise OSError("network blocked by the test")


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory) -> dict:
    """Tiny checkpoints as folders and as snapshots of their official repo ids in one HF cache."""
    root = tmp_path_factory.mktemp("hf")
    cache = root / "cache"
    folders = {k: build_checkpoint(k, root / "folders" / k) for k in ARCHS}
    for kind, folder in folders.items():
        put_in_cache(folder, cache, OFFICIAL[kind])
    return {"root": root, "cache": cache, "folders": folders}


@pytest.fixture(scope="module")
def offline_lms(hf_files) -> dict:
    """Each checkpoint loaded by its official name from the cache: HF_HUB_OFFLINE=1, sockets refused, no hub probe."""
    from engine.lm import loading

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        point_hf_cache(mp, hf_files["cache"])
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(loading, "hub_reachable", lambda: pytest.fail("a warm cache must not probe the hub"))
        for kind in ARCHS:
            out[kind] = loading.load_model(OFFICIAL[kind], "cpu")
    return out


@pytest.fixture
def offline(monkeypatch, hf_files):
    point_hf_cache(monkeypatch, hf_files["cache"])
    return hf_files


def _hf_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("kind", ARCHS)
def test_warm_cache_offline_matches_hugging_face(kind, offline_lms, hf_files):
    lm = offline_lms[kind]
    assert lm.name == OFFICIAL[kind] and lm.d_model == 64 and lm.n_layers == 2  # the cached config, not TL's official one
    ids = lm.encode(lm.chat_prompt(TEXT))
    with torch.no_grad():
        ours = lm.model(torch.tensor([ids]))[0]
    ref = _hf_logits(hf_files["folders"][kind], ids)
    torch.testing.assert_close(ours.log_softmax(-1), ref.log_softmax(-1), atol=LOGIT_ATOL, rtol=0)
    if kind == "gemma2":  # softcapped logits are not shift-invariant: the raw logits must match too (no centring)
        torch.testing.assert_close(ours, ref, atol=LOGIT_ATOL, rtol=0)
        assert ref.abs().max() > 0.8 * GEMMA_SOFTCAP[1]  # the cap really acts on these logits
        assert lm.model.cfg.output_logits_soft_cap == GEMMA_SOFTCAP[1]


def _sae(lm, hook="blocks.0.hook_resid_post"):
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    return LoadedSAE(tiny_sae(lm.d_model, d_sae=96, hook_name=hook, seed=3, model_name=lm.name), "tiny:" + hook, hook)


@pytest.mark.parametrize("kind", ARCHS)
def test_error_term_splice_reproduces_logits(kind, offline_lms):
    lm = offline_lms[kind]
    toks = torch.tensor([lm.encode(lm.chat_prompt(TEXT))])
    spec = ClampSpec(_sae(lm), list(range(12)), "multiply", [1.0])
    with torch.no_grad():
        base = lm.model(toks)
        with clamped(lm, [spec]):
            spliced = lm.model(toks)
        with clamped(lm, [ClampSpec(spec.sae, [0, 1, 2], "set", [20.0])]):
            moved = lm.model(toks)
    torch.testing.assert_close(spliced, base, atol=1e-4, rtol=0)
    assert (moved - base).abs().max() > 1e-2  # the splice is live: a real clamp changes the logits


FLIPS = [{"id": 0, "prompt": "Tell me about rivers.", "base_text": "Rivers flow into the sea, mostly."},
         {"id": 1, "prompt": "Hi", "base_text": "Hello there, friend!"}]


@pytest.mark.parametrize("kind", ARCHS)
def test_recovery_forward_from_cached_layer_equals_full_forward(kind, offline_lms):
    from engine.recovery.objective import DeltaObjective
    from engine.recovery.problem import build_problem

    lm = offline_lms[kind]
    specs = [ClampSpec(_sae(lm), [0, 1, 2], "set", [6.0])]
    problem = build_problem(lm, specs, FLIPS, answer_tokens=12, delta_layer=0)
    cached = DeltaObjective(lm, specs, problem).defended_eval.logp  # layer 0 cached, upper blocks + unembed run here
    with clamped(lm, specs), torch.no_grad():
        logits = lm.model(problem.tokens, attention_mask=problem.attention_mask)
    mask = problem.target_mask
    full = torch.zeros_like(cached)
    full[mask] = logits.float().log_softmax(-1)[mask].gather(-1, problem.targets[mask][:, None])[:, 0]
    assert mask.sum() >= 20
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_local_folder_loads_without_the_hub(hf_files, offline_lms, monkeypatch):
    from engine.lm import loading

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(loading, "hub_reachable", lambda: pytest.fail("a folder must not probe the hub"))
    folder = hf_files["folders"]["gemma2"]
    lm = loading.load_model(str(folder), "cpu")
    assert lm.name == str(folder.resolve())
    toks = torch.tensor([lm.encode(lm.chat_prompt(TEXT))])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(toks), offline_lms["gemma2"].model(toks), atol=1e-6, rtol=0)


def test_unsupported_architecture_folder_is_one_clear_error(tmp_path):
    from engine.lm.loading import load_model

    folder = tmp_path / "mamba"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(LabError, match="MambaForCausalLM.*supported architectures: .*Gemma2ForCausalLM"):
        load_model(str(folder), "cpu")
    with pytest.raises(LabError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"), "cpu")


def test_missing_cached_file_offline_fails_fast_naming_it(offline, tmp_path, monkeypatch):
    from engine.lm.hub import hub_cache_dir
    from engine.lm.loading import load_model

    snap = put_in_cache(offline["folders"]["llama"], tmp_path / "cache2", "meta-llama/Llama-3.2-1B")
    (snap / "model.safetensors").unlink()
    point_hf_cache(monkeypatch, tmp_path / "cache2")
    assert hub_cache_dir() == tmp_path / "cache2"
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as err:
        load_model("meta-llama/Llama-3.2-1B", "cpu")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and "meta-llama/Llama-3.2-1B/model.safetensors is not in the Hugging Face cache" in msg
    assert "and HF_HUB_OFFLINE=1 is set" in msg
    # Not offline by setting, but no network: the probe answers False within seconds and the repo is named.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    from engine.lm.hub import hub_reachable

    hub_reachable.cache_clear()
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match="cannot load 'Qwen/Qwen2-0.5B': Qwen/Qwen2-0.5B is not in the Hugging Face "
                                                  r"cache .* and the hub \(huggingface.co\) is unreachable"):
        load_model("Qwen/Qwen2-0.5B", "cpu")
    assert time.monotonic() - start < 10
    hub_reachable.cache_clear()


def test_online_a_missing_snapshot_is_downloaded_then_loaded_from_files(offline, tmp_path, monkeypatch):
    """The download path stays for online users: only what is missing is fetched (configs, tokenizer, safetensors)."""
    import huggingface_hub

    from engine.lm import loading

    point_hf_cache(monkeypatch, tmp_path / "empty-cache")
    calls = []

    def download(repo_id, allow_patterns, cache_dir):  # stands in for the hub: lays the snapshot into the cache
        calls.append((repo_id, tuple(allow_patterns)))
        return str(put_in_cache(offline["folders"]["qwen2"], Path(cache_dir), repo_id))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    lm = loading.load_model("Qwen/Qwen2-0.5B", "cpu")
    assert lm.name == "Qwen/Qwen2-0.5B" and lm.d_model == 64
    assert calls == [("Qwen/Qwen2-0.5B", ("*.json", "*.safetensors", "tokenizer.model", "*.txt"))]
    loading.load_model("Qwen/Qwen2-0.5B", "cpu")  # now cached: no second download
    assert len(calls) == 1

    def refused(repo_id, allow_patterns, cache_dir):
        import httpx2 as httpx  # huggingface_hub's own HTTP client
        from huggingface_hub.errors import GatedRepoError

        response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/google/gemma-2-9b"))
        raise GatedRepoError("401 Client Error: access to model google/gemma-2-9b is restricted\nmore lines", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refused)
    with pytest.raises(HubUnreachableError, match=r"^cannot download 'google/gemma-2-9b': 401 Client Error: .*restricted "
                                                  r"\(gated models need HF_TOKEN and accepted terms\)$"):
        loading.load_model("gemma-2-9b", "cpu")


def test_dtype_choices_and_what_a_device_cannot_do(monkeypatch):
    from engine.lm import dtypes
    from engine.lm.loading import load_model

    with pytest.raises(LabError, match="unknown number format 'float8'; choose one of auto, float32, bfloat16, float16"):
        load_model("tiny", "cpu", "float8")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dtypes.resolve_dtype("auto", cpu, 9_000_000_000) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(LabError, match="this GPU cannot compute in bfloat16"):
        dtypes.check_dtype(torch.bfloat16, cuda)
    with pytest.raises(LabError, match="the meta device cannot compute in float16"):  # a device with no values at all
        dtypes.check_dtype(torch.float16, torch.device("meta"))
    monkeypatch.setattr(dtypes, "check_dtype", lambda dtype, device: None)  # the policy alone, as if on a GPU
    assert dtypes.resolve_dtype("auto", cuda, 2_000_000_000) == torch.bfloat16
    assert dtypes.resolve_dtype("auto", cuda, 135_000_000) == torch.float32
    assert dtypes.resolve_dtype("float16", cuda, 1) == torch.float16


def test_bfloat16_splice_and_one_recovery_step():
    from engine.lm.loading import load_model
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.objective import DeltaObjective
    from engine.recovery.optimize import optimize_delta
    from engine.recovery.problem import build_problem

    lm = load_model("tiny", "cpu", "bfloat16")
    assert lm.dtype == torch.bfloat16 and lm.model.W_E.dtype == torch.bfloat16
    sae = _sae(lm, "blocks.1.hook_resid_post")
    assert sae.W_dec.dtype == torch.float32  # the SAE stays float32 (docs/MODELS.md)
    toks = torch.tensor([lm.encode(lm.chat_prompt(TEXT))])
    with torch.no_grad():
        base = lm.model(toks)
        with clamped(lm, [ClampSpec(sae, list(range(12)), "multiply", [1.0])]):
            spliced = lm.model(toks)
    assert spliced.dtype == torch.bfloat16
    torch.testing.assert_close(spliced, base, atol=0, rtol=0)  # the difference is formed in fp32: exactly zero
    specs = [ClampSpec(sae, [0, 1, 2], "set", [6.0])]
    problem = build_problem(lm, specs, FLIPS, answer_tokens=8, delta_layer=1)
    objective = DeltaObjective(lm, specs, problem)
    assert objective.defended_eval.logp.dtype == torch.float32
    cfg = RecoveryConfig(steps=2, budget=5.0, answer_tokens=8)
    result = optimize_delta(objective, cfg, torch.full((2,), cfg.budget))
    assert torch.isfinite(result.rows).all() and result.rows.dtype == torch.float32
    assert result.rows.abs().sum() > 0  # δ moved


def test_a_run_records_its_resolved_dtype_and_reopens_with_it(tmp_path, capsys):
    from engine.cli.main import main
    from engine.method.flips import resume_flips_run
    from engine.store.context import open_run

    run = tmp_path / "run"
    assert main(["flips", "--model", "tiny", "--dtype", "bfloat16", "--device", "cpu", "--sae", "tiny", "--features", "0,1",
                 "--value", "5", "--prompts", "builtin:harmless", "--limit", "1", "--max-new-tokens", "3",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["dtype"] == "bfloat16"
    ctx = open_run(run)  # recover/sweep/attribute and the Ray workers reopen a run this way
    assert ctx.lm.dtype == torch.bfloat16
    assert open_run(run, dtype="float32").lm.dtype == torch.float32  # a given format wins (recover --dtype)
    resume_flips_run(run, ctx.lm)  # the dashboard's resume: same settings, dtype written by write_flips_run itself
    assert json.loads((run / "config.json").read_text())["dtype"] == "bfloat16"


def test_flips_and_recover_run_on_tiny_gemma2_from_the_offline_cache(offline, tmp_path, capsys, monkeypatch):
    from engine.cli.main import main

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    run = tmp_path / "run"
    assert main(["flips", "--model", OFFICIAL["gemma2"], "--device", "cpu", "--prompts", "builtin:harmless", "--limit", "2",
                 "--sae", "tiny:blocks.0.hook_resid_post", "--features", "0,1,2", "--value", "8", "--max-new-tokens", "6",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == OFFICIAL["gemma2"] and config["model_id"] == OFFICIAL["gemma2"]
    assert config["dtype"] == "float32"  # the resolved format, never "auto"
    rows = [json.loads(x) for x in (run / "flips.jsonl").read_text().splitlines()]
    for r in rows:  # random weights never refuse; mark them valid to exercise recovery
        r["valid"] = True
    (run / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["recover", "--run", str(run), "--steps", "3", "--max-new-tokens", "4"]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    rec = [json.loads(x) for x in (run / "recoveries" / out["name"] / "recovery.jsonl").read_text().splitlines()]
    assert len(rec) == 2 and all("recovered_text" in r for r in rec)


def test_info_lists_the_cached_checkpoints_offline(offline, capsys):
    from engine.cli.main import main

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert main(["info"]) == 0
    listed = json.loads(capsys.readouterr().out)["cached_models"]
    assert listed["cache"] == str(offline["cache"])
    rows = {r["name"]: r for r in listed["models"]}
    assert set(rows) == set(OFFICIAL.values())
    assert rows["google/gemma-2-2b-it"]["architecture"] == "Gemma2ForCausalLM" and rows["gpt2"]["complete"]
