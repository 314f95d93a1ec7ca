"""The web page in headless Chromium, served by a real `visiontune serve` process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from visiontune.predict import Predictor

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`visiontune serve RUN --port N` in a subprocess; its base URL once /health answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("VISIONTUNE_API_KEY", None)
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "visiontune", "serve", str(finetuned_run), "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"visiontune serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"visiontune serve did not answer within {START_TIMEOUT:.0f} s:\n{log.read_text()}")


def _open(browser: Any, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda b: "classes" in b.find_element(By.ID, "model-line").text)


def _upload(browser: Any, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "file-input").send_keys(str(path))
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.ID, "top-label").is_displayed() or b.find_element(By.ID, "error").is_displayed()
    )


def test_upload_shows_the_top_class_as_bars(
    server: str, headless_chromium: Any, served_predictor: Predictor, test_images: list[Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser = headless_chromium
    image = test_images[len(test_images) // 2]
    expected = served_predictor.predict([image], topk=3)[0]
    _open(browser, server)
    _upload(browser, image)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "top-label").text.lower() == expected.label.replace("_", " ")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.find_element(By.CLASS_NAME, "bar-label").text.lower() for b in bars] == [
        p["label"].replace("_", " ") for p in expected.predictions
    ]
    widths = [b.find_element(By.CLASS_NAME, "bar-fill").size["width"] for b in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    assert browser.find_element(By.ID, "unknown").is_displayed() == expected.unknown
    assert expected.prediction_set is not None  # a bundle trained now has conformal sets: the page shows them
    shown_set = browser.find_element(By.ID, "set")
    assert shown_set.is_displayed()
    assert all(label.replace("_", " ") in shown_set.text.lower() for label in expected.prediction_set)
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") > 0  # the photo shows
    origins = browser.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {server}  # every asset from the app itself: no CDN
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as picture:
        assert np.asarray(picture.convert("L")).std() > 15  # a drawn page, not a blank one


def test_unknown_is_stated_plainly_and_bad_files_say_why(server: str, headless_chromium: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = headless_chromium
    _open(browser, server)
    guess = [{"label": "sneaker", "probability": 0.41}, {"label": "trouser", "probability": 0.33}]
    unsure = {"path": "x.png", "predictions": guess, "unknown": True, "error": None}
    browser.execute_script("render(arguments[0])", unsure)  # the page's own renderer, on an answer flagged unknown
    assert browser.find_element(By.ID, "unknown").is_displayed()
    assert "Unknown" in browser.find_element(By.ID, "unknown").text
    browser.execute_script("render(arguments[0])", {**unsure, "prediction_set": ["sneaker", "trouser"]})
    assert (
        "Ambiguous" in browser.find_element(By.ID, "set").text and "trouser" in browser.find_element(By.ID, "set").text
    )
    browser.execute_script("render(arguments[0])", {**unsure, "prediction_set": None})  # an older bundle: no set
    assert not browser.find_element(By.ID, "set").is_displayed()
    fake = tmp_path / "holiday.jpg"
    fake.write_text("<!DOCTYPE html><html><body>not a photo</body></html>")
    _upload(browser, fake)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "holiday.jpg" in error.text and "HTML" in error.text
