"""`pipeline serve` in a real browser: the app under uvicorn on a free port, Debian's chromium driven by Playwright
through worklist -> viewer -> heatmap -> threshold -> verdict -> CSV export. Skips without chromium or
playwright (fails under CI: tests/ci.py)."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import csv
import shutil
from pathlib import Path

import pytest
from ci import unavailable
from live_server import serving
from test_serve import KNOWN, served, write_probable  # noqa: F401  (the module fixture: run folder, models, app)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTES_SCREENSHOT = Path("/work/notes/serve-screenshot.png")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("no chromium installed (apt-get install chromium) to drive the review workstation",
                    "scripts/system-deps.sh")
    return path


@pytest.fixture()
def live_server(served):  # noqa: F811
    client, run, models, cfg, _ = served
    from pipeline.serve.app import create_app

    with serving(create_app([run], models, cfg, models.threshold)) as base:
        yield base, run, models.threshold


def browser_page(p, errors):
    """A headless Debian chromium page that records page errors (skips without chromium or playwright)."""
    browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 860}, accept_downloads=True)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return browser, page


def slide(page, selector, value):  # what dragging a range input does: set the value, fire 'input'
    page.eval_on_selector(selector, "(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", value)


@pytest.mark.slow
def test_review_in_a_real_browser(live_server, tmp_path):
    try:
        from playwright import sync_api as playwright
    except ImportError:
        unavailable("the playwright package is not installed (requirements-test.txt)")
    chromium()
    base, run, live_threshold = live_server
    errors = []
    with playwright.sync_playwright() as p:
        browser, page = browser_page(p, errors)
        page.goto(base + "/")
        # these models have no calibration map: the slider runs on the score, the shipped threshold at its middle
        # (at the scale's end when the tiny models' trained threshold lies within 1e-6 of 0 or 1: it varies from
        # machine to machine, and test_serve checks both cases of the scale itself)
        from pipeline.serve.scale import _EDGE, to_position

        assert page.inner_text("#oof") == "no out-of-fold curve for these models"
        scale = page.evaluate("window.mammoScale")
        pin = to_position(scale, scale["shipped_value"])
        assert scale["kind"] == "score" and scale["shipped_value"] == pytest.approx(live_threshold, abs=1e-12)
        assert pin == pytest.approx(0.5) or not _EDGE < live_threshold < 1 - _EDGE
        assert page.get_attribute("#shipped-pin", "style") == f"left: {100 * pin:.4f}%"
        rows = page.locator("#worklist tbody tr")
        assert rows.count() >= 4 and "of" in page.inner_text("#count")
        # filters and keyboard: 'not reviewed' keeps our image; j moves the cursor
        page.select_option("#f-reviewed", "no")
        page.keyboard.press("j")
        assert page.locator("tr.current").count() == 1
        page.click(f"a[href='/view/0/{KNOWN}']")

        page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=60_000)
        page.wait_for_selector("body[data-heatmap='1']", state="attached", timeout=60_000)
        assert page.locator(".box").count() == 2
        # heatmap off and on again
        page.uncheck("#show-heatmap")
        assert page.evaluate("heatItem.getOpacity()") == 0
        page.check("#show-heatmap")
        assert page.evaluate("heatItem.getOpacity()") > 0
        # the threshold below, then above the image's score (0.8), at the slider positions the page's scale gives
        low, high = (to_position(page.evaluate("window.mammoScale"), v) for v in (0.45, 0.95))
        slide(page, "#threshold", low)
        assert page.inner_text("#decision") == "malignant" and page.locator(".box.pos").count() == 2
        slide(page, "#threshold", high)
        assert page.inner_text("#decision") == "not malignant"
        assert page.locator(".box.pos").count() == 0
        # window/level: new tiles load
        slide(page, "#win-width", 0.5)
        page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=60_000)
        # a verdict on box 1 and on the image
        page.fill("#reader", "Dr Browser")
        page.dispatch_event("#reader", "change")
        page.check("input[name='lesion-0'][value='true lesion']")
        page.check("input[name='pathology-0'][value='malignant']")
        page.check("input[name='agreement'][value='disagree']")
        page.fill("#comment", "threshold too low for this one")
        page.click("#save")
        page.wait_for_selector("#save-status[data-saved='1']", state="attached", timeout=10_000)
        screenshot = tmp_path / "serve-viewer.png"
        page.screenshot(path=str(screenshot))
        if NOTES_SCREENSHOT.parent.is_dir():
            shutil.copyfile(screenshot, NOTES_SCREENSHOT)

        # back to the worklist: the threshold carried over, the image is reviewed, the CSV has the verdict
        page.click("#back")
        assert float(page.input_value("#threshold")) == pytest.approx(high)
        row = page.locator(f"tr[data-id='{KNOWN}']")
        assert row.get_attribute("data-reviewed") == "yes" and row.locator(".decision").inner_text() == "not malignant"
        with page.expect_download() as download:
            page.click("a.export")
        path = tmp_path / "verdicts.csv"
        download.value.save_as(path)
        browser.close()
    assert not errors, errors
    rows = list(csv.DictReader(open(path)))
    box = next(r for r in rows if r["reader"] == "Dr Browser" and r["box"] == "1")
    assert (box["image_id"], box["lesion"], box["pathology"]) == (KNOWN, "true lesion", "malignant")
    image = next(r for r in rows if r["reader"] == "Dr Browser" and r["box"] == "")
    assert (image["agreement"], image["comment"]) == ("disagree", "threshold too low for this one")


@pytest.mark.slow
def test_slider_on_the_probability_shows_the_out_of_fold_curve(tmp_path):
    """Results with a probability and the curve infer wrote beside them: the slider runs on P(malignant), the
    shipped point stays marked, the header reads the curve's sensitivity and specificity at the slider's
    position and changes as it moves; the box that scores the image is solid, the other finding dashed."""
    try:
        from playwright import sync_api as playwright
    except ImportError:
        unavailable("the playwright package is not installed (requirements-test.txt)")
    import numpy as np

    from pipeline.operating_point import operating_curve
    from pipeline.serve.app import create_app

    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    curve = operating_curve(y, np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1))
    write_probable(run, curve)
    errors = []
    with serving(create_app([run])) as base, playwright.sync_playwright() as p:
        browser, page = browser_page(p, errors)
        page.goto(base + "/view/0/prob_a")
        page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=60_000)

        def reads(i):  # the header's words for the curve's i-th threshold
            return (f"out of fold at {curve['probability'][i]:.2f}: sensitivity {curve['sensitivity'][i]:.2f}, "
                    f"specificity {curve['specificity'][i]:.2f}")
        assert page.get_attribute("#shipped-pin", "style") == "left: 12.0000%"  # the shipped point, marked
        assert page.get_attribute("#shipped-mark option", "value") == "0.120000"
        assert page.inner_text("#oof") == reads(12) and "P \u2265 0.120" in page.inner_text("#threshold-value")
        assert page.inner_text("#decision") == "malignant"  # P 0.41 >= 0.12
        slide(page, "#threshold", 0.6)
        assert page.inner_text("#oof") == reads(60) != reads(12)
        assert page.inner_text("#decision") == "not malignant"
        assert page.locator(".box.pos").count() == 0
        slide(page, "#threshold", 0.3)
        assert page.inner_text("#oof") == reads(30) and page.inner_text("#decision") == "malignant"
        assert page.locator(".box.scoring.pos").count() == 1  # red: it scores an image called malignant
        style = "e => getComputedStyle(e).borderTopStyle"
        assert page.eval_on_selector(".box.scoring", style) == "solid"
        assert page.eval_on_selector(".box.finding-only", style) == "dashed"
        assert "scores the image" in page.inner_text("#summary") and "other finding" in page.inner_text("#summary")
        assert "P(malignant) 0.30" in page.inner_text("#box-0")
        screenshot = tmp_path / "serve-probability.png"
        page.screenshot(path=str(screenshot))
        if NOTES_SCREENSHOT.parent.is_dir():
            shutil.copyfile(screenshot, NOTES_SCREENSHOT.with_name("serve-probability-slider.png"))
        page.click("#threshold-reset")
        assert page.inner_text("#oof") == reads(12)
        # the worklist shares the position and calls each image on its probability
        page.goto(base + "/")
        assert page.input_value("#threshold") == "0.12"
        calls = {r: page.locator(f"tr[data-id='{r}'] .decision").inner_text() for r in ("prob_a", "prob_b")}
        assert calls == {"prob_a": "malignant", "prob_b": "not malignant"}
        browser.close()
    assert not errors, errors
