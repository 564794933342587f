"""Driving a real `streamlit run dashboard.py` with Debian's headless Chromium (Playwright), for the browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SAE_LAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

IDLE_JS = """() => { const a = document.querySelector('[data-testid=stApp]');
  return !!a && a.getAttribute('data-test-script-state') === 'notRunning'
    && a.getAttribute('data-test-connection-state') === 'CONNECTED' && !document.querySelector('[data-testid=stSkeleton]') }"""


def chromium_available() -> bool:
    if not Path(CHROMIUM).is_file():
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run dashboard.py`` on 127.0.0.1:port as a child process (its own process group)."""

    def __init__(self, data: Path, model: str, port: int | None = None, log: Path | None = None):
        self.data, self.model, self.port = data, model, port or free_port()
        self.log = log or (ARTIFACTS / f"server-{self.port}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> Server:
        env = dict(os.environ, SAE_LAB_DATA=str(self.data), SAE_LAB_UI_MODEL=self.model, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"streamlit did not come up in {timeout} s; see {self.log}")

    def kill9(self) -> None:
        """SIGKILL the server (no clean shutdown: what a crash or the OOM killer does)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def browsing(data: Path, model: str, log_name: str, width: int = 1400, height: int = 1100):
    """A dashboard server on ``data`` with ``model``, a Chromium and one page of that size: ``(server, browser, page)``.
    The browser is closed and the server stopped whatever happens (its log: ``ARTIFACTS/log_name``)."""
    from playwright.sync_api import sync_playwright

    server = Server(data, model, log=ARTIFACTS / log_name).start()
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            try:
                yield server, browser, browser.new_page(viewport={"width": width, "height": height})
            finally:
                browser.close()
    finally:
        server.stop()


def settle(page, timeout: float = 120, interval: float = 0.3, checks: int = 3) -> None:
    """Wait until the script has finished and nothing is stale (``checks`` quiet polls in a row)."""
    end, quiet = time.time() + timeout, 0
    while time.time() < end:
        quiet = quiet + 1 if page.evaluate(IDLE_JS) else 0
        if quiet >= checks:
            return
        time.sleep(interval)
    raise AssertionError(f"the page did not settle within {timeout} s")


def assert_no_exception(page, where: str) -> None:
    n = page.locator("[data-testid='stException']").count()
    if n:
        text = page.locator("[data-testid='stException']").first.inner_text()
        raise AssertionError(f"{where}: {n} exception element(s) on the page: {text[:800]}")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def click(page, name: str, timeout: float = 120) -> None:
    page.get_by_role("button", name=name).first.click()
    settle(page, timeout)


def nav(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    settle(page)


def choose(page, select_label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``select_label``."""
    page.get_by_role("combobox", name=select_label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).first.click()
    settle(page)


def seed_valid_run(data: Path, source: str, name: str = "seeded-valid") -> str:
    """A copy of run ``source`` whose flips are all marked valid (used when a small flips run found none)."""
    src, dst = data / "runs" / source, data / "runs" / name
    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (dst / "flips.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r.update(valid=True, clamped_refusal=True, clamped_text=r["clamped_text"] or "I'm sorry, but I can't help with that.")
    (dst / "flips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((dst / "summary.json").read_text())
    summary.update(n_valid=len(rows))
    config = json.loads((dst / "config.json").read_text())
    config["created"] = time.time() + 1
    (dst / "summary.json").write_text(json.dumps(summary))
    (dst / "config.json").write_text(json.dumps(config))
    return name
