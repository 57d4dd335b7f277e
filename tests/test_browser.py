"""The web page in a real browser: Debian's headless Chromium driven by Playwright against a live
uvicorn server on a free port. Upload a synthetic image, type "the red star", wait for the
overlay, check that the drawn box and point are the JSON's, switch phrases, download the JSON.
The screenshot is kept in tests/artifacts/ (ignored by git).

Skipped, with the reason in the summary, where the browser or Playwright is missing
(`.ci/run` installs Debian's chromium when it can)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PHRASEGROUND_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytest.importorskip("fastapi", reason="serve needs the [web] extra (fastapi)")
uvicorn = pytest.importorskip("uvicorn", reason="serve needs the [web] extra (uvicorn)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(model_checkpoints):
    from conftest import live_server

    from phraseground.app.serve import ModelSlot, create_app
    from phraseground.predict import Grounder

    g = Grounder.from_checkpoint(model_checkpoints["mlmcs"], device="cpu")
    with live_server(create_app([ModelSlot("mlmcs", lambda: g, "tiny test checkpoint")])) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def _close(a, b, tol=1.5):
    return abs(a - b) <= tol


def test_page_grounds_the_red_star(server, browser, tiny_bench, tmp_path):
    image = tiny_bench / "images" / "000025.jpg"  # a synthetic scene, 128 x 128
    page = browser.new_page(viewport={"width": 1280, "height": 820}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.set_input_files("#file", str(image))
    page.fill("#phrases", "the red star\n[a small blue square] to the left of [a circle]")
    with page.expect_response("**/ground") as resp:
        page.click("#go")
    record = resp.value.json()
    assert resp.value.status == 200, record
    assert [p["label"] for p in record["predictions"]] == ["the red star", "a small blue square", "a circle"]
    page.wait_for_selector("body[data-shown='0']")
    page.wait_for_function("(() => { const h = document.getElementById('heat');"
                           " return !h.hidden && h.complete && h.naturalWidth > 0; })()")

    def check_marks(pred):
        photo = page.locator("#photo").bounding_box()
        sx, sy = photo["width"] / record["width"], photo["height"] / record["height"]
        assert sx >= 2 and _close(sx, sy, 0.01)  # the 128 px image is upscaled for display
        heat = page.locator("#heat").bounding_box()
        assert all(_close(heat[k], photo[k]) for k in ("x", "y", "width", "height")), (heat, photo)
        box = page.evaluate("""() => {  // the rectangle's geometry on screen (without its stroke)
            const r = document.getElementById('pred-box'), b = r.getBBox(), m = r.getScreenCTM();
            return {x: m.a * b.x + m.e, y: m.d * b.y + m.f, width: m.a * b.width, height: m.d * b.height}; }""")
        b = pred["box"]
        assert _close(box["x"], photo["x"] + b["xmin"] * sx) and _close(box["y"], photo["y"] + b["ymin"] * sy)
        assert _close(box["width"], (b["xmax"] - b["xmin"]) * sx) and _close(box["height"], (b["ymax"] - b["ymin"]) * sy)
        dot = page.locator("#pred-point").bounding_box()
        p = pred["point"]
        assert _close(dot["x"] + dot["width"] / 2, photo["x"] + p["x"] * sx)
        assert _close(dot["y"] + dot["height"] / 2, photo["y"] + p["y"] * sy)
        assert page.locator("#heat").get_attribute("src") == pred["overlay"]

    check_marks(record["predictions"][0])
    assert page.locator("#phrase-list button.active").inner_text().startswith("the red star")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    page.click("#phrase-list button[data-index='2']")  # switch phrases
    page.wait_for_selector("body[data-shown='2']")
    check_marks(record["predictions"][2])
    assert page.locator("#details").inner_text().count("a circle") == 1

    with page.expect_download() as dl:
        page.click("#download")
    saved = tmp_path / "grounding.json"
    dl.value.save_as(saved)
    assert json.loads(saved.read_text()) == record
    assert not errors, errors


def test_page_shows_a_clear_error(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image\n")
    page = browser.new_page()
    page.goto(server + "/")
    page.set_input_files("#file", str(bad))
    page.fill("#phrases", "the red star")
    page.click("#go")
    page.wait_for_selector("#status.error")
    assert "415" in page.inner_text("#status") and "not an image" in page.inner_text("#status")
