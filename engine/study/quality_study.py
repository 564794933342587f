"""``study sae-quality``: the whole method once per SAE on the same prompts, one table row per SAE (docs/STUDY.md).

For each SAE, four steps, each a normal run or record of the run store, so the other pages open them:

1. a clamp preset: the SAE's own ``preset.json``, or the recipe's search (``engine.study.measure``), and its quality;
2. flips on the prompts of an existing flips run RUN: a new run ``<study>-<i>-<sae>`` in the run store;
3. encoder recovery of its valid flips, δ at the SAE's layer: the record ``study`` of that run;
4. attribution of that record.

The study folder ``data_dir()/studies/<name>/`` holds ``study_config.json``, one ``saes/<i>/state.json`` per SAE (its
preset, quality, run, seconds per step) and the table (``engine.study.table``). ``resume`` continues a study: finished
steps are skipped and an interrupted one continues through its own resume; a new study never reuses a name.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LabError
from engine.lm.models import LoadedModel
from engine.lm.saes import LoadedSAE
from engine.paths import data_dir
from engine.scale.config import LOCAL, ExecutorConfig
from engine.services.progress import ProgressEvent, ProgressFn, report
from engine.store.files import existing_run, read_json, read_json_or_none, read_jsonl, write_json
from engine.study.config import StudyConfig

logger = logging.getLogger(__name__)

FINISHED = ("done", "no valid flips")
"""Row statuses of an SAE whose steps are all finished."""
RECORD = "study"
"""Name of the recovery record the study writes in each SAE's run."""
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")


@dataclass
class StudySAE:
    """One SAE of a study."""

    spec: str
    """What ``--sae`` takes (``default:ladder/NAME``, a folder, …)."""
    name: str
    """Short name for the table and the run's name."""
    quality: dict | None = None
    """A quality report that comes with it (a ladder entry's), else None."""
    k: int | None = None
    """TopK k it was trained with, when known."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class StudyResult:
    """What :func:`run_study` returns."""

    name: str
    path: Path
    rows: list[dict]
    cancelled: bool

    def to_json(self) -> dict:
        return {"name": self.name, "dir": str(self.path), "rows": self.rows, "cancelled": self.cancelled}


# ------------------------------------------------------------------------------------------------ where things are


def studies_root() -> Path:
    root = data_dir() / "studies"
    root.mkdir(parents=True, exist_ok=True)
    return root


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_OK.match(name) or ".." in name:
        raise LabError(f"{name!r} is not a usable study name (letters, digits, '.', '_' and '-', at most 81; no '/')")
    return name


def list_studies() -> list[Path]:
    """Every study folder (with a ``study_config.json``), newest first."""
    found = [p for p in studies_root().iterdir() if p.is_dir() and (p / "study_config.json").is_file()]
    return sorted(found, key=lambda p: (float((read_json_or_none(p / "study_config.json") or {}).get("created", 0)), p.name),
                  reverse=True)


def study_path(name: str) -> Path:
    path = studies_root() / check_study_name(name)
    if not (path / "study_config.json").is_file():
        known = ", ".join(p.name for p in list_studies()[:8]) or "none"
        raise LabError(f"there is no study named {name!r} (studies: {known})")
    return path


def resolve_run(run: str | Path) -> Path:
    """A flips run given as a folder, or as the name of a run in the run store."""
    from engine.store.catalogue import runs_root

    path = Path(run)
    if not path.is_dir() and _NAME_OK.match(str(run)) and (runs_root() / str(run)).is_dir():
        path = runs_root() / str(run)
    if not path.is_dir():
        raise LabError(f"there is no flips run {str(run)!r} (neither a folder nor a run in the store); make one with "
                       "`python -m engine flips` or on the Flips page")
    return existing_run(path, "flips.jsonl").resolve()


def ladder_model(model: str) -> str | None:
    """Which ladder fits a run's model (``engine.sae_recipe.ladder.MODELS``): ``tiny``, ``default`` or none."""
    from engine.lm.models import is_default_model

    if model == "tiny":
        return "tiny"
    return "default" if is_default_model(model) else None


def resolve_saes(specs: Sequence[str] | None, model: str = "default") -> list[StudySAE]:
    """The SAEs given (``--sae``), else every built SAE of the width ladder of the run's ``model``."""
    if specs:
        return [StudySAE(s, _short_name(s)) for s in dict.fromkeys(specs)]
    kind = ladder_model(model)
    if kind is None:
        raise LabError(f"no SAEs given, and the width ladder is built for the default model only, not {model}; pass "
                       "the SAEs to compare with --sae SPEC (repeatable)")
    try:
        from engine.sae_recipe.ladder import built_ladder
    except ImportError:
        raise LabError("no SAEs given and this version has no width ladder; pass the SAEs to compare with --sae SPEC "
                       "(repeatable)") from None
    entries = list(built_ladder(kind))
    if not entries:
        tiny = " --model tiny" if kind == "tiny" else ""
        raise LabError(f"no SAEs given and no SAE of the width ladder is built yet; build it with `python -m "
                       f"engine.sae_recipe ladder{tiny}` (docs/DEFAULT_SAE.md) or pass the SAEs to compare with --sae "
                       "SPEC (repeatable)")
    out = []
    for e in entries:
        quality = getattr(e, "quality", None)
        quality = quality.to_json() if hasattr(quality, "to_json") else (dict(quality) if isinstance(quality, dict) else None)
        k = getattr(e, "k", None)
        out.append(StudySAE(str(e.spec), str(e.name), quality, int(k) if isinstance(k, int) else None))
    return out


def available_ladder(model: str) -> list[StudySAE]:
    """The built ladder SAEs of ``model``'s ladder (empty when there is none): the choices a form offers."""
    try:
        return resolve_saes(None, model)
    except LabError:
        return []


def saved_study(folder: Path) -> tuple[dict, StudyConfig]:
    """A study's ``study_config.json`` and its settings, to resume it as it was started."""
    saved = read_json(Path(folder) / "study_config.json")
    return saved, StudyConfig.from_json(saved.get("config") or {})


def _short_name(spec: str) -> str:
    """A folder's own name for a path spec, else the spec."""
    path = Path(spec)
    return path.name if path.name and path.exists() else spec


def run_name(study: str, index: int, sae: StudySAE) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", sae.name).strip("-")[:30] or "sae"
    return f"{study}-{index + 1}-{slug}"


def run_prompts(run: Path, limit: int | None) -> tuple[list[str], list[dict]]:
    """The run's prompts in order (``prompts.json``, else its flip records) and its flip records, first ``limit``."""
    from engine.method.flips import PROMPTS_FILE

    flips = sorted(read_jsonl(run / "flips.jsonl", torn_tail=True), key=lambda r: int(r["id"]))
    prompts = read_json(run / PROMPTS_FILE) if (run / PROMPTS_FILE).is_file() else [r["prompt"] for r in flips]
    if not prompts:
        raise LabError(f"the flips run {run} has no prompts")
    if limit is not None:
        prompts = prompts[:limit]
    n = len(prompts)
    return list(prompts), [r for r in flips if int(r["id"]) < n]


# ------------------------------------------------------------------------------------------------ the study


def _start(run: Path, saes: list[StudySAE] | None, cfg: StudyConfig, name: str | None, resume: bool) -> tuple[Path, dict]:
    """The study folder and its saved settings: a new study, or (``resume``) the named or newest one, checked."""
    from engine.store.catalogue import runs_root
    from engine.store.records import check_resume

    if resume:
        if name is None:
            found = list_studies()
            if not found:
                raise LabError("there is no study to resume yet; start one without resume")
            path = found[0]
        else:
            path = study_path(name)
        saved = read_json(path / "study_config.json")
        specs = [s["spec"] for s in saved.get("saes", [])]
        wanted = {"run": str(run), "saes": [s.spec for s in saes] if saes is not None else specs, "config": cfg.to_json()}
        check_resume({"run": saved.get("run"), "saes": specs, "config": saved.get("config")}, wanted, f"the study {path.name!r}")
        return path, saved
    if saes is None:
        raise LabError("a new study needs its SAEs")
    if name is None:
        base = name = "sae-quality-" + time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (studies_root() / name).exists():
            name, n = f"{base}-{n}", n + 1
    check_study_name(name)
    path = studies_root() / name
    if path.exists():
        raise LabError(f"a study named {name!r} already exists; resume it, or choose another name")
    taken = [run_name(name, i, s) for i, s in enumerate(saes) if (runs_root() / run_name(name, i, s)).exists()]
    if taken:
        raise LabError(f"the run store already has a run named {taken[0]!r}; choose another study name")
    path.mkdir(parents=True)
    saved = {"name": name, "run": str(run), "saes": [s.to_json() for s in saes], "config": cfg.to_json(), "created": time.time()}
    write_json(path / "study_config.json", saved)
    return path, saved


def load_study_saes(lm: LoadedModel, saes: Sequence[StudySAE]) -> list[LoadedSAE]:
    """Every SAE, loaded and checked against the run's model, before any long step starts."""
    from engine.lm.sae_sources import load_sae

    loaded = []
    for s in saes:
        try:
            loaded.append(load_sae(s.spec, lm))
        except LabError as exc:
            raise LabError(f"SAE {s.spec!r}: {exc}") from None
    return loaded


def _relay(on_progress: ProgressFn | None, label: str) -> ProgressFn | None:
    """Forward a step's progress with the SAE it belongs to in front of its phase."""
    if on_progress is None:
        return None
    return lambda ev: on_progress(ProgressEvent(f"{label} · {ev.phase}", ev.done, ev.total, ev.unit, ev.detail))


class _Steps:
    """One SAE's ``state.json``: finished steps and the seconds spent on each, saved after every step."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "state.json"
        self.state = read_json(self.path) if self.path.is_file() else {"seconds": {}}

    def timed(self, step: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            seconds = self.state["seconds"]
            seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - t0, 3)
            self.save()

    def save(self) -> None:
        write_json(self.path, self.state)


def _study_one(lm: LoadedModel, sae: LoadedSAE, entry: StudySAE, index: int, folder: Path, saved: dict, prompts: list[str],
               flips: list[dict], cfg: StudyConfig, contrast: dict, exe: ExecutorConfig, cancel: threading.Event | None,
               on_progress: ProgressFn | None, label: str) -> dict:
    """The four steps for one SAE (module docstring), each skipped when finished; returns its state."""
    from engine.attribution.driver import run_attribution
    from engine.method.clamp import ClampSpec
    from engine.method.flips import write_flips_run
    from engine.method.generation import GenerationConfig
    from engine.method.judge import JudgeConfig
    from engine.recovery.config import RecoveryConfig
    from engine.recovery.driver import run_recovery
    from engine.store.catalogue import runs_root
    from engine.store.records import get_record, list_records
    from engine.study.measure import choose_study_preset, sae_quality

    steps = _Steps(folder / "saes" / str(index + 1))
    state = steps.state
    state.update(sae=entry.spec, run=run_name(saved["name"], index, entry))
    relay = _relay(on_progress, label)
    if "preset" not in state:
        report(on_progress, f"{label} · choosing a clamp preset", 0, 1, "steps")
        state["preset"] = steps.timed("preset", lambda: choose_study_preset(lm, sae, cfg, contrast))
    if "quality" not in state:
        report(on_progress, f"{label} · quality", 0, 1, "steps")
        state["quality"] = steps.timed("quality", lambda: sae_quality(lm, sae, flips, entry.quality).to_json())
    if cancel is not None and cancel.is_set():
        return state
    preset = state["preset"]
    spec = ClampSpec(sae, [int(f) for f in preset["features"]], preset["mode"], [float(v) for v in preset["values"]])
    run = runs_root() / state["run"]
    summary = read_json_or_none(run / "summary.json")
    if summary is None or summary.get("cancelled"):
        rc = read_json(Path(saved["run"]) / "config.json")
        gen = GenerationConfig(max_new_tokens=int(rc["max_new_tokens"]), batch_size=int(rc["batch_size"]), seed=int(rc.get("seed", 0)))
        run.mkdir(parents=True, exist_ok=True)
        settings = {"model": rc["model"], "prompts": f"study:{saved['name']}", "limit": cfg.limit, "source": "study",
                    "study": saved["name"], "study_sae": entry.spec, "from_run": saved["run"]}
        summary = steps.timed("flips", lambda: write_flips_run(
            lm, [spec], prompts, gen, JudgeConfig.from_json(rc.get("judge")), run, settings, cancel=cancel, resume=(run / "config.json").is_file(),
            exe=exe, on_progress=relay))
    if summary.get("cancelled"):
        return state
    if int(summary["n_valid"]) == 0:
        state["status"] = "no valid flips"
        steps.save()
        return state
    base = RecoveryConfig.from_json(cfg.recovery) if cfg.recovery else RecoveryConfig()
    rcfg = dataclasses.replace(base, projection="encoder", method="delta", delta_layer=sae.layer)
    record = next((r for r in list_records(run) if r.name == RECORD), None)
    if record is None or not record.complete:
        rec = steps.timed("recovery", lambda: run_recovery(run, rcfg, lm=lm, cancel=cancel, name=RECORD,
                                                           resume=record is not None, exe=exe, on_progress=relay))
        if rec.get("cancelled"):
            return state
        record = get_record(run, RECORD)
    attributed = record.attribution_summary
    if attributed is None or attributed.get("cancelled"):
        att = steps.timed("attribution", lambda: run_attribution(
            run, cfg.top_k, lm=lm, cancel=cancel, recovery=RECORD, resume=record.has_attribution, exe=exe,
            on_progress=relay))
        if att.get("cancelled"):
            return state
    state["status"] = "done"
    steps.save()
    return state


def run_study(
    run: str | Path, sae_specs: Sequence[str] | None, cfg: StudyConfig | None = None, name: str | None = None,
    resume: bool = False, lm: LoadedModel | None = None, exe: ExecutorConfig = LOCAL, cancel: threading.Event | None = None,
    on_progress: ProgressFn | None = None, on_row: Callable[[dict], None] | None = None,
) -> StudyResult:
    """Study each SAE on the prompts of the flips run ``run`` (module docstring); writes and returns the table.

    ``sae_specs``: the SAEs (None: the built width ladder, or on a resume the study's own list). ``on_row(row)``: each
    SAE's table row as it finishes. Bad input (no such run, an SAE for another model, no SAEs) fails before anything is
    written or generated.
    """
    from engine.lm.loading import load_model
    from engine.study.plots import save_html
    from engine.study.table import study_row, write_table

    cfg = (cfg or StudyConfig()).check()
    run_dir = resolve_run(run)
    if name is not None:
        check_study_name(name)
    config = read_json(run_dir / "config.json")
    if "model" not in config or "clamps" not in config:
        raise LabError(f"{run_dir / 'config.json'} is not a flips run config (no model/clamps)")
    saes = resolve_saes(sae_specs, str(config["model"])) if (sae_specs or not resume) else None
    prompts, flips = run_prompts(run_dir, cfg.limit)
    lm = lm or load_model(config["model"], config.get("device", "auto"), config.get("dtype", "auto"))
    if saes is not None:
        loaded = load_study_saes(lm, saes)  # an SAE for another model fails here, before the study folder exists
    folder, saved = _start(run_dir, saes, cfg, name, resume)
    if saes is None:
        saes = [StudySAE(**s) for s in saved["saes"]]
        loaded = load_study_saes(lm, saes)
    contrast: dict = {}
    rows: list[dict] = []
    for i, (entry, sae) in enumerate(zip(saes, loaded)):
        if cancel is not None and cancel.is_set():
            break
        label = f"SAE {i + 1}/{len(saes)} {entry.name}"
        t0 = time.perf_counter()
        state = _study_one(lm, sae, entry, i, folder, saved, prompts, flips, cfg, contrast, exe, cancel, on_progress, label)
        logger.info("%s: %s in %.1f s", label, state.get("status", "stopped"), time.perf_counter() - t0)
        row = study_row(entry, sae, state)
        rows.append(row)
        write_table(folder, saved, rows)
        if on_row is not None and state.get("status"):
            on_row(row)
    for entry, sae in list(zip(saes, loaded))[len(rows):]:  # stopped before these: listed, so every SAE has a row
        rows.append(study_row(entry, sae, {"status": "not started"}))
    cancelled = any(r["status"] not in FINISHED for r in rows)
    table = write_table(folder, saved, rows)
    if not table.empty:
        save_html(table, folder / "study.html", saved["name"])
    return StudyResult(saved["name"], folder, rows, cancelled)
