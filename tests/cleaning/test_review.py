"""The review page in headless Chromium: decisions by keyboard, written as made; a reload resumes where it stopped."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from visiontune.cleaning import CleanResult
from visiontune.cleaning.review import Review, create_review_app
from visiontune.data import corrections as corr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def review_server(cleaned: CleanResult, tmp_path: Path) -> Iterator[tuple[str, Review]]:
    """The review app of `cleaned` under uvicorn on a free loopback port (a thread), corrections in tmp_path."""
    import uvicorn

    review = Review.of(cleaned, tmp_path / "corrections.csv")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_review_app(review), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", review
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_for(browser: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda b: text in b.find_element(By.ID, "progress").text)


def _press(browser: Any, key: str, then: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(key).perform()
    _wait_for(browser, then)


def test_keyboard_decisions_are_written_as_made_and_a_reload_resumes(
    review_server: tuple[str, Review], headless_chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    url, review = review_server
    suspects = review.suspects
    assert len(suspects) >= 4
    browser = headless_chromium
    browser.get(url + "/")
    _wait_for(browser, f"suspect 1 of {len(suspects)}")
    assert browser.find_element(By.ID, "given").text == suspects[0].given.replace("_", " ")
    assert browser.execute_script("return document.getElementById('image').naturalWidth") > 0
    other = next(c for c in review.classes if c not in (suspects[1].given, suspects[1].suggested))
    _press(browser, "a", "1 decided")  # relabel #1 to its suggestion
    _press(browser, str(review.classes.index(other) + 1), "2 decided")  # relabel #2 to a class by its number
    _press(browser, "x", "3 decided")  # exclude #3
    browser.refresh()  # reopening continues at the first undecided suspect
    _wait_for(browser, f"suspect 4 of {len(suspects)} · 3 decided")
    _press(browser, "k", "4 decided")  # keep #4
    rows = corr.read_corrections(review.corrections)
    expected = [("relabel", suspects[0].suggested), ("relabel", other), ("exclude", ""), ("keep", "")]
    assert [(r.action, r.label) for r in rows] == expected  # exactly the decisions made, in order
    assert [r.path for r in rows] == [review.relative[s.path] for s in suspects[:4]]
    assert all(r.by == "review" and r.when for r in rows)
    assert rows[0].given == suspects[0].given


def test_the_api_refuses_nonsense_and_other_sites(review_server: tuple[str, Review]) -> None:
    url, review = review_server
    assert httpx.post(url + "/api/decide", json={"id": 0, "action": "relabel", "label": "cat"}).status_code == 422
    assert httpx.post(url + "/api/decide", json={"id": 999, "action": "keep"}).status_code == 422
    assert httpx.get(url + "/api/image/999").status_code == 404
    evil = {"Origin": "https://evil.example"}
    assert httpx.post(url + "/api/decide", json={"id": 0, "action": "keep"}, headers=evil).status_code == 403
    assert not review.corrections.exists()  # nothing was written
    answer = httpx.post(url + "/api/decide", json={"id": 1, "action": "no_class"})
    assert answer.status_code == 200 and answer.json()["decision"] == {"action": "no_class", "label": ""}
    assert [(r.path, r.action) for r in corr.read_corrections(review.corrections)] == [
        (review.relative[review.suspects[1].path], "no_class")
    ]
