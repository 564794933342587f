"""The recovery settings form: every field of ``RecoveryConfig``, each number typed as text and checked by the engine's rule
for its field (``ui.validate``) before a job can start."""

from __future__ import annotations

import dataclasses

import streamlit as st

from engine.errors import LabError
from engine.recovery.config import RecoveryConfig
from engine.recovery.optimize import check_projection_layers
from ui import validate

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
    return validate.field_choices(RecoveryConfig, name)


def _jacobian_settings(d: RecoveryConfig, box, more, form: validate.Form) -> dict:
    """The cross-layer settings (shown with the jacobian projection only) in ``box``; the rarer ones in the popover
    ``more``. Each number is checked by the engine's rule for its field; a refused one is None."""
    c1, c2, c3, c4 = box.columns(4)
    corrections = _choices("correction")
    out = {
        "drift_penalty": form.number(c1, "Drift penalty λ", "rec_drift_penalty", 200.0, kind=float, check=_rule("drift_penalty"),
                                     help="λ of λ·‖Δz‖²/‖z_def‖² over the clamps above δ (the paper: 200)"),
        "correction": c2.selectbox(
            "Drift correction", corrections, index=corrections.index(d.correction), key="rec_correction", **_PERSIST,
            format_func={"gauss-newton": "Gauss–Newton restoration", "adam": "Adam steps (the paper)"}.get,
            help="After every step, undo the later clamps' drift: Gauss–Newton moves δ by the smallest change that "
                 "cancels it to first order (holds layer-20 drift ≤ 0.05 on the default model); Adam descends the "
                 "drift for a few steps (the paper's scheme; leaves more drift)."),
        "correction_steps": form.number(c3, "Correction steps", "rec_corr_steps", d.correction_steps, check=_rule("correction_steps"),
                                        help="Drift corrections after every step (the paper: 5 Adam steps)."),
        "n_probes": form.number(c4, "Probes", "rec_probes", d.n_probes, check=_rule("n_probes"),
                                help="Random probes per estimate of the Jacobian rows (per block, for adaptive). The paper: 8."),
    }
    with more:
        out["jacobian_basis"] = st.selectbox("Jacobian basis", _choices("jacobian_basis"), key="rec_basis", **_PERSIST,
                                             help="probes: a fixed number of random probes + the drift probe (the paper). "
                                                  "adaptive: add blocks of probes until a new block adds little. "
                                                  "exact: every row of the Jacobian (slow: one backward pass per feature and position).")
        out["cg_iters"] = form.number(st, "Conjugate-gradient iterations (Gauss–Newton)", "rec_cg_iters", d.cg_iters,
                                      check=_rule("cg_iters"), says="Conjugate-gradient iterations", hidden=True)
        out["restore_below"] = form.number(st, "Restore while the held drift is above … × the threshold (Gauss–Newton)",
                                           "rec_restore_below", d.restore_below, kind=float, check=_rule("restore_below"),
                                           says="Restore-below share", hidden=True,
                                           help="Between 0 and 1; 0 runs every correction step whatever the drift.")
        out["gn_damping"] = form.number(st, "Damping μ, × the Rayleigh quotient (Gauss–Newton)", "rec_gn_damping", d.gn_damping,
                                        kind=float, check=_rule("gn_damping"), says="Gauss–Newton damping", hidden=True,
                                        help="Positive. Smaller is nearer plain Gauss–Newton (the default 0.001); larger "
                                             "takes shorter, safer restoration steps (0.1 lost AdvBench flips on the default model).")
        out["gn_damping_decay"] = form.number(st, "Damping decay per restoration (Gauss–Newton)", "rec_gn_decay", d.gn_damping_decay,
                                              kind=float, check=_rule("gn_damping_decay"), says="Gauss–Newton damping decay", hidden=True,
                                              help="Above 0, at most 1: each further restoration within a step multiplies μ "
                                                   "by this (Levenberg–Marquardt); 1 keeps it constant.")
        out["max_probes"] = form.number(st, "Most probes (adaptive)", "rec_max_probes", d.max_probes, check=_rule("max_probes"),
                                        says="Most probes", hidden=True)
        out["probe_tol"] = form.number(st, "Stop adding probes below this share (adaptive)", "rec_probe_tol", d.probe_tol, kind=float,
                                       check=_rule("probe_tol"), says="Probe tolerance", hidden=True,
                                       help="Between 0 and 1: the share of a new block's energy outside the basis.")
        out["probe_every"] = form.number(st, "Re-estimate the rows every … steps (Adam corrections; Gauss–Newton estimates them once)", "rec_probe_every", d.probe_every,
                                         check=_rule("probe_every"), says="Probe interval", hidden=True)
        out["correction_lr"] = form.number(st, "Correction learning rate", "rec_corr_lr", d.correction_lr, kind=float,
                                           check=_rule("correction_lr"), hidden=True)
        out["constraint_positions"] = st.selectbox(
            "Hold the later clamps' drift over", _choices("constraint_positions"),
            index=_choices("constraint_positions").index(d.constraint_positions), key="rec_constraint_positions", **_PERSIST,
            format_func={"all": "every position (prompt and answer; stricter)", "answer": "answer positions (the paper)"}.get,
            help="The positions the penalty, the Jacobian rows, the corrections and the keep-best threshold look at. "
                 "Drift is reported both ways either way.")
        out["later_encoder_prior"] = st.toggle(
            "Also keep δ ⟂ the later clamps' encoder rows", value=bool(d.later_encoder_prior), key="rec_later_encoder", **_PERSIST,
            help="Removes the direct path of δ to the later clamps exactly; the probes, penalty and corrections handle "
                 "what the blocks in between add (stronger than the paper's scheme).")
    return out


def _rule(name: str):
    return validate.recovery_check(name)


def settings_form(n_valid: int, specs, n_layers: int, run: str):
    """``(cfg, limit, delta_layer)`` for a run with clamp set ``specs``, or Nones with the reasons in the page when a
    field is refused (each number by the engine's rule for its field, shown under it), the engine refuses the
    settings together (``RecoveryConfig``, ``resolve_delta_layer``) or the projection cannot hold the set."""
    from engine.recovery.driver import resolve_delta_layer

    d = RecoveryConfig()
    form = validate.Form()
    layers = clamp_layers(specs)
    lowest = layers[0]
    lm = validate.loaded_model()
    c1, c2, c3, c4 = st.columns(4)
    projection = c1.selectbox("Projection", list(PROJECTIONS), index=2 if len(layers) > 1 else 0, key="rec_projection", **_PERSIST,
                              format_func=PROJECTIONS.get, help=" ".join(PROJECTION_TEXT.values()))
    budget_kind = c2.selectbox("Budget norm", ["per_position", "matrix"], index=["per_position", "matrix"].index(d.budget_kind),
                               format_func=lambda k: {"per_position": "per position: every ‖δ_t‖ ≤ B", "matrix": "whole matrix: ‖δ‖_F ≤ B"}[k],
                               key="rec_budget_kind", **_PERSIST)
    relative = c3.toggle("B relative to the median residual norm", value=d.budget_relative, key="rec_relative", **_PERSIST,
                         help="On: B is a fraction of the median ‖h‖ at δ's layer (position 0 excluded). Off: an absolute norm.")
    budget = form.number(c4, "Budget B", "rec_budget", d.budget, kind=float, check=_rule("budget"),
                         help="A positive number: a norm (absolute), or a fraction of the median residual norm (relative).")
    c1, c2, c3, c4 = st.columns(4)
    steps = form.number(c1, "Steps", "rec_steps", d.steps, check=_rule("steps"))
    lr = form.number(c2, "Learning rate", "rec_lr", d.lr, kind=float, check=_rule("lr"))
    where = c3.selectbox("δ acts on", ["prompt+gen", "prompt"], index=["prompt+gen", "prompt"].index(d.where), key="rec_where", **_PERSIST,
                         help="prompt: one row per prompt position; prompt+gen: plus one shared row at every answer position")
    # keyed by the count, so choosing another valid set starts the box at that set's size
    limit = form.number(c4, "Valid flips to recover", f"rec_limit:{n_valid}", max(1, n_valid), persist=False,
                        check=validate.between(1, max(1, n_valid), "Valid flips to recover",
                                               f"the chosen valid set has {n_valid} flip{'s' if n_valid != 1 else ''}"))
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    delta_layer = form.number(c1, f"δ layer (0–{lowest})", f"rec_delta_layer:{run}", lowest, persist=False, says="δ layer",
                              check=_rule("delta_layer"),
                              help=f"The layer whose resid_post carries δ: at or below the lowest clamped layer ({lowest}). "
                                   f"Default: {lowest}, where an SAE is, so attribution can split δ.")
    c2.caption(f"This run clamps layer{'s' if len(layers) > 1 else ''} **{', '.join(map(str, layers))}**. " + PROJECTION_TEXT[projection])
    if delta_layer is not None:
        try:
            resolve_delta_layer(dataclasses.replace(d, delta_layer=delta_layer), specs, n_layers)
        except LabError:
            form.refuse(f"rec_delta_layer:{run}", f"δ layer {delta_layer} is not allowed here: δ must sit at or below every clamped "
                        f"layer, so pick a layer from 0 to {lowest} (the lowest clamp of this run).", c1)
    box = st.container()
    p1, p2, p3 = st.columns([1, 1.4, 3])
    cross = _jacobian_settings(d, box, p2.popover("More cross-layer settings"), form) if projection == "jacobian" else {}
    with p1.popover("More settings"):
        method = st.selectbox("Method", ["delta", "soft-suffix"], key="rec_method", **_PERSIST)
        boundary = form.number(st, "Boundary steps (reward a non-refusal first token first)", "rec_boundary", d.boundary_steps,
                               check=_rule("boundary_steps"), says="Boundary steps", hidden=True)
        answer_tokens = form.number(st, "Answer tokens teacher-forced", "rec_answer_tokens", d.answer_tokens, says="Answer tokens",
                                    check=validate.chain(_rule("answer_tokens"), validate.context_check(lm, "Answer tokens")), hidden=True)
        max_new = form.number(st, "Recovered answer length (tokens)", "rec_max_new", d.max_new_tokens, says="Recovered answer length",
                              check=validate.chain(_rule("max_new_tokens"), validate.context_check(lm, "Recovered answer length")),
                              hidden=True)
        batch = form.number(st, "Batch size", "rec_batch", d.batch_size, check=_rule("batch_size"), hidden=True)
        seed = form.number(st, "Seed", "rec_seed", d.seed, check=_rule("seed"), hidden=True)
    if form.hidden:
        with p3:
            form.show_hidden()
    if not form.ok:
        return None, None, None
    try:
        cfg = RecoveryConfig(projection=projection, method=method, where=where, budget=budget, budget_kind=budget_kind,
                             budget_relative=bool(relative), steps=steps, boundary_steps=boundary, lr=lr,
                             answer_tokens=answer_tokens, max_new_tokens=max_new, batch_size=batch, seed=seed,
                             delta_layer=delta_layer, **cross)
    except LabError as exc:
        st.error(f"These settings cannot run: {validate.page_message(exc, 'These settings')}")
        return None, None, None
    layer = resolve_delta_layer(cfg, specs, n_layers)
    if cfg.method == "delta":
        try:
            check_projection_layers(cfg.projection, specs, layer)
        except LabError as exc:
            st.error(f"This projection cannot hold the clamp set: {exc}.")
            return None, None, None
    return cfg, int(limit), layer
