"""The web page in a real browser: Debian's headless Chromium driven through chromedriver.

A real ``breastdx serve`` subprocess (in-process mode, anonymous access) runs on a free loopback
port over a temporary store holding tiny models for all three stages (``tests.training.
tiny_runs``). The page uploads an image, waits for the analysis and shows the overlay (fetched
as a blob), the lesions and the score; a screenshot of each run goes to the test's tmp dir.
The first tests check the page's assets without a browser.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.problems import install_problem_handlers
from service.web import router as web_router
from tests.conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1100",
)
BUSI_IMAGE = Path("busi", "Dataset_BUSI_with_GT", "malignant", "malignant (1).png")
RESULT_TIMEOUT_S = 90


def _page_app() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(web_router)
    return TestClient(app)


def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    client = _page_app()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "img-src 'self' blob:" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "Not for clinical use" in page.text and "{{version}}" not in page.text
    for src in re.findall(r'(?:src|href)="(/static/[^"?]+)', page.text):
        asset = client.get(src)
        assert asset.status_code == 200 and asset.content, src
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert "http" not in re.sub(r"https?://www\.w3\.org", "", client.get("/static/app.js").text)


@pytest.mark.parametrize("name", ["../__init__.py", "secret.txt", "%2e%2e%2f__init__.py"])
def test_other_static_names_are_problem_documents(name: str) -> None:
    response = _page_app().get(f"/static/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the tiny models of every stage (trained and exported once per session)."""
    pytest.importorskip("torch")
    from tests.training import tiny_runs

    root: Path = tiny_runs.registry(tmp_path_factory).stores[0].root  # type: ignore[attr-defined]
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server_env(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """In process, anonymous access on, API keys in a file of this test module."""
    env = {
        **os.environ,
        "BREASTDX_MODEL_STORE": str(model_store),
        "BREASTDX_ALLOW_ANONYMOUS": "true",
        "BREASTDX_API_KEYS_FILE": str(tmp_path_factory.mktemp("keys") / "api-keys.json"),
    }
    env.pop("BREASTDX_REDIS_URL", None)
    return env


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``breastdx serve`` on a free loopback port."""
    port = _free_port()
    env = server_env
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [sys.executable, "-m", "breastdx.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"breastdx serve did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium with a fresh profile; skipped where Chromium or chromedriver is absent."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            pytest.skip(f"{path} is absent (scripts/system-deps.sh installs chromium)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    logs = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(logs)), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def _analyse(browser: Any, url: str, stage: str, image: Path, reload: bool = True) -> str:
    """Open the page, upload ``image`` for ``stage``; the page's final state (done or error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if reload:
        browser.get(f"{url}/")
    Select(browser.find_element(By.ID, "stage")).select_by_value(stage)
    browser.find_element(By.ID, "file").send_keys(str(image))
    browser.find_element(By.ID, "submit").click()
    body = browser.find_element(By.TAG_NAME, "body")
    WebDriverWait(browser, RESULT_TIMEOUT_S).until(
        lambda _: body.get_attribute("data-state") in {"done", "error"}
    )
    return str(body.get_attribute("data-state"))


def _text(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, element_id).text)


def _check_result_shown(browser: Any, model: str, screenshot: Path) -> None:
    natural = browser.execute_script(
        "const img = document.getElementById('overlay');"
        "return [img.complete, img.naturalWidth, img.naturalHeight, img.src];"
    )
    assert natural[0] and natural[1] > 0 and natural[2] > 0, natural
    assert natural[3].startswith("blob:")  # fetched with the key, shown via an object URL
    assert re.fullmatch(r"\d{1,3}\.\d %", _text(browser, "score"))
    assert _text(browser, "score-label") in {"benign", "malignant", "normal", "idc", "non_idc"}
    assert re.fullmatch(r"\d{1,3}\.\d %", _text(browser, "threshold"))
    assert _text(browser, "model").startswith(f"{model}@")
    assert "Not for clinical use" in _text(browser, "result-disclaimer")
    assert "ms" in _text(browser, "timings")
    assert _text(browser, "lesion-count").startswith("(")
    assert _shown(browser, "result") and not _shown(browser, "error")
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def _shown(browser: Any, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return bool(browser.find_element(By.ID, element_id).is_displayed())


def _error(browser: Any) -> str:
    return f"{_text(browser, 'error-title')}: {_text(browser, 'error-detail')}"


@pytest.mark.integration
def test_browser_analyses_a_generated_ultrasound_image(
    browser: Any, server: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    grey = rng.gamma(2.0, 30.0, (240, 320)).clip(0, 255).astype(np.uint8)
    cv2.ellipse(grey, (160, 120), (50, 30), 0, 0, 360, 15, -1)
    image = tmp_path / "generated-ultrasound.png"
    cv2.imwrite(str(image), grey)
    state = _analyse(browser, server, "ultrasound", image)
    assert state == "done", _error(browser)
    _check_result_shown(browser, "us-tiny", tmp_path / "ultrasound-generated.png")


@pytest.mark.integration
@pytest.mark.realdata
def test_browser_analyses_a_real_busi_image(
    browser: Any, server: str, shared_data: Path, tmp_path: Path
) -> None:
    image = shared_data / BUSI_IMAGE
    if not image.is_file():
        pytest.skip(f"{image} is absent")
    state = _analyse(browser, server, "ultrasound", image)
    assert state == "done", _error(browser)
    _check_result_shown(browser, "us-tiny", tmp_path / "ultrasound-busi.png")


@pytest.mark.integration
def test_browser_shows_the_problem_of_a_refused_image(
    browser: Any, server: str, tmp_path: Path
) -> None:
    grey = np.full((200, 200), 90, np.uint8)  # greyscale: not an H&E tile
    image = tmp_path / "grey.png"
    cv2.imwrite(str(image), grey)
    assert _analyse(browser, server, "histopathology", image) == "error"
    assert _text(browser, "error-title") == "Image does not fit the requested stage"
    assert "histopathology" in _text(browser, "error-detail")
    assert not _shown(browser, "result") and _shown(browser, "error")
    browser.save_screenshot(str(tmp_path / "refused.png"))


def _generated_ultrasound(path: Path) -> Path:
    rng = np.random.default_rng(3)
    cv2.imwrite(str(path), rng.gamma(2.0, 30.0, (200, 260)).clip(0, 255).astype(np.uint8))
    return path


@pytest.mark.integration
def test_browser_sends_the_api_key_it_keeps_for_the_tab(
    browser: Any, server: str, server_env: dict[str, str], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    created = subprocess.run(
        [sys.executable, "-m", "breastdx.cli", "api-keys", "create", "web-e2e"],
        cwd=REPO_ROOT,
        env=server_env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(created.stdout)["key"]
    image = _generated_ultrasound(tmp_path / "us.png")
    try:
        browser.get(f"{server}/")
        browser.find_element(By.ID, "api-key").send_keys("bdx_not_a_key")
        assert _analyse(browser, server, "ultrasound", image, reload=False) == "error"
        assert _text(browser, "error-title") == "Invalid API key"
        stored = browser.execute_script("return sessionStorage.getItem('breastdx.apiKey')")
        assert stored == "bdx_not_a_key"
        field = browser.find_element(By.ID, "api-key")
        field.clear()
        field.send_keys(key)
        assert _analyse(browser, server, "ultrasound", image, reload=False) == "done", _error(
            browser
        )
        _check_result_shown(browser, "us-tiny", tmp_path / "with-key.png")
        browser.refresh()  # the key survives a reload of the tab
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == key
    finally:
        browser.find_element(By.ID, "forget-key").click()
    assert browser.execute_script("return sessionStorage.getItem('breastdx.apiKey')") is None
