"""The steering playground's pieces: the prompt form, the streamed side-by-side answers, "add to a flips run".

The generation runs as a background job (``engine.services.jobs``) around ``engine.method.streaming``: the worker logs
each side's state after every token, and a fragment redraws both columns a few times a second while it runs. Adding
to a run goes through ``engine.method.flip_append.append_flip`` (an existing run, append-only) or through
``engine.method.flips.write_flips_run`` (a new run of one prompt: the one writer of a fresh run, which answers the
prompt again; the streamed answers equal ``generate``'s, so the run holds the same texts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import streamlit as st

from engine.errors import LabError
from engine.method.generation import GenerationConfig
from engine.method.judge import JudgeConfig, judge
from engine.method.streaming import SIDES, StreamStep, check_prompt_fits, stream_side_by_side
from engine.services import jobs
from ui import render, state, validate

logger = logging.getLogger(__name__)

JOB_SLOT = "playground_job"
POLL_S = 0.5
"""How often the page redraws the streamed answers while the job runs."""
TITLES = {"base": "Base (no clamp)", "clamped": "Clamped"}


@dataclass
class PlaygroundResult:
    """What a finished (or cancelled) playground job leaves for "add to a flips run"."""

    prompt: str
    """The instruction as typed."""
    gen: GenerationConfig
    """How both sides were decoded."""
    specs: list = field(default_factory=list)
    """The clamp set (engine ClampSpecs) of the clamped side."""
    sides: dict[str, StreamStep] = field(default_factory=dict)
    """Each side's final state (``base``, ``clamped``)."""

    @property
    def complete(self) -> bool:
        return all(s in self.sides and self.sides[s].done for s in SIDES)


def settings_form(lm) -> tuple[str, GenerationConfig | None]:
    """The prompt and the decoding settings; the config is None while a number is refused (its message under it)."""
    prompt = st.text_area("Prompt", key="pg_prompt", height=110, placeholder="Type one request, e.g. How do I bake bread?",
                          persist_state="session")
    form = validate.Form()
    c1, c2, c3, c4 = st.columns(4)
    max_new = form.number(c1, "Max new tokens", "pg_max_new", 48,
                          check=validate.chain(validate.generation_check("max_new_tokens", "Max new tokens"),
                                               validate.context_check(lm, "Max new tokens")))
    sample = c2.toggle("Sample", key="pg_sample", help="Off: greedy, as flips runs decode. On: seeded sampling.")
    temperature, seed = 1.0, 0
    if sample:
        temperature = form.number(c3, "Temperature", "pg_temperature", 1.0, kind=float, check=_temperature_check)
        seed = form.number(c4, "Seed", "pg_seed", 0, check=validate.seed_check)
    if not form.ok:
        return prompt or "", None
    return prompt or "", GenerationConfig(max_new_tokens=max_new, batch_size=1, do_sample=sample, temperature=temperature, seed=seed)


def _temperature_check(value: float) -> float:
    """``GenerationConfig``'s rule for a sampling temperature, worded for the page."""
    try:
        GenerationConfig(do_sample=True, temperature=value)
    except LabError as exc:
        raise LabError(validate.page_message(exc, "Temperature", "temperature")) from None
    return value


def start(lm, specs: list, prompt: str, gen: GenerationConfig) -> jobs.Job | None:
    """Check the prompt against the context (the message gives its length) and start the streaming job."""
    try:
        check_prompt_fits(lm, prompt, gen.max_new_tokens)
    except LabError as exc:
        st.error(f"Not started: {validate.page_message(exc, 'Prompt')}")
        return None
    total = 2 * gen.max_new_tokens

    def work(j: jobs.Job) -> PlaygroundResult:
        result = PlaygroundResult(prompt, gen, list(specs))
        j.set_progress(0, total, "answering")
        for step in stream_side_by_side(lm, prompt, specs, gen, cancel=j.cancel):
            j.log(step)
            result.sides[step.side] = step
            done = sum(gen.max_new_tokens if s.done else s.n_tokens for s in result.sides.values())
            j.set_progress(done, total, f"{step.side} token {step.n_tokens}")
        return result

    job = jobs.start_job("playground", work, meta={"model": lm.name})
    state.remember_job(JOB_SLOT, job)
    return job


def current_job() -> jobs.Job | None:
    """This session's playground job (session state, then the URL after a reload); never another session's."""
    return jobs.get_job(st.session_state.get(JOB_SLOT) or st.query_params.get(JOB_SLOT))


def latest_sides(job: jobs.Job) -> dict[str, dict]:
    """Each side's newest streamed state (event rows of :class:`StreamStep`)."""
    out: dict[str, dict] = {}
    for ev in job.events():
        out[ev["side"]] = ev
    return out


def answers(sides: dict[str, dict], judge_cfg: JudgeConfig | None, running: bool) -> None:
    """Base and clamped side by side: plain while streaming, judged (refusal marks) once a side has ended."""
    for col, side in zip(st.columns(2), SIDES):
        with col:
            ev = sides.get(side)
            text = ev["text"] if ev else ""
            if ev and ev["done"] and judge_cfg is not None:
                v = judge(text, judge_cfg).to_json()
                render.text_panel(TITLES[side], text, v["reasons"], v["refusal"], v["degenerate"])
            else:
                st.markdown(f"**{TITLES[side]}**" + (" — streaming…" if running else ""))
                st.html(render.highlighted(text + (" ▌" if running else ""), None))
            st.caption(f"{ev['n_tokens'] if ev else 0} tokens" + (" · ended by a stop token" if ev and ev.get("stop_id") is not None
                                                                   else " · cut at max new tokens" if ev and ev["done"] else ""))


def live(job: jobs.Job | None, judge_cfg: JudgeConfig) -> None:
    """Redraw the streamed answers every :data:`POLL_S` while the job runs, with Cancel; once it ends, rerun the page."""
    ticking = job is not None and job.running

    @st.fragment(run_every=POLL_S if ticking else None)
    def frame() -> None:
        current = jobs.get_job(job.id) if job else None
        if current is None:
            return
        render.job_status(current)
        if current.running and st.button("Cancel", key="pg_cancel", help="Stops after the current token."):
            current.request_cancel()
        answers(latest_sides(current), judge_cfg, current.running)
        if not current.running and ticking:
            st.rerun()

    frame()


# ------------------------------------------------------------------------------------------------ add to a flips run


def _flips_runs() -> list[str]:
    from engine.store import catalogue

    return [r.name for r in catalogue.list_runs() if r.has_flips]


def add_section(lm, result: PlaygroundResult) -> None:
    """Append the prompt with its two answers to an existing flips run, or start a new run of it."""
    from engine.method.flip_append import append_flip
    from engine.store import catalogue

    st.subheader("Add to a flips run")
    done = st.session_state.pop("pg_added", None)
    if done:
        st.success(done)
    if not result.complete:
        st.info("The generation was cancelled before both answers ended, so there is nothing to add. Generate again.")
        return
    if result.gen.do_sample:
        st.info("Flips runs decode greedily: turn **Sample** off and generate again to add this prompt to a run.")
        return
    runs = _flips_runs()
    # with no flips run yet, "a new one" is the only choice that can work, so it is the one offered first
    where = st.radio("Add to", ["An existing flips run", "A new flips run"], horizontal=True, key="pg_add_where",
                     index=0 if runs else 1)
    base, clamped = result.sides["base"], result.sides["clamped"]
    if where == "An existing flips run":
        if not runs:
            st.caption("There is no flips run yet: add to a new one.")
            return
        name = st.selectbox("Flips run", runs, key="pg_add_run",
                            help="It must have been made with this model, this clamp set and the same max new tokens.")
        if st.button("Add to this run", key="pg_add_go", type="primary"):
            try:
                row = append_flip(catalogue.run_path(name), lm, result.specs, result.gen, result.prompt, base.text, clamped.text,
                                  base.stop_id)
            except LabError as exc:
                st.error(f"Not added: {exc}")
                return
            state.set_current_run(name)
            st.session_state["pg_added"] = (f"Added as prompt #{row['id']} of `{name}` "
                                            f"({'a valid flip' if row['valid'] else 'not a valid flip'}); see it on the Flips page.")
            st.rerun()
    elif st.button("Make a new flips run of this prompt", key="pg_new_go", type="primary"):
        _new_run(lm, result)


def _new_run(lm, result: PlaygroundResult) -> None:
    """A background flips job of the one prompt, into a new run directory (the Flips page shows it)."""
    from engine.method.flips import write_flips_run
    from engine.store import catalogue

    judge_cfg = JudgeConfig.from_json(st.session_state.get("judge_cfg"))
    run_dir = catalogue.new_run_dir("playground")
    model_name, _ = state.model_choice()
    settings = {"model": model_name, "prompts": "playground", "limit": None, "n_prompts": 1, "source": "dashboard"}

    def work(j: jobs.Job, specs=result.specs, gen=result.gen, prompt=result.prompt):
        j.set_progress(0, 1, "generating")
        return write_flips_run(lm, specs, [prompt], gen, judge_cfg, run_dir, settings, j.cancel, j.log)

    job = jobs.start_job("flips", work, meta={"run": run_dir.name})
    state.remember_job("flips_job", job)
    state.set_current_run(run_dir.name)
    st.session_state["pg_added"] = f"Started the new flips run `{run_dir.name}` of this prompt; it opens on the Flips page."
    st.rerun()
