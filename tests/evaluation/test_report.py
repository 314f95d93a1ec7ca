"""report.html in a real browser (headless Chromium): every image renders, every number is metrics.json's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import browser_or_skip
from visiontune.evaluation.evaluate import EvalResult

SECTIONS = (
    "Summary",
    "Per class",
    "Confusion matrix",
    "Top losses",
    "Calibration",
    "Out-of-distribution images",
    "Misclassified",
    "Training",
)


@pytest.fixture(scope="module")
def browser(headless_chromium: Any) -> Any:
    """The session's headless Chromium (tests/conftest.py), sized for a report page."""
    headless_chromium.set_window_size(1280, 1000)
    return headless_chromium


@pytest.fixture(scope="module")
def page(browser: Any, evaluated: EvalResult) -> Any:
    browser.get(evaluated.report.resolve().as_uri())
    browser.execute_async_script(  # wait until every image has loaded or failed
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))).then(() => done(null));"
    )
    return browser


def test_every_image_renders_and_is_embedded(page: Any, evaluated: EvalResult) -> None:
    images = page.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
        " width: i.naturalWidth, height: i.naturalHeight, src: i.getAttribute('src').slice(0, 22)}))"
    )
    alts = {image["alt"] for image in images}
    assert {"confusion_matrix", "top_losses", "gradcam", "reliability", "ood_scores", "history"} <= alts
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
        assert image["src"] == "data:image/png;base64,", image  # self-contained: no file or network fetches


def test_page_is_self_contained(evaluated: EvalResult) -> None:
    html = evaluated.report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<link" not in html and "<script" not in html


def test_numbers_shown_equal_metrics_json(page: Any, evaluated: EvalResult) -> None:
    from selenium.webdriver.common.by import By

    metrics = json.loads((evaluated.out_dir / "metrics.json").read_text())
    checked = set()
    for element in page.find_elements(By.CSS_SELECTOR, "span.num[data-key]"):
        path = json.loads(element.get_attribute("data-key"))
        value = _lookup(metrics, path)
        assert json.loads(element.get_attribute("data-value")) == value, path
        text, fmt = element.text.strip(), element.get_attribute("data-format")
        if value is None:  # a number that could not be computed (metrics.json's null)
            assert text == "n/a", (path, text)
        elif fmt == "pct":
            assert text.endswith("%") and float(text[:-1]) / 100 == pytest.approx(value, abs=5.01e-5), (path, text)
        elif fmt == "int":
            assert int(text) == value, (path, text)
        else:
            assert float(text) == pytest.approx(value, abs=5.01e-5), (path, text)
        checked.add(tuple(path))
    required = {("accuracy",), ("balanced_accuracy",), ("error_rate",), ("log_loss",), ("ece_before",), ("ece_after",)}
    required |= {("ood", "auroc"), ("ood", "flagged_ood"), ("ood", "flagged_in"), ("temperature",), ("images",)}
    required |= {("per_class", c, k) for c in metrics["per_class"] for k in ("precision", "recall", "f1", "support")}
    assert required <= checked, required - checked


def test_sections_and_a_screenshot(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    headings = [h.text for h in page.find_elements(By.TAG_NAME, "h2")]
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), (section, headings)
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.set_window_size(1280, height)  # the whole page in one shot
    shot = tmp_path / "report.png"
    assert page.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert image.width >= 1200 and image.height >= 2000
        assert np.asarray(image.convert("L")).std() > 20  # not a blank page


def test_missing_browser_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian packages chromium and chromium-driver"):
        browser_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"chromium and chromium-driver.*\.ci/run installs them"):
        browser_or_skip()


def _lookup(metrics: dict[str, Any], path: list[Any]) -> Any:
    value: Any = metrics
    for key in path:
        value = value[key]
    return value
