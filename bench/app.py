"""Dashboard timings in a real browser (headless Debian chromium), written as JSON.

    .venv/bin/python bench/app.py [--model default] [--rounds 3] [--switch-rounds 2]

* cold start: from launching ``streamlit run dashboard.py`` (a fresh process, the default model's converted
  weights already in the user cache) to the first page being interactive — the script has finished, nothing is
  stale, and the sidebar reports the loaded model. Also the time until the server answers its health check.
  Goal: ≤ 15 s.
* page switch: clicking a page in the navigation until that page has settled, every page, several rounds.

"Settled" is polled every 50 ms and needs three quiet polls in a row, so each figure includes ~0.1–0.15 s of polling.

Writes ``bench/results/app.json``. Needs chromium (``scripts/setup.sh --dev``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write  # noqa: E402
from tests.app import browser as b  # noqa: E402

PAGES = ["2 · Features and clamp", "3 · Flips and labels", "4 · Recovery", "5 · Attribution", "6 · Runs", "1 · Pick model and SAE"]


def warm_cache(model: str) -> float:
    """Load the model once in a separate process so its converted weights are cached (not timed as cold start)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from engine.lm.loading import load_model; load_model({model!r}, 'cpu')"], cwd=ROOT, check=True)
    return time.perf_counter() - t


def cold_start(page, data: Path, model: str) -> dict:
    t0 = time.perf_counter()
    server = b.Server(data, model, log=Path(tempfile.gettempdir()) / "bench-app-server.log")
    server.start(timeout=180)
    health = time.perf_counter() - t0
    try:
        page.goto(server.url)
        page.get_by_text("Model:").first.wait_for(timeout=180_000)
        b.settle(page, 180, interval=0.05)
        interactive = time.perf_counter() - t0
        b.assert_no_exception(page, "first page")
    finally:
        server.stop()
    return {"health_s": round(health, 2), "interactive_s": round(interactive, 2)}


def page_switches(page, data: Path, model: str, rounds: int) -> dict:
    server = b.Server(data, model, log=Path(tempfile.gettempdir()) / "bench-app-server.log").start(timeout=180)
    times: dict[str, list[float]] = {p: [] for p in PAGES}
    try:
        page.goto(server.url)
        b.settle(page, 180)
        for _ in range(rounds):
            for title in PAGES:
                t = time.perf_counter()
                page.get_by_role("link", name=title).first.click()
                b.settle(page, 120, interval=0.05)
                times[title].append(time.perf_counter() - t)
                b.assert_no_exception(page, title)
    finally:
        server.stop()
    every = [x for v in times.values() for x in v]
    return {
        "per_page_median_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "median_s": round(statistics.median(every), 2), "max_s": round(max(every), 2), "n": len(every),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=3, help="cold starts (each a fresh server process)")
    ap.add_argument("--switch-rounds", type=int, default=2, help="passes over every page")
    args = ap.parse_args()
    if not b.chromium_available():
        sys.exit("bench/app.py needs /usr/bin/chromium and playwright (scripts/setup.sh --dev)")
    from playwright.sync_api import sync_playwright

    from engine.lm.sae_sources import default_sae_names

    warm = warm_cache(args.model)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        data = Path(tmp)
        browser = b.launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        colds = [cold_start(page, data, args.model) for _ in range(args.rounds)]
        switches = page_switches(page, data, args.model, args.switch_rounds)
        browser.close()
    interactive = [c["interactive_s"] for c in colds]
    result = {
        "benchmark": "dashboard cold start and page switch (headless chromium)",
        "command": f"bench/app.py --model {args.model} --rounds {args.rounds} --switch-rounds {args.switch_rounds}",
        "model": args.model,
        "default_sae_shipped": bool(default_sae_names()),
        "cache_warm_load_s": round(warm, 2),
        "cold_start": {"runs": colds, "interactive_median_s": round(statistics.median(interactive), 2),
                       "interactive_max_s": round(max(interactive), 2), "goal_s": 15.0,
                       "meets_goal": statistics.median(interactive) <= 15.0},
        "page_switch": switches,
        "load_average": _loadavg(),
    }
    write("app", result)


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


if __name__ == "__main__":
    main()
