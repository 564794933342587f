"""Invariants of the defence h_def = D(clamp(E(h))) + (h − D(E(h)))."""

from __future__ import annotations

import pytest
import torch

from engine.errors import LabError
from engine.method.clamp import ClampSpec, clamped, defend


def _tokens(lm, text="Tell me about rivers."):
    return torch.tensor([lm.encode(lm.chat_prompt(text))])


def test_identity_clamp_reproduces_logits(tiny_lm, tiny_jumprelu):
    """Splicing the SAE in with its error term, and clamping features to their own values, changes nothing."""
    toks = _tokens(tiny_lm)
    with torch.no_grad():
        base = tiny_lm.model(toks)
        spec = ClampSpec(tiny_jumprelu, list(range(10)), "multiply", [1.0])
        with clamped(tiny_lm, [spec]):
            spliced = tiny_lm.model(toks)
    torch.testing.assert_close(spliced, base, atol=1e-4, rtol=0)


def test_set_to_own_value_is_noop(tiny_lm, tiny_jumprelu):
    h = torch.randn(1, 1, tiny_lm.d_model) * 3
    z = tiny_jumprelu.encode(h)
    active = int(z[0, 0].argmax())
    spec = ClampSpec(tiny_jumprelu, [active], "set", [float(z[0, 0, active])])
    torch.testing.assert_close(defend(h, spec), h, atol=1e-5, rtol=0)


def test_clamp_changes_logits(tiny_lm, tiny_jumprelu):
    toks = _tokens(tiny_lm)
    with torch.no_grad():
        base = tiny_lm.model(toks)
        with clamped(tiny_lm, [ClampSpec(tiny_jumprelu, [0, 1, 2], "set", [25.0])]):
            out = tiny_lm.model(toks)
    assert (out - base).abs().max() > 1e-2


def test_only_targeted_features_change(tiny_lm, orthonormal_sae):
    h = torch.randn(2, 5, tiny_lm.d_model)
    S = [1, 4, 7]
    spec = ClampSpec(orthonormal_sae, S, "set", [6.0])
    z0 = orthonormal_sae.encode(h)
    z1 = orthonormal_sae.encode(defend(h, spec))
    others = [j for j in range(orthonormal_sae.d_sae) if j not in S]
    torch.testing.assert_close(z1[..., others], z0[..., others], atol=1e-5, rtol=0)
    assert (z1[..., S] - z0[..., S]).abs().max() > 1.0


@pytest.mark.parametrize("mode,values,expected", [("zero", [], 0.0), ("multiply", [2.0], None), ("set", [3.5], None)])
def test_clamp_modes(orthonormal_sae, mode, values, expected):
    from engine.method.clamp import clamp_latents

    z = torch.rand(3, 16) + 0.5
    spec = ClampSpec(orthonormal_sae, [2, 5], mode, values)
    out = clamp_latents(z, spec)
    if mode == "zero":
        assert torch.all(out[:, [2, 5]] == 0)
    elif mode == "multiply":
        torch.testing.assert_close(out[:, [2, 5]], 2 * z[:, [2, 5]])
    else:
        assert torch.all(out[:, [2, 5]] == 3.5)
    torch.testing.assert_close(out[:, [0, 1, 3]], z[:, [0, 1, 3]])


def test_no_hook_remains_after_exit_or_exception(tiny_lm, tiny_jumprelu):
    spec = ClampSpec(tiny_jumprelu, [0], "set", [10.0])

    def n_hooks():
        return sum(len(hp.fwd_hooks) for hp in tiny_lm.model.hook_dict.values())

    with clamped(tiny_lm, [spec]):
        assert n_hooks() == 1
    assert n_hooks() == 0
    with pytest.raises(RuntimeError):
        with clamped(tiny_lm, [spec]):
            raise RuntimeError("boom")
    assert n_hooks() == 0


def test_outer_hooks_survive_a_nested_clamped(tiny_lm, tiny_jumprelu):
    """clamped() removes exactly the hooks it added: an outer clamped() and a user's own model.hooks() keep theirs."""
    spec = ClampSpec(tiny_jumprelu, [0], "set", [10.0])
    seen: list[str] = []

    def user_hook(act, hook):
        seen.append(hook.name)

    def n_hooks():
        return sum(len(hp.fwd_hooks) for hp in tiny_lm.model.hook_dict.values())

    tokens = torch.tensor([[1, 70, 71, 72]])
    with tiny_lm.model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", user_hook)]):
        with clamped(tiny_lm, [spec]):
            with clamped(tiny_lm, [spec]):
                assert n_hooks() == 3
            assert n_hooks() == 2  # the outer clamp and the user's hook are still attached
            with torch.no_grad():
                tiny_lm.model(tokens)
        assert n_hooks() == 1 and seen == ["blocks.0.hook_resid_post"]
    assert n_hooks() == 0


def test_several_saes_at_once(tiny_lm, tiny_jumprelu):
    from engine.lm.saes import LoadedSAE
    from engine.lm.tiny import tiny_sae

    second = LoadedSAE(tiny_sae(tiny_lm.d_model, hook_name="blocks.2.hook_resid_post", seed=5), "tiny", "blocks.2.hook_resid_post")
    specs = [ClampSpec(tiny_jumprelu, [0], "set", [20.0]), ClampSpec(second, [3], "set", [20.0])]
    toks = _tokens(tiny_lm)
    with torch.no_grad():
        with clamped(tiny_lm, specs[:1]):
            one = tiny_lm.model(toks)
        with clamped(tiny_lm, specs):
            two = tiny_lm.model(toks)
    assert (one - two).abs().max() > 1e-3


def test_clamp_is_applied_on_generated_tokens(tiny_lm, tiny_jumprelu, monkeypatch):
    import engine.method.clamp as clamp_mod
    from engine.method.generation import GenerationConfig, generate

    widths: list[int] = []
    real = clamp_mod.defend

    def spy(h, spec):
        widths.append(h.shape[1])
        return real(h, spec)

    monkeypatch.setattr(clamp_mod, "defend", spy)
    spec = ClampSpec(tiny_jumprelu, [0, 1], "set", [30.0])
    out = next(generate(tiny_lm, ["hello"], GenerationConfig(max_new_tokens=6), specs=[spec]))
    # one pass over the prompt, then one single-position pass per further generated token
    assert widths[0] > 1
    assert widths[1:] == [1] * (len(widths) - 1)
    assert len(widths) >= min(6, len(out.token_ids))


def test_gradient_through_clamp_matches_finite_differences(tiny_lm, tiny_jumprelu):
    """∂loss/∂δ for δ upstream of the clamp (error term included) equals central finite differences."""
    import copy

    lm64 = copy.copy(tiny_lm)
    lm64.model = copy.deepcopy(tiny_lm.model).to(torch.float64)
    sae64 = copy.deepcopy(tiny_jumprelu)
    sae64.sae = copy.deepcopy(tiny_jumprelu.sae).to(torch.float64)
    spec = ClampSpec(sae64, [0, 1, 2], "set", [4.0])
    toks = _tokens(tiny_lm, "gradients")
    gen = torch.Generator().manual_seed(0)
    delta = (0.1 * torch.randn(1, toks.shape[1], tiny_lm.d_model, generator=gen, dtype=torch.float64)).requires_grad_(True)

    def loss_of(d):
        def add(act, hook):
            return act + d

        with clamped(lm64, [spec], [("blocks.0.hook_resid_post", add)]):
            logits = lm64.model(toks)
        return logits.log_softmax(-1)[0, -1, 65]

    loss = loss_of(delta)
    (grad,) = torch.autograd.grad(loss, delta)
    v = torch.randn(delta.shape, generator=gen, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        fd = (loss_of(delta + eps * v) - loss_of(delta - eps * v)) / (2 * eps)
    analytic = (grad * v).sum()
    assert abs(float(fd - analytic)) <= 1e-6 + 1e-4 * abs(float(fd))
    assert grad.abs().sum() > 0

    # The same loss with the error term detached (what sae_lens' use_error_term does) has the wrong gradient:
    # this is why the clamp hook is ours.
    from engine.method.clamp import clamp_latents

    def detached(h, hook):
        z = sae64.encode(h)
        with torch.no_grad():
            err = h - sae64.decode(z)
        return sae64.decode(clamp_latents(z, spec)) + err

    def add(act, hook):
        return act + delta

    with lm64.lock:
        try:
            lm64.model.add_hook("blocks.0.hook_resid_post", add)
            lm64.model.add_hook(spec.hook_name, detached)
            wrong = lm64.model(toks).log_softmax(-1)[0, -1, 65]
        finally:
            lm64.model.reset_hooks()
    (wrong_grad,) = torch.autograd.grad(wrong, delta)
    assert abs(float((wrong_grad * v).sum() - fd)) > 1e-3 * abs(float(fd)) + 1e-6


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"features": [999], "mode": "set", "values": [1.0]}, "out of range"),
        ({"features": [-1], "mode": "set", "values": [1.0]}, "out of range"),
        ({"features": [0], "mode": "set", "values": [float("nan")]}, "finite"),
        ({"features": [0], "mode": "set", "values": [float("inf")]}, "finite"),
        ({"features": [0], "mode": "clip", "values": [1.0]}, "unknown clamp mode"),
        ({"features": [], "mode": "set", "values": [1.0]}, "at least one feature"),
        ({"features": [0], "mode": "set", "values": []}, "needs a value"),
        ({"features": [0, 1], "mode": "set", "values": [1.0, 2.0, 3.0]}, "3 values"),
    ],
)
def test_bad_clamp_specs(tiny_jumprelu, kwargs, msg):
    with pytest.raises(LabError, match=msg):
        ClampSpec(tiny_jumprelu, **kwargs)
