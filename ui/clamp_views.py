"""Page pieces for the clamp set: which SAE the search adds to, the editor (one block per row) and presets."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.errors import LabError
from ui import clamp_set, feature_link, state

MODE_HELP = "set: z_S := value · multiply: z_S := value × z_S · zero: z_S := 0"


def search_sae(lm, sidebar_sae):
    """The SAE the search tabs, the feature card and every 'add' work on: the sidebar's, or another one of this model."""
    options = clamp_set.sae_options(lm, sidebar_sae)
    left, _ = st.columns([2, 3])
    choice = left.selectbox("Search and add features in", options, format_func=clamp_set.sae_label, key=f"search_sae:{options[0]}",
                            help="Features found here are added to this SAE's row of the clamp set. The sidebar picks the default.")
    if choice == options[0]:
        return sidebar_sae
    try:
        return state.load_sae_spec(choice)
    except LabError as exc:
        st.error(f"SAE {choice}: {exc}")
        return sidebar_sae


def _table(row: dict, sae, mode: str, key: str) -> pd.DataFrame:
    vals = list(row["values"]) + [1.0] * (len(row["features"]) - len(row["values"]))
    df = pd.DataFrame({"feature": pd.Series(row["features"], dtype="Int64"), "value": pd.Series(vals[: len(row["features"])], dtype="float64")})
    df["link"] = [(sae.neuronpedia_url(f) if sae is not None else None) or "" for f in row["features"]]
    d_sae = sae.d_sae if sae is not None else None
    # No min/max on the feature column: the editor would clamp 99999 to the last feature without a word. Apply sends
    # what was typed to the engine, which refuses an out-of-range index naming the SAE's width.
    return st.data_editor(
        df, num_rows="dynamic", hide_index=True, width="stretch", key=key,
        column_config={"feature": st.column_config.NumberColumn("feature", step=1,
                                                                help=f"0 to {d_sae - 1} (d_sae {d_sae})" if d_sae else None),
                       "value": st.column_config.NumberColumn("value", disabled=mode == "zero"),
                       "link": st.column_config.LinkColumn("Neuronpedia", disabled=True)},
    )


def _edited_row(i: int, spec: str, mode: str, edited: pd.DataFrame) -> dict:
    from engine.method.clamp import check_value

    rows = edited.dropna(subset=["feature"])
    where = f"row #{i} ({clamp_set.sae_label(spec)})"
    feats = []
    for f in rows["feature"]:
        if float(f) != int(f):
            raise LabError(f"{where}: feature index {f} is not a whole number")
        feats.append(int(f))
    values: list[float] = []
    if mode != "zero":
        for f, v in zip(feats, rows["value"]):
            if pd.isna(v):
                raise LabError(f"{where}: feature {f} needs a value in mode {mode}")
            try:
                values.append(check_value(float(v)))  # the engine's rule: finite (negative values are allowed)
            except LabError as exc:
                raise LabError(f"{where}: feature {f}: {exc}") from None
    return {"sae": spec, "features": feats, "mode": mode, "values": values}


def clamp_editor(lm, sidebar_sae) -> None:
    """One block per row (its SAE and layer, mode, feature table, remove); Apply validates the whole set."""
    from engine.method.clamp import CLAMP_MODES

    cur = clamp_set.clamp_state(lm, sidebar_sae)
    options = clamp_set.sae_options(lm, sidebar_sae)
    v = cur["version"]
    if not cur["rows"]:
        st.info("The clamp set is empty: add features from a search above, or add a row below and type them.")
    pending = []
    for i, row in enumerate(cur["rows"]):
        rid = row["id"]
        with st.container(border=True):
            c1, c2, c3 = st.columns([4, 3, 1], vertical_alignment="bottom")
            opts = options if row["sae"] in options else [row["sae"], *options]
            spec = c1.selectbox(f"Row #{i}: SAE", opts, index=opts.index(row["sae"]), format_func=clamp_set.sae_label, key=f"clamp_sae:{v}:{rid}")
            mode = c2.radio("Mode", CLAMP_MODES, index=CLAMP_MODES.index(row["mode"]), horizontal=True, key=f"clamp_mode:{v}:{rid}", help=MODE_HELP)
            if c3.button("Remove", key=f"clamp_remove:{rid}", help="Remove this row (edits in other rows are kept)"):
                clamp_set.remove_row(lm, sidebar_sae, rid)
                st.rerun()
            try:
                sae = state.load_sae_spec(spec)
            except LabError as exc:
                st.error(f"SAE {spec}: {exc}")
                sae = None
            edited = _table(row, sae, mode, f"clamp_table:{v}:{rid}")
            if sae is not None and row["features"]:
                feature_link.picker(row["features"], row["sae"], f"clamp_card:{rid}")
            changed = spec != row["sae"] or mode != row["mode"]
            st.caption(f"#{i} · {clamp_set.sae_label(row['sae'])} · {len(row['features'])} features · mode **{row['mode']}**"
                       + (f" · d_sae {sae.d_sae}" if sae is not None else "") + (" · *changes not applied yet*" if changed else ""))
            pending.append((i, spec, mode, edited))
    c1, c2, c3, c4 = st.columns([1.2, 1.2, 2, 1.2], vertical_alignment="bottom")
    if c1.button("Apply changes", key="clamp_apply", type="primary", disabled=not cur["rows"]):
        try:
            rows = [_edited_row(i, spec, mode, edited) for i, spec, mode, edited in pending]
            clamp_set.specs(lm, rows)  # the engine's checks: duplicates, ranges, values, each SAE fits the model
            clamp_set.set_rows(lm, rows, "edited")
            st.rerun()
        except LabError as exc:
            st.error(f"Not applied: {exc}")
    if c2.button("Clear the clamp set", key="clamp_clear"):
        clamp_set.set_rows(lm, [], "empty")
        st.rerun()
    new = c3.selectbox("Add a row for", options, format_func=clamp_set.sae_label, key="clamp_new_sae")
    if c4.button("Add a row", key="clamp_add_row"):
        clamp_set.add_row(lm, sidebar_sae, new)
        st.rerun()
    layers = sorted({clamp_set.layer_of(clamp_set.spec_hook(r["sae"])) for r in cur["rows"]} - {None})
    st.caption(f"{len(cur['rows'])} row{'s' if len(cur['rows']) != 1 else ''} · "
               f"{sum(len(r['features']) for r in cur['rows'])} features over layer{'s' if len(layers) != 1 else ''} "
               f"{', '.join(map(str, layers)) or '–'} · from: {cur['origin']}")


def presets_section(lm, sae) -> None:
    """Load a preset (replacing the set, or adding its rows) and save the whole set as a clamp file."""
    with st.expander("Presets: save and load clamp sets"):
        choices = clamp_set.preset_choices(lm, sae)
        if choices:
            choice = st.selectbox("Preset", list(choices), key="preset_choice",
                                  help="Shipped presets, then yours. A clamp set may span several SAEs (layers).")
            c1, c2, _ = st.columns([1, 1, 3])
            load, add = c1.button("Load preset", key="preset_load", help="Replace the clamp set"), \
                c2.button("Add to the set", key="preset_add", help="Add the preset's rows to the clamp set")
            if load or add:
                kind, path = choices[choice]
                try:
                    shipped = choice.startswith("shipped:")
                    name = "the SAE's shipped preset" if kind == "single" and shipped else \
                        f"{'shipped ' if shipped else ''}preset '{path.stem}'"
                    clamp_set.apply_rows(lm, sae, clamp_set.preset_rows(sae, kind, path), name, add)
                    st.rerun()
                except LabError as exc:
                    st.error(f"Preset not loaded: {exc}")
        else:
            st.caption("No presets for this model yet.")
        name = st.text_input("Save the current clamp set as", key="preset_name", placeholder="e.g. refusal-top10-x2")
        st.button("Save preset", key="preset_save", on_click=clamp_set.save_preset_clicked, args=(lm,))
        clamp_set.show_save_message()
