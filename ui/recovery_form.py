"""The recovery settings form: every field of ``RecoveryConfig``, checked by the engine before a job starts."""

from __future__ import annotations

import typing

import streamlit as st

from engine.errors import LabError
from engine.recovery.config import RecoveryConfig
from engine.recovery.optimize import check_projection_layers

_PERSIST = {"persist_state": "session"}
PROJECTIONS = {"encoder": "encoder", "none": "none (unconstrained)", "jacobian": "jacobian (cross-layer)"}
PROJECTION_TEXT = {
    "encoder": "**encoder**: δ ⟂ the encoder rows of the clamped features at δ's layer, so those cannot move. It protects "
               "only the clamps at δ's layer: a run that clamps later layers needs jacobian.",
    "none": "**none**: the unconstrained baseline; the clamped features may move (their drift is what it reports).",
    "jacobian": "**jacobian**: the encoder projection at δ's layer, plus the Jacobian rows of the clamps above δ removed "
                "from the recovery gradient, an unprojected drift penalty λ·‖Δz‖²/‖z_def‖² over those clamps, and a few "
                "drift-correcting steps after every step (the paper's cross-layer scheme).",
}


def clamp_layers(specs) -> list[int]:
    """The resid_post layers the run's clamps act at, lowest first."""
    from engine.recovery.problem import clamp_layer

    return sorted({clamp_layer(s) for s in specs})


def _choices(name: str) -> list[str]:
    """The allowed values of a ``RecoveryConfig`` field, read from its type (so the form follows the engine)."""
    return list(typing.get_args(typing.get_type_hints(RecoveryConfig)[name]))


def _jacobian_settings(d: RecoveryConfig, box, more) -> dict:
    """The cross-layer settings (shown with the jacobian projection only) in ``box``; the rarer ones in the popover
    ``more``."""
    c1, c2, c3, c4 = box.columns(4)
    out = {
        "drift_penalty": c1.number_input("Drift penalty λ", min_value=0.0, value=200.0, step=10.0, key="rec_drift_penalty", **_PERSIST,
                                         help="λ of λ·‖Δz‖²/‖z_def‖² over the clamps above δ (the paper: 200)"),
        "jacobian_basis": c2.selectbox("Jacobian basis", _choices("jacobian_basis"), key="rec_basis", **_PERSIST,
                                       help="probes: a fixed number of random probes + the drift probe (the paper). "
                                            "adaptive: add blocks of probes until a new block adds little. "
                                            "exact: every row of the Jacobian (slow: one backward pass per feature and position)."),
        "n_probes": c3.number_input("Probes", 1, 512, int(d.n_probes), key="rec_probes", **_PERSIST,
                                    help="Random probes per estimate of the Jacobian rows (per block, for adaptive). The paper: 8."),
        "correction_steps": c4.number_input("Correction steps", 0, 100, int(d.correction_steps), key="rec_corr_steps", **_PERSIST,
                                            help="Drift-correcting steps after every step (the paper: 5)."),
    }
    with more:
        out["max_probes"] = st.number_input("Most probes (adaptive)", 1, 4096, int(d.max_probes), key="rec_max_probes", **_PERSIST)
        out["probe_tol"] = st.number_input("Stop adding probes below this share (adaptive)", 0.001, 0.999, float(d.probe_tol), 0.01,
                                           format="%.3f", key="rec_probe_tol", **_PERSIST)
        out["probe_every"] = st.number_input("Re-estimate the rows every … steps", 1, 2000, int(d.probe_every), key="rec_probe_every", **_PERSIST)
        out["correction_lr"] = st.number_input("Correction learning rate", 0.0001, 10.0, float(d.correction_lr), 0.01, format="%.4f",
                                               key="rec_corr_lr", **_PERSIST)
        out["constraint_positions"] = st.selectbox(
            "Hold the later clamps' drift over", _choices("constraint_positions"), key="rec_constraint_positions", **_PERSIST,
            format_func={"all": "every position (prompt and answer; stricter)", "answer": "answer positions (the paper)"}.get,
            help="The positions the penalty, the Jacobian rows, the corrections and the keep-best threshold look at. "
                 "Drift is reported both ways either way.")
        out["later_encoder_prior"] = st.toggle(
            "Also keep δ ⟂ the later clamps' encoder rows", value=bool(d.later_encoder_prior), key="rec_later_encoder", **_PERSIST,
            help="Removes the direct path of δ to the later clamps exactly; the probes, penalty and corrections handle "
                 "what the blocks in between add (stronger than the paper's scheme).")
    return out


def settings_form(n_valid: int, specs, n_layers: int, run: str):
    """``(cfg, limit, delta_layer)`` for a run with clamp set ``specs``, or Nones with a message in the page when the
    engine refuses the settings (``RecoveryConfig``, ``resolve_delta_layer``) or the projection cannot hold the set."""
    from engine.recovery.driver import resolve_delta_layer

    d = RecoveryConfig()
    layers = clamp_layers(specs)
    lowest = layers[0]
    c1, c2, c3, c4 = st.columns(4)
    projection = c1.selectbox("Projection", list(PROJECTIONS), index=2 if len(layers) > 1 else 0, key="rec_projection", **_PERSIST,
                              format_func=PROJECTIONS.get, help=" ".join(PROJECTION_TEXT.values()))
    budget_kind = c2.selectbox("Budget norm", ["per_position", "matrix"], index=["per_position", "matrix"].index(d.budget_kind),
                               format_func=lambda k: {"per_position": "per position: every ‖δ_t‖ ≤ B", "matrix": "whole matrix: ‖δ‖_F ≤ B"}[k],
                               key="rec_budget_kind", **_PERSIST)
    relative = c3.toggle("B relative to the median residual norm", value=d.budget_relative, key="rec_relative", **_PERSIST,
                         help="On: B is a fraction of the median ‖h‖ at δ's layer (position 0 excluded). Off: an absolute norm.")
    budget = c4.number_input("Budget B", min_value=0.0001, value=float(d.budget), step=0.05, format="%.4f", key="rec_budget", **_PERSIST)
    c1, c2, c3, c4 = st.columns(4)
    steps = c1.number_input("Steps", 1, 2000, int(d.steps), key="rec_steps", **_PERSIST)
    lr = c2.number_input("Learning rate", min_value=0.0001, value=float(d.lr), step=0.01, format="%.4f", key="rec_lr", **_PERSIST)
    where = c3.selectbox("δ acts on", ["prompt+gen", "prompt"], index=["prompt+gen", "prompt"].index(d.where), key="rec_where", **_PERSIST,
                         help="prompt: one row per prompt position; prompt+gen: plus one shared row at every answer position")
    limit = c4.number_input("Valid flips to recover", 1, max(1, n_valid), max(1, n_valid), key="rec_limit")
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    delta_layer = c1.number_input(f"δ layer (0–{lowest})", 0, n_layers - 1, lowest, key=f"rec_delta_layer:{run}",
                                  help=f"The layer whose resid_post carries δ: at or below the lowest clamped layer ({lowest}). "
                                       f"Default: {lowest}, where an SAE is, so attribution can split δ.")
    c2.caption(f"This run clamps layer{'s' if len(layers) > 1 else ''} **{', '.join(map(str, layers))}**. " + PROJECTION_TEXT[projection])
    box = st.container()
    p1, p2, _ = st.columns([1, 1.4, 3])
    cross = _jacobian_settings(d, box, p2.popover("More cross-layer settings")) if projection == "jacobian" else {}
    with p1.popover("More settings"):
        method = st.selectbox("Method", ["delta", "soft-suffix"], key="rec_method", **_PERSIST)
        boundary = st.number_input("Boundary steps (reward a non-refusal first token first)", 0, 2000, int(d.boundary_steps), key="rec_boundary", **_PERSIST)
        answer_tokens = st.number_input("Answer tokens teacher-forced", 1, 512, int(d.answer_tokens), key="rec_answer_tokens", **_PERSIST)
        max_new = st.number_input("Recovered answer length (tokens)", 1, 512, int(d.max_new_tokens), key="rec_max_new", **_PERSIST)
        batch = st.number_input("Batch size", 1, 64, int(d.batch_size), key="rec_batch", **_PERSIST)
        seed = st.number_input("Seed", 0, 2**31 - 1, int(d.seed), key="rec_seed", **_PERSIST)
    try:
        cfg = RecoveryConfig(projection=projection, method=method, where=where, budget=float(budget), budget_kind=budget_kind,
                             budget_relative=bool(relative), steps=int(steps), boundary_steps=int(boundary), lr=float(lr),
                             answer_tokens=int(answer_tokens), max_new_tokens=int(max_new), batch_size=int(batch), seed=int(seed),
                             delta_layer=int(delta_layer), **cross)
    except LabError as exc:
        st.error(f"These settings cannot run: {exc}")
        return None, None, None
    try:
        layer = resolve_delta_layer(cfg, specs, n_layers)
    except LabError:
        st.error(f"δ layer {int(delta_layer)} is not allowed here: δ must sit at or below every clamped layer, so pick a layer "
                 f"from 0 to {lowest} (the lowest clamp of this run).")
        return None, None, None
    if cfg.method == "delta":
        try:
            check_projection_layers(cfg.projection, specs, layer)
        except LabError as exc:
            st.error(f"This projection cannot hold the clamp set: {exc}.")
            return None, None, None
    return cfg, int(limit), layer
