"""SAE sources: Gemma Scope ``params.npz`` folders, registry SAEs from a warm Hugging Face cache offline, and every
bad input (inconsistent shapes, wrong width, missing hook, pickled arrays, files not cached). No hub, tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.errors import HubUnreachableError, LabError
from engine.lm import sae_registry
from engine.lm.gemma_scope import SIDECAR
from engine.lm.sae_sources import load_sae
from engine.method.clamp import ClampSpec, clamped

GPT2_RELEASE, GPT2_ID = "gpt2-small-res-jb", "blocks.0.hook_resid_pre"
GEMMA = "gemma-scope-2b-pt-res-canonical/layer_12/width_65k/canonical"


def write_npz(folder, d_in: int, d_sae: int = 24, seed: int = 0, **override):
    """A random Gemma-Scope-format params.npz (JumpReLU arrays) in ``folder``; ``override`` replaces arrays."""
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    arrays = {"W_enc": w_dec.T.copy(), "W_dec": w_dec, "b_enc": (0.05 * rng.standard_normal(d_sae)).astype(np.float32),
              "b_dec": (0.1 * rng.standard_normal(d_in)).astype(np.float32),
              "threshold": rng.uniform(0.0, 0.3, d_sae).astype(np.float32)}
    arrays.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **arrays)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable (HF_HUB_OFFLINE=1, the reachability answer not cached from an earlier test)."""
    from engine.lm.hub import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def snapshot(cache, repo_id: str, commit: str = "0" * 40):
    """The snapshot folder of ``repo_id`` at ``commit`` in the cache layout huggingface_hub reads (refs/main → commit)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


# --- Gemma Scope params.npz ------------------------------------------------------------------------------------------


def test_npz_folder_loads_encodes_like_jumprelu_and_the_splice_reproduces_logits(tiny_lm, tmp_path):
    folder = write_npz(tmp_path / "layer_1" / "width_16k" / "average_l0_50", tiny_lm.d_model)
    loaded = load_sae(str(folder), tiny_lm)  # hook inferred from layer_1: a residual SAE
    assert loaded.hook_name == "blocks.1.hook_resid_post"
    assert (loaded.d_in, loaded.d_sae, loaded.architecture) == (tiny_lm.d_model, 24, "jumprelu")
    with np.load(folder / "params.npz") as p:
        w_enc, b_enc, thr = (torch.from_numpy(p[k]) for k in ("W_enc", "b_enc", "threshold"))
    h = torch.randn(5, tiny_lm.d_model, generator=torch.Generator().manual_seed(0))
    pre = h @ w_enc + b_enc  # Gemma Scope: b_dec is not subtracted from the input
    z = loaded.encode(h)
    assert torch.allclose(z, (pre > thr) * pre, atol=1e-6)
    assert 0 < int((z > 0).sum()) < z.numel()  # some features on, some off: the threshold acted
    tokens = torch.tensor([[1, 70, 71, 72, 73, 74]])
    with torch.no_grad():
        plain = tiny_lm.model(tokens)
        with clamped(tiny_lm, [ClampSpec(loaded, [0, 1], "multiply", [1.0])]):  # D(E(h)) + (h − D(E(h))) = h
            spliced = tiny_lm.model(tokens)
    assert torch.allclose(plain, spliced, atol=1e-4)


def test_npz_spec_with_explicit_hook_and_sidecar_model(tiny_lm, tmp_path):
    folder = write_npz(tmp_path / "my_sae", tiny_lm.d_model)
    loaded = load_sae(f"npz:{folder}@blocks.2.hook_resid_post", tiny_lm)
    assert loaded.hook_name == "blocks.2.hook_resid_post"
    assert load_sae(loaded.source, tiny_lm).hook_name == "blocks.2.hook_resid_post"  # the recorded source reloads
    (folder / SIDECAR).write_text('{"hook_name": "blocks.3.hook_resid_post", "model_name": "tiny"}')
    assert load_sae(str(folder / "params.npz"), tiny_lm).hook_name == "blocks.3.hook_resid_post"


def test_gemma_scope_path_names_the_model_and_a_wrong_model_is_refused(tiny_lm, tmp_path):
    folder = write_npz(tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_50", tiny_lm.d_model)
    with pytest.raises(LabError, match="trained on gemma-2-2b, not on the loaded model tiny"):
        load_sae(str(folder), tiny_lm)


@pytest.mark.parametrize("override, message", [
    ({"b_enc": np.zeros(23, np.float32)}, "inconsistent shapes.*b_enc must be \\[24\\]"),
    ({"W_dec": np.zeros((24, 31), np.float32)}, "inconsistent shapes.*W_dec must be \\[24, 32\\]"),
    ({"threshold": np.full(24, -0.1, np.float32)}, "threshold must be ≥ 0"),
    ({"b_dec": np.full(32, np.nan, np.float32)}, "b_dec holds NaN"),
    ({"threshold": np.array(["a"] * 24, dtype=object)}, "pickled objects, which are refused"),
])
def test_bad_npz_is_a_clear_error(tiny_lm, tmp_path, override, message):
    folder = write_npz(tmp_path / "layer_1", tiny_lm.d_model, **override)
    with pytest.raises(LabError, match=message):
        load_sae(str(folder), tiny_lm)


def test_npz_missing_array_wrong_width_missing_hook_and_no_hook(tiny_lm, tmp_path):
    folder = write_npz(tmp_path / "layer_1", tiny_lm.d_model)
    with np.load(folder / "params.npz") as p:
        np.savez(tmp_path / "no_thr.npz", **{k: p[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    with pytest.raises(LabError, match="lacks threshold"):
        load_sae(f"npz:{tmp_path / 'no_thr.npz'}@blocks.1.hook_resid_post", tiny_lm)
    wide = write_npz(tmp_path / "wide" / "layer_1", tiny_lm.d_model + 8)
    with pytest.raises(LabError, match=f"SAE width mismatch: the SAE expects d_in={tiny_lm.d_model + 8}"):
        load_sae(str(wide), tiny_lm)
    with pytest.raises(LabError, match="blocks.9.hook_resid_post.*does not have"):
        load_sae(f"npz:{folder}@blocks.9.hook_resid_post", tiny_lm)
    plain = write_npz(tmp_path / "plain", tiny_lm.d_model)
    with pytest.raises(LabError, match="cannot tell which hook"):
        load_sae(str(plain), tiny_lm)
    with pytest.raises(LabError, match="no params.npz"):
        load_sae(f"npz:{tmp_path / 'nowhere'}", tiny_lm)


# --- registry SAEs and the Hugging Face cache -------------------------------------------------------------------------


def test_registry_sae_not_cached_with_hub_unreachable_is_one_line_in_seconds(tiny_lm, hf_cache, offline, monkeypatch):
    """The model-name check is relaxed (a Gemma Scope SAE can only target gemma-2) so the cache lookup is reached.
    The timer starts after sae_lens is imported (process start-up, paid by every command, not by this check)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    monkeypatch.setattr(sae_registry, "same_model", lambda trained_on, model: True)
    get_pretrained_saes_directory()
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as err:
        load_sae(GEMMA, tiny_lm)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message
    assert "google/gemma-scope-2b-pt-res/layer_12/width_65k/average_l0_72/params.npz" in message


def test_registry_sae_loads_from_a_warm_cache_offline(tiny_lm, hf_cache, offline, monkeypatch):
    """A sae_lens-format release (gpt2-small-res-jb) whose cached files hold a tiny SAE: it loads with HF_HUB_OFFLINE=1
    and no network. The registry's model-name check is relaxed (the release targets gpt2-small); the SAE's own
    recorded model ("tiny"), its hook and its width are still checked by check_fits."""
    from engine.lm.tiny import tiny_sae

    monkeypatch.setattr(sae_registry, "same_model", lambda trained_on, model: True)
    ref = sae_registry.resolve(f"{GPT2_RELEASE}/{GPT2_ID}")
    assert sae_registry.missing_downloads(ref) == [f"{ref.repo_id}/{ref.folder}/cfg.json",
                                                   f"{ref.repo_id}/{ref.folder}/sae_weights.safetensors"]
    sae = tiny_sae(tiny_lm.d_model, d_sae=48, hook_name=GPT2_ID, seed=5)
    assert f"{GPT2_RELEASE}/{GPT2_ID}" not in [r["spec"] for r in sae_registry.cached_registry_saes()]
    sae.save_model(str(snapshot(hf_cache, ref.repo_id) / ref.folder))
    assert sae_registry.missing_downloads(ref) == []
    # `info` lists it as cached (and only the SAEs whose files are all there)
    assert [r["spec"] for r in sae_registry.cached_registry_saes()] == [f"{GPT2_RELEASE}/{GPT2_ID}"]

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was called")

    monkeypatch.setattr("huggingface_hub.file_download.get_hf_file_metadata", no_network)
    loaded = load_sae(f"{GPT2_RELEASE}/{GPT2_ID}", tiny_lm)
    assert loaded.source == f"registry:{GPT2_RELEASE}/{GPT2_ID}"
    assert (loaded.hook_name, loaded.d_sae) == (GPT2_ID, 48)
    assert torch.equal(loaded.W_dec.cpu(), sae.W_dec.detach())


def test_gemma_scope_registry_converter_reads_the_cached_npz(hf_cache, offline):
    """The gemma_2 (Gemma Scope) format from the cache: the lab's converter reads params.npz with no network."""
    ref = sae_registry.resolve(GEMMA)
    write_npz(snapshot(hf_cache, ref.repo_id) / ref.folder, d_in=2304, d_sae=8)
    assert sae_registry.missing_downloads(ref) == []
    cfg, state, _ = sae_registry._cached_converter("gemma_2")(ref.repo_id, ref.folder, "cpu")
    assert (cfg["hook_name"], cfg["model_name"], cfg["architecture"]) == ("blocks.12.hook_resid_post", "gemma-2-2b", "jumprelu")
    assert cfg["apply_b_dec_to_input"] is False
    assert state["W_enc"].shape == (2304, 8) and state["threshold"].shape == (8,)


# --- only the SAEs a clamp set needs ----------------------------------------------------------------------------------


def test_a_clamp_set_loads_each_needed_sae_once_and_no_other(tiny_lm, monkeypatch):
    """20 (layer, feature) pairs over two of the tiny model's four layers, one row per pair: exactly the two SAEs
    are loaded, once each; a shared cache reuses them."""
    from engine.method import clamp_sets

    loads: list[str] = []
    real = clamp_sets.load_sae

    def counting(spec, lm):
        loads.append(spec)
        return real(spec, lm)

    monkeypatch.setattr(clamp_sets, "load_sae", counting)
    pairs = [(1, f) for f in range(12)] + [(3, f) for f in range(8)]
    rows = [{"sae": f"tiny:blocks.{layer}.hook_resid_post", "features": [f], "mode": "multiply", "values": [3.0]}
            for layer, f in pairs]
    cache: dict = {}
    specs = clamp_sets.load_clamp_set(tiny_lm, rows, cache)
    assert sum(len(s.features) for s in specs) == 20
    assert sorted(loads) == ["tiny:blocks.1.hook_resid_post", "tiny:blocks.3.hook_resid_post"]
    clamp_sets.load_clamp_set(tiny_lm, rows[:3], cache)
    assert len(loads) == 2
