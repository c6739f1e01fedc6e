"""Headless Debian Chromium driven by Selenium, against the shared ComfyUI test server."""

import logging
import time
from pathlib import Path

import pytest

from tests.server.conftest import comfy_server  # noqa: F401  (the one session server, shared with tests/server)

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,1000")
PAGE_TIMEOUT_S = 120.0


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll condition() until it returns something truthy; returns that value or fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def visible_popups(page) -> list[str]:
    """Dialogs and toasts (e.g. the frontend's workflow validation alert) currently shown."""
    return page.execute_script("return [...document.querySelectorAll('.p-dialog, .p-toast-message')]"
                               ".filter(d => d.offsetParent !== null).map(d => d.innerText.slice(0, 300))")


def close_dialogs(page) -> None:
    page.execute_script("document.querySelectorAll('.p-dialog .p-dialog-close-button').forEach(b => b.click())")
    wait_until(lambda: not visible_popups(page), 10, "the dialogs to close")


def dismiss_missing_models(page, workflow: dict) -> str | None:
    """A workflow whose loaders name their model files makes ComfyUI show the missing-models dialog on a
    server without them: wait for it, close it and return its text (None for other workflows)."""
    if not any(n.get("properties", {}).get("models") for n in workflow["nodes"]):
        return None
    wait_until(lambda: visible_popups(page), 10, "the missing-models dialog")
    (dialog,) = page.execute_script("return [...document.querySelectorAll('.p-dialog')]"
                                    ".filter(d => d.offsetParent !== null).map(d => d.innerText)")
    close_dialogs(page)
    return dialog


@pytest.fixture(scope="session")
def chrome(tmp_path_factory):
    """A headless Chromium session. Skips when the Debian chromium/chromedriver packages are missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"browser tests need {', '.join(missing)}: run `make setup` as root "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: run tools/setup_env.sh")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chrome_profile')}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs (it would try to download a driver).
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        # Hide the "Introducing Nodes 2.0" banner, which shifts the canvas. Raise the resource-timing buffer
        # (250 entries by default): the frontend fills it before extensions load, hiding their URLs.
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": "localStorage.setItem('vueNodesBannerDismissed','true');"
                                          "performance.setResourceTimingBufferSize(2000);"})
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def comfy_page(chrome, comfy_server):  # noqa: F811  (comfy_server is the imported fixture)
    """The served frontend, loaded until window.app has its graph and canvas."""
    started = time.monotonic()
    chrome.get(comfy_server.base_url + "/")
    wait_until(lambda: chrome.execute_script("return !!(window.app && window.app.graph && window.app.canvas)"),
               PAGE_TIMEOUT_S, "window.app (the ComfyUI frontend) to start")
    logger.info("frontend ready in %.1f s", time.monotonic() - started)
    return chrome


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    """test-output/browser/ in the repository (git-ignored): screenshots kept as artifacts."""
    path = Path(__file__).resolve().parents[2] / "test-output" / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path

