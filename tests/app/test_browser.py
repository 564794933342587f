"""End to end in a real browser: `streamlit run dashboard.py` driven by Debian's headless Chromium.

pick the default → contrast search → clamp preset → flips on 4 prompts → label one → recovery for a few steps
with the live chart updating → attribution → runs. Screenshots land in ``test-artifacts/``; any exception
element on any page fails the test. A second test kills the server with SIGKILL mid-session and checks that
the hand labels are still there after a restart.

The flow runs on the offline default model when its SAE is shipped (``engine/default_sae``); otherwise on the
tiny model (set ``SAE_LAB_BROWSER_MODEL`` to force one). Skipped when chromium or playwright is missing.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.app import browser as b

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not b.chromium_available(), reason="needs /usr/bin/chromium and playwright (scripts/setup.sh --dev)"),
]


def _model() -> str:
    forced = os.environ.get("SAE_LAB_BROWSER_MODEL")
    if forced:
        return forced
    from engine.lm.sae_sources import default_sae_names

    return "default" if default_sae_names() else "tiny"


def _labels(data, run: str) -> dict:
    from engine.store import labels

    assert os.environ["SAE_LAB_DATA"] == str(data)

    # flip → one label; these tests label with one (unnamed) labeller, so the consensus is that label
    return labels.consensus(data / "runs" / run)


def _current_run(data) -> str:
    runs = sorted((data / "runs").iterdir(), key=lambda p: json.loads((p / "config.json").read_text()).get("created", 0))
    return runs[-1].name


def _progress_text(page) -> str:
    bars = page.locator("[data-testid='stProgress']")
    return bars.first.inner_text() if bars.count() else ""


def test_full_flow_in_a_real_browser(lab_env):
    model = _model()
    data = lab_env
    with b.browsing(data, model, "browser-server.log", 1400, 1800) as (server, browser, page):
        steps: list[tuple[str, float]] = []
        t0 = time.time()
        page.set_default_timeout(300_000)

        # 1 · pick: the offline default (or tiny) is selected without touching anything.
        page.goto(server.url)
        b.settle(page, 180)
        page.get_by_text("Pick a model and an SAE").first.wait_for()
        b.assert_no_exception(page, "pick")
        b.shot(page, "01-pick")
        steps.append(("pick", time.time() - t0))

        # 2 · contrast search.
        b.nav(page, "2 · Features and clamp")
        b.set_number(page, "Prompts (built-in harmless)", 4)
        b.set_number(page, "Answer tokens", 16)
        b.click(page, "Search by contrast")
        page.get_by_role("button", name=re.compile(r"Add the top \d+ to the clamp set")).wait_for(timeout=300_000)
        b.settle(page)
        b.assert_no_exception(page, "contrast search")
        b.shot(page, "02-contrast-search")
        steps.append(("contrast", time.time() - t0))

        # 3 · clamp preset: the shipped one for the default SAE; for tiny, save the contrast top 5 and load it back.
        page.get_by_text("Presets: save and load clamp sets").click()
        b.settle(page)
        if model != "default":
            b.click(page, "Add the top 5 to the clamp set")
            page.get_by_text("Presets: save and load clamp sets").click() if not page.get_by_label("Save the current clamp set as").is_visible() else None
            page.get_by_label("Save the current clamp set as").fill("e2e")
            page.get_by_label("Save the current clamp set as").press("Enter")
            b.settle(page)
            b.click(page, "Save preset")
            b.click(page, "Clear the clamp set")
            if not page.get_by_role("button", name="Load preset").is_visible():
                page.get_by_text("Presets: save and load clamp sets").click()
                b.settle(page)
        b.click(page, "Load preset")
        page.get_by_text(re.compile(r"\d+ features · mode \*?\*?\w+")).first.wait_for()
        b.assert_no_exception(page, "clamp preset")
        b.shot(page, "03-clamp-preset")
        steps.append(("preset", time.time() - t0))

        # 4 · flips on 4 prompts.
        b.nav(page, "3 · Flips and labels")
        b.set_number(page, "How many prompts", 4)
        b.set_number(page, "Max new tokens", 32 if model == "default" else 8)
        b.click(page, "Run base vs clamped")
        page.get_by_text("Valid flips", exact=True).first.wait_for(timeout=600_000)
        b.settle(page)
        b.assert_no_exception(page, "flips")
        b.shot(page, "04-flips")
        steps.append(("flips", time.time() - t0))
        run = _current_run(data)
        summary = json.loads((data / "runs" / run / "summary.json").read_text())
        assert summary["n_prompts"] == 4
        n_valid = summary["n_valid"]
        if n_valid == 0:  # a small run can find none (always, on the random tiny model)
            run, n_valid = b.seed_valid_run(data, run), 4
            page.reload()
            b.settle(page)
            b.choose(page, "Run", run)

        # 5 · label one flip.
        b.click(page, "Genuine refusal")
        page.get_by_text(re.compile(r"1/\d+ valid flips labelled")).first.wait_for()
        assert list(_labels(data, run).values()) == ["genuine"]
        b.assert_no_exception(page, "labels")
        b.shot(page, "05-label")
        steps.append(("label", time.time() - t0))

        # 6 · recovery for a few steps; the live chart and progress must move while it runs.
        b.nav(page, "4 · Recovery")
        b.set_number(page, "Steps", 8)
        b.set_number(page, "Valid flips to recover", min(2, n_valid))
        page.get_by_role("button", name="More settings").click()
        b.set_number(page, "Recovered answer length (tokens)", 16)
        page.keyboard.press("Escape")
        b.click(page, "Start recovery")
        page.get_by_text("Loss per step").first.wait_for()
        first = _progress_text(page)
        seen = {first}
        deadline = time.time() + 300
        while time.time() < deadline and len(seen) < 2 and page.get_by_role("button", name="Cancel").count():
            time.sleep(0.5)
            seen.add(_progress_text(page))
        b.shot(page, "06-recovery-live")
        assert len(seen) >= 2 or not page.get_by_role("button", name="Cancel").count(), "the live progress never changed"
        page.get_by_text("Results", exact=True).first.wait_for(timeout=600_000)
        b.settle(page)
        assert page.locator("[data-testid='stVegaLiteChart']").count() >= 2
        b.assert_no_exception(page, "recovery")
        b.shot(page, "07-recovery-results")
        steps.append(("recovery", time.time() - t0))
        from engine.store.records import list_records

        [record] = list_records(data / "runs" / run)  # the page's recovery, in a record of its own
        assert (record.path / "recovery_summary.json").is_file()

        # 7 · attribution.
        b.nav(page, "5 · Attribution")
        b.set_number(page, "k (top changed features)", 3)
        b.click(page, "Run attribution")
        page.get_by_text(re.compile(r"All \d+ attributed examples")).first.wait_for(timeout=600_000)
        b.settle(page)
        b.assert_no_exception(page, "attribution")
        b.shot(page, "08-attribution")
        steps.append(("attribution", time.time() - t0))

        # 8 · runs.
        b.nav(page, "6 · Runs")
        b.assert_no_exception(page, "runs")
        b.shot(page, "09-runs")
        steps.append(("runs", time.time() - t0))
        (b.ARTIFACTS / "browser-timings.json").write_text(json.dumps({"model": model, "elapsed_s": dict(steps)}, indent=2))


def test_labels_survive_kill_9_of_the_server(lab_env):
    from playwright.sync_api import sync_playwright

    from tests.app.apphelpers import make_flips_run

    data = lab_env
    make_flips_run(data, "crash-run", n=3)
    port = b.free_port()
    server = b.Server(data, "tiny", port=port, log=b.ARTIFACTS / "crash-server.log").start()
    try:
        with sync_playwright() as pw:
            browser = b.launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(f"{server.url}/flips")
            b.settle(page, 180)
            page.get_by_label("Note (optional)").fill("survives a crash")
            page.get_by_label("Note (optional)").press("Enter")
            b.settle(page)
            b.click(page, "Genuine refusal")
            page.get_by_text("1/3 valid flips labelled").first.wait_for()
            server.kill9()  # mid-session, no clean shutdown
            server = b.Server(data, "tiny", port=port, log=b.ARTIFACTS / "crash-server.log").start()
            page.goto(f"{server.url}/flips")
            b.settle(page, 180)
            page.get_by_text("1/3 valid flips labelled").first.wait_for()
            b.assert_no_exception(page, "after restart")
            b.shot(page, "10-labels-after-kill-9")
            browser.close()
    finally:
        server.stop()
    labels = _labels(data, "crash-run")
    assert labels == {0: "genuine"}


def test_a_budget_of_0_keeps_start_off_in_a_real_browser(lab_env):
    """The issue's case, typed by a real user: 0 in Budget B shows the engine's message under the field and Start
    recovery stays off (before, the number box showed a red hint yet the job ran with B = 40). No job starts."""

    from tests.app.apphelpers import make_flips_run

    data = lab_env
    run = make_flips_run(data, "budget-run", n=2)
    with b.browsing(data, "tiny", "budget-server.log", 1400, 1100) as (server, browser, page):
        page.goto(f"{server.url}/recovery?run=budget-run")
        b.settle(page, 180)
        start = page.get_by_role("button", name="Start recovery")
        start.wait_for()
        assert start.is_enabled()
        b.set_number(page, "Budget B", 0)
        message = page.get_by_text("Budget B must be a positive finite number, got 0")
        message.wait_for()
        assert message.is_visible()
        assert start.is_disabled()
        assert page.get_by_role("button", name="Start sweep").is_disabled()
        b.assert_no_exception(page, "budget 0")
        path = b.shot(page, "11-budget-0-refused")
        assert path.stat().st_size > 0
        # "abc" and NaN are refused as typed too (a number box used to drop them without a word)
        for typed, text in (("abc", "Budget B must be a number, got 'abc'"), ("nan", "got nan")):
            b.set_number(page, "Budget B", typed)
            page.get_by_text(text).first.wait_for()
            assert start.is_disabled()
        b.set_number(page, "Budget B", 40)
        assert start.is_enabled() and not page.get_by_text("Budget B must").count()
    assert not (run / "recoveries").exists() and not (run / "recovery.jsonl").exists()  # no job ever started


def test_first_streamed_flip_arrives_before_the_flips_job_ends(lab_env):
    """Issue 15: "Results appear above as they stream in" must be true. The first base answer and the first judged flip
    show up while the job still runs (its Cancel button is there, the run's full view is not yet); the times from the
    click are written to ``test-artifacts/streaming-timings.json`` with two screenshots."""

    model = _model()
    data = lab_env
    with b.browsing(data, model, "streaming-server.log", 1400, 1600) as (server, browser, page):
        n_prompts, tokens = (4, 16) if model == "default" else (10, 24)
        times: dict[str, float] = {}
        page.goto(f"{server.url}/features")
        b.settle(page, 180)
        if model != "default":  # the default SAE's shipped preset is the clamp set already; tiny has none
            page.get_by_role("tab", name="By index").click()
            page.get_by_label("Feature indices", exact=True).fill("1, 2, 3")
            page.get_by_label("Feature indices", exact=True).press("Enter")
            b.settle(page)
            b.click(page, "Add to the clamp set")
        b.nav(page, "3 · Flips and labels")
        b.set_number(page, "How many prompts", n_prompts)
        b.set_number(page, "Batch size", 2)
        b.set_number(page, "Max new tokens", tokens)
        t0 = time.time()
        page.get_by_role("button", name="Run base vs clamped").click()
        pending = page.get_by_text("generating the clamped answer of this batch…")
        flip = page.get_by_text(re.compile(r"^valid flip [✓✗]"))
        done = page.get_by_text("Valid flips", exact=True)
        cancel = page.get_by_role("button", name="Cancel")
        deadline = t0 + 900
        while time.time() < deadline and not done.count():
            now = time.time() - t0
            if "first base answer" not in times and pending.count():
                times["first base answer"] = now
            if "first streamed flip" not in times and flip.count():
                times["first streamed flip"] = now
                running = bool(cancel.count()) and not done.count()
                b.shot(page, "12-first-streamed-flip")
                assert running, "the first flip showed up only after the job had ended"
            time.sleep(0.2)
        done.first.wait_for(timeout=60_000)
        times["job ended (full view)"] = time.time() - t0
        b.settle(page)
        b.assert_no_exception(page, "flips streaming")
        b.shot(page, "13-flips-done")
        assert "first streamed flip" in times, "no flip was shown while the job ran"
        assert times["first streamed flip"] < times["job ended (full view)"]
        (b.ARTIFACTS / "streaming-timings.json").write_text(json.dumps(
            {"model": model, "prompts": n_prompts, "batch_size": 2, "max_new_tokens": tokens,
             "seconds_from_click": {k: round(v, 2) for k, v in times.items()}}, indent=2))


def test_a_feature_card_opens_from_the_attribution_chart(lab_env, tmp_path, monkeypatch):
    """Issue 15: a click on a bar of the attribution top-k chart opens that feature's card (a dialog read from the
    precomputed store, made here beforehand on the tiny model). Screenshot: 12-card-from-attribution-chart.png."""

    from engine.features.card_precompute import precompute_cards
    from engine.features.corpus import card_corpus
    from engine.lm.loading import load_model
    from engine.lm.sae_sources import load_sae
    from tests.app.apphelpers import add_attribution_records, make_flips_run

    monkeypatch.setenv("SAE_LAB_CACHE", str(tmp_path / "cache"))  # the server inherits it
    lm = load_model("tiny", "cpu")
    assert precompute_cards(lm, load_sae("tiny", lm), card_corpus(lm)).status == "done"
    run = make_flips_run(lab_env, "card-run", n=3)
    add_attribution_records(run, n=3)  # feature 7 is in every example's top-k: the top bar
    with b.browsing(lab_env, "tiny", "card-server.log", 1400, 1100) as (server, browser, page):
        page.goto(f"{server.url}/attribution?run=card-run")
        b.settle(page, 180)
        page.get_by_text("Click a bar, a table row").first.wait_for()
        chart = page.locator("[data-testid='stVegaLiteChart']").last
        chart.scroll_into_view_if_needed()
        b.settle(page)
        box = chart.bounding_box()
        assert box is not None
        header = page.get_by_text("Feature 7 ·").filter(has_text="corpus tokens")
        for dy in (0.2, 0.25, 0.3, 0.35):  # the top bar (feature 7), below the title
            page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * dy)
            try:
                header.first.wait_for(timeout=8000)
                break
            except Exception:  # noqa: BLE001 - try the next row of pixels
                continue
        header.first.wait_for(timeout=30000)
        assert page.get_by_role("dialog").count() == 1
        assert page.get_by_text("Sampled across activation quantiles").first.is_visible()
        b.assert_no_exception(page, "card from the attribution chart")
        assert b.shot(page, "12-card-from-attribution-chart").stat().st_size > 0
        assert "feature=7" in page.url


# ------------------------------------------------------------------------------------------------ issue 15 part F
# The playground streaming, two recoveries compared on one chart, presenter replay after a reload (tiny model).
def _streamed_counts(page, deadline: float) -> list[tuple[float, int, int]]:
    """(seconds, base tokens, clamped tokens) read off the page while the playground streams, until it ends."""
    seen, start = [], time.time()
    while time.time() < deadline:
        captions = page.locator("[data-testid='stCaptionContainer']").all_inner_texts()
        counts = [int(m.group(1)) for t in captions for m in [re.match(r"(\d+) tokens", t.strip())] if m]
        if len(counts) >= 2 and (not seen or seen[-1][1:] != (counts[0], counts[1])):
            seen.append((time.time() - start, counts[0], counts[1]))
        if page.get_by_text("playground finished").count():
            return seen
        time.sleep(0.4)  # gently: a tight DOM poll slowed the server's stream ~30× on the loaded 2-core machine
    raise AssertionError(f"the playground did not finish; seen {seen[-5:]}")


def test_playground_streams_token_by_token_in_a_real_browser(lab_env):
    """Type a prompt on 2b · Playground: base and clamped answers grow token by token in two columns, then are judged;
    "add to a new flips run" writes a run with the same texts."""

    model, data = _model(), lab_env
    with b.browsing(data, model, "playground-server.log", 1400, 1300) as (server, browser, page):
        timings = {"model": model}
        page.goto(f"{server.url}/features")
        b.settle(page, 240)
        if model == "tiny":  # the tiny SAE ships no preset: clamp three features by index
            page.get_by_role("tab", name="By index").click()
            b.set_number(page, "Feature indices", "1, 2, 3")
            b.click(page, "Add to the clamp set")
        b.nav(page, "2b · Playground")
        b.assert_no_exception(page, "playground")
        page.get_by_label("Prompt", exact=True).fill("How do I bake bread at home?")
        b.set_number(page, "Max new tokens", 48 if model == "default" else 24)
        t0 = time.time()
        page.get_by_role("button", name="Generate side by side").click()
        page.get_by_text("streaming…").first.wait_for(timeout=120_000)
        timings["first_token_visible_s"] = round(time.time() - t0, 2)
        seen = _streamed_counts(page, time.time() + 600)
        timings["stream_done_s"] = round(time.time() - t0, 2)
        b.settle(page, 120)
        b.assert_no_exception(page, "playground streamed")
        # the page showed partial answers on the way: several counts before the end, growing
        partial = [s for s in seen if s[1] < seen[-1][1] or s[2] < seen[-1][2]]
        assert len(partial) >= 2, seen
        assert [s[1] for s in seen] == sorted(s[1] for s in seen) and [s[2] for s in seen] == sorted(s[2] for s in seen)
        timings["distinct_frames"] = len(seen)
        b.shot(page, "20-playground-streamed")
        page.get_by_text("A new flips run").first.click()
        b.settle(page)
        b.click(page, "Make a new flips run of this prompt")
        page.get_by_text("Started the new flips run").first.wait_for(timeout=60_000)
        b.assert_no_exception(page, "playground add")
        runs = [p for p in (data / "runs").iterdir() if p.name.endswith("-playground")]
        assert len(runs) == 1
        end = time.time() + 600
        while not (runs[0] / "summary.json").is_file() and time.time() < end:  # the server runs the flips job
            time.sleep(0.5)
        (b.ARTIFACTS / "playground-timings.json").write_text(json.dumps(timings, indent=2))
    rows = [json.loads(line) for line in (runs[0] / "flips.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["How do I bake bread at home?"]


def test_comparing_two_recoveries_on_one_chart_in_a_real_browser(lab_env):
    """Runs → Compare: pick two recoveries; one chart, a settings table, the picks in the address; a reload (the
    shareable link) reopens the same view."""

    from engine.store import catalogue
    from tests.app.apphelpers import add_recovery, make_flips_run

    data = lab_env
    run = make_flips_run(data, "cmp-run", n=2)
    add_recovery(run, steps=3, budget=2.0)
    add_recovery(run, steps=5, budget=7.0)
    keys = [f"cmp-run/{r.name}" for r in catalogue.get_run("cmp-run").recoveries]
    with b.browsing(data, "tiny", "compare-server.log", 1400, 1600) as (server, browser, page):
        t0 = time.time()
        page.goto(f"{server.url}/runs")
        b.settle(page, 180)
        b.shot(page, "21-runs-table")
        page.get_by_role("tab", name="Compare").click()
        b.settle(page)
        box = page.get_by_role("combobox", name="Recoveries and sweeps to compare (RUN/RECORD)")
        for key in keys:
            box.click()
            page.get_by_role("option", name=key, exact=True).click()
            b.settle(page)
        page.keyboard.press("Escape")
        b.settle(page)
        b.assert_no_exception(page, "compare")
        url = page.url
        assert "runs_tab=Compare" in url and all(k.split("/")[1] in url for k in keys), url
        charts = page.locator("[data-testid='stVegaLiteChart']")
        assert charts.count() >= 1
        table = page.locator("[data-testid='stTable']").first
        header = table.inner_text()
        assert all(k.replace("/", " · ") in header for k in keys) and "projection" in header
        b.shot(page, "22-compare-two-recoveries")
        # the shareable link: a new tab on the same address opens the same view
        other = browser.new_page(viewport={"width": 1400, "height": 1600})
        other.goto(url)
        b.settle(other, 180)
        assert all(other.get_by_text(k, exact=True).count() for k in keys)  # the picks, as the multiselect's tags
        assert all(k.replace("/", " · ") in other.locator("[data-testid='stTable']").first.inner_text() for k in keys)
        b.assert_no_exception(other, "compare link")
        b.shot(other, "23-compare-from-link")
        print(f"compare flow {time.time() - t0:.1f} s")


def test_presenter_replay_survives_a_reload_in_a_real_browser(lab_env):
    """Presenter mode opens on the newest run with something to replay; Play, reload mid-replay: it goes on from the step
    it had reached (the position is in the address)."""

    from tests.app.apphelpers import add_recovery, make_flips_run

    data = lab_env
    add_recovery(make_flips_run(data, "replay-run", n=2), steps=16)
    time.sleep(0.01)
    make_flips_run(data, "newer-no-recovery", n=2)
    with b.browsing(data, "tiny", "presenter-server.log", 1600, 1200) as (server, browser, page):
        page.goto(f"{server.url}/recovery?presenter=true&run=newer-no-recovery")
        b.settle(page, 180)
        page.get_by_text(re.compile(r"Replay of\s*replay-run")).first.wait_for()
        b.click(page, "Restart")
        page.get_by_role("button", name="Play", exact=True).click()
        page.get_by_text(re.compile(r"step [3-9] of 17")).first.wait_for(timeout=60_000)
        b.shot(page, "24-presenter-mid-replay")
        reached = int(re.search(r"replay_step=(\d+)", page.url).group(1))
        assert 3 <= reached < 17 and "replay_playing=1" in page.url, page.url
        page.reload()
        page.get_by_text(re.compile(r"Replay of\s*replay-run")).first.wait_for(timeout=120_000)
        text = page.locator("[data-testid='stProgress']").first.inner_text()
        after = int(re.search(r"step (\d+) of 17", text).group(1))
        assert after >= reached, (reached, text)
        page.get_by_text("step 17 of 17").first.wait_for(timeout=60_000)  # it played on to the end
        b.settle(page)
        b.assert_no_exception(page, "presenter after reload")
        b.shot(page, "25-presenter-after-reload")
