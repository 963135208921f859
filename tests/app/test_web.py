"""The web page in headless Chromium: upload a real image file, see five labels and similar images."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from app.testing import ROOT, image_bytes, make_weights, running_server
from tests.app.conftest import API_KEY
from training.data import open_source

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]
ARTIFACTS = ROOT / "test-artifacts"


def test_upload_shows_top5_and_similar_images(tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    weights = tmp_path / "w10.safetensors"
    make_weights(weights, num_classes=10, familiar_with=96)  # random pixels are unlike the generated shapes it knows
    env = {"ALEXNET_WEIGHTS": str(weights), "ALEXNET_INDEX_DIR": str(tmp_path / "index"), "ALEXNET_API_KEY": API_KEY}
    picture = tmp_path / "picture.png"
    picture.write_bytes(image_bytes(11, size=(120, 90)))
    shape = tmp_path / "shape.png"
    open_source("generated:96", split="train", size=36).pil_image(0).save(shape)
    with running_server(env, log=tmp_path / "server.log") as base:
        for seed in range(6):
            r = httpx.post(
                f"{base}/images",
                files={"file": (f"{seed}.png", image_bytes(seed), "image/png")},
                data={"label": f"class-{seed}"},
                headers={"X-API-Key": API_KEY},
                timeout=30,
            )
            assert r.status_code == 201, r.text
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                    "--disable-quic",
                ],
            )
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                uploads: list[str] = []
                page.on("request", lambda req: uploads.append(req.url) if req.method == "POST" else None)
                page.goto(base + "/")
                # Figure 3: the served weights' first-layer kernels load and decode
                page.wait_for_function("() => { const i = document.getElementById('kernels'); return i.complete && i.naturalWidth > 0; }")
                # a keyboard user: Tab reaches the file input, Enter opens the file chooser
                page.keyboard.press("Tab")
                assert page.evaluate("document.activeElement.id") == "file"
                page.evaluate(  # record whether the busy indicator shows while the model works
                    "window.busySeen = false; const busy = document.getElementById('busy');"
                    "new MutationObserver(() => { if (!busy.hidden) window.busySeen = true; }).observe(busy, { attributes: true })"
                )
                try:
                    with page.expect_file_chooser(timeout=5_000) as chooser:
                        page.keyboard.press("Space")
                except PlaywrightTimeoutError:  # headless Chromium now and then drops the first key's activation
                    with page.expect_file_chooser() as chooser:
                        page.keyboard.press("Space")
                chooser.value.set_files(str(picture))
                page.wait_for_selector("#top5 .bar:nth-child(5)", timeout=30_000)
                page.wait_for_selector("#grid .hit:not(.query)", timeout=30_000)
                labels = page.locator("#top5 .bar").evaluate_all("rows => rows.map(r => r.dataset.label)")
                assert len(labels) == 5 and all(label.startswith("class-") for label in labels)
                # Figure 4: the query first, then its neighbours
                assert page.locator("#grid .hit").first.get_attribute("class") == "hit query"
                assert page.locator("#grid .hit:not(.query)").count() == 6
                assert page.evaluate("window.busySeen") and page.locator("#busy").is_hidden()
                assert [u.split("?")[0].removeprefix(base) for u in uploads] == ["/similar"]  # one upload per picture
                # the stored image loads and decodes (waited for: it is fetched after the grid is drawn)
                page.wait_for_function(
                    "() => { const i = document.querySelector('#grid .hit:not(.query) img');"
                    " return i && i.complete && i.naturalWidth > 0; }",
                    timeout=30_000,
                )
                # the picture is unlike anything the model knows: the page says so beside its labels and its neighbours
                note = page.locator("#unfamiliar")
                assert note.is_visible() and "Unfamiliar picture" in note.inner_text() and "10 classes" in note.inner_text()
                assert page.locator("#unfamiliar-similar").is_visible()
                assert page.locator("#familiarity").inner_text().startswith("Familiarity 0.0")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
                # a picture it knows (one of the shapes its score was fitted on) gets no note
                page.set_input_files("#file", str(shape))
                page.wait_for_function(
                    "() => document.getElementById('familiarity').textContent.startsWith('Familiarity ')"
                    " && !document.getElementById('familiarity').textContent.startsWith('Familiarity 0.0')"
                )
                assert page.locator("#unfamiliar").is_hidden() and page.locator("#unfamiliar-similar").is_hidden()
                # a rejected file shows a clear message
                bad = tmp_path / "notes.jpg"
                bad.write_text("just text")
                page.set_input_files("#file", str(bad))
                page.wait_for_selector("#error:not([hidden])", timeout=30_000)
                assert "HTTP 415" in page.locator("#error").inner_text()
            finally:
                browser.close()
