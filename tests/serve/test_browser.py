"""The review page end to end in headless Chromium (Debian's `chromium` + Playwright's Python client).

Install: `apt-get install -y chromium` (`make test` does it as root) and `pip install playwright` (no
`playwright install`: the system browser is used). Skipped with the reason when either is missing, except under
CI (`CI=true`), where a missing piece is a failure: CI must test the review page.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest
from PIL import Image

from sonodistill.serve.app import make_server
from sonodistill.serve.loading import load_model

from .conftest import CLASSES, analyse_on_review_page, ellipse_runner, serving, synthetic_frames, write_dicom

SCREENSHOTS = Path(__file__).resolve().parents[2] / "runs" / "screenshots"
SCREENSHOT = SCREENSHOTS / "serve.png"

pytestmark = pytest.mark.slow


def _skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under CI (CI=true) fail instead, so the review page is never silently untested."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the browser test cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        _skip_or_fail("Debian's chromium is not installed (apt-get install -y chromium, or `make browser` as root)")
    try:
        from playwright import sync_api
    except ImportError:
        _skip_or_fail("playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_review_page_in_chromium(browser, tiny_run, video_file, tmp_path):
    srv = make_server(load_model(tiny_run), "127.0.0.1", 0, tmp_root=tmp_path)
    with serving(srv) as address:
        page, errors = analyse_on_review_page(browser, address, "classes:", video_file)
        assert page.inner_text("#prediction-class") in CLASSES
        assert page.locator("#probabilities tr").count() == len(CLASSES)
        assert page.locator("#plot svg polyline").count() == len(CLASSES) and page.locator("#plot-block").is_visible()
        src = page.get_attribute("#overlay img", "src")
        assert src.startswith("data:image/gif;base64,")
        assert page.locator("#overlay img").evaluate("img => img.naturalWidth") == 64  # the GIF decoded
        assert "Grad-CAM" in page.inner_text("#heatmap-note")
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "serve.png", SCREENSHOT)
        # a refused type is reported on the page, not by a crash
        bad = tmp_path / "notes.txt"
        bad.write_text("not a clip")
        page.set_input_files("#file", str(bad))
        page.click("#analyse")
        page.wait_for_selector("#status:has-text('Unsupported file type')")  # after the file's first bytes are read
        # a DICOM named as scanner exports name them (no suffix) is recognised by its preamble and analysed
        dicom = write_dicom(tmp_path / "IM0001", synthetic_frames(10))
        page.set_input_files("#file", str(dicom))
        page.click("#analyse")
        page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
        assert json.loads(page.text_content("#raw"))["input"] == "upload.dcm"
        assert not page.locator("#input-warning").is_visible()  # 10 frames fill the 8-frame clips
        # a still image into this video model: analysed, with the warning in sight
        still = tmp_path / "still.png"
        Image.fromarray(synthetic_frames(1)[0]).save(still)
        page.set_input_files("#file", str(still))
        page.click("#analyse")
        page.wait_for_selector("#input-warning:has-text('a still image (one frame)')", timeout=60_000)
        assert page.locator("#input-warning").is_visible()
        assert errors == []
        assert [p for p in tmp_path.iterdir() if p.name.startswith("sonodistill-upload-")] == []


def test_segmentation_on_the_review_page(browser, seg_run, tmp_path):
    """A head-circumference model: the mask drawn over the image, the HC and areas in mm from the pixel size typed
    on the page, and without it the reason there is no HC."""
    from sonodistill.data.manifest import Manifest

    image = Path(Manifest.from_csv(seg_run / "manifest.csv").paths[0])  # 48 x 48 PNG
    model = dataclasses.replace(load_model(seg_run), runner=ellipse_runner())
    srv = make_server(model, "127.0.0.1", 0, tmp_root=tmp_path)
    with serving(srv) as address:
        page, errors = analyse_on_review_page(browser, address, "classes: background, foreground", image,
                                              pixel_size="0.5")
        result = json.loads(page.text_content("#raw"))  # inside a closed <details>: not rendered text
        hc = result["masks"][0]["head_circumference_mm"]
        assert page.inner_text("#prediction-class") == f"Head circumference {hc:.1f} mm"
        assert "Pixel size 0.5000 x 0.5000 mm (as entered)." in page.inner_text("#segmentation-summary")
        rows = page.locator("#segmentation tbody tr")
        assert rows.count() == 1
        cells = rows.first.locator("td").all_inner_texts()
        area = result["masks"][0]["area_mm2"]["foreground"]
        assert cells[:3] == ["0", f"{area:.1f} mm² ({100 * result['masks'][0]['area_fraction']['foreground']:.1f} %)",
                             f"{hc:.1f} mm"]
        assert page.locator("#overlay img").evaluate("img => img.naturalWidth") == 48  # the original image
        assert "magenta" in page.inner_text("#heatmap-note")
        assert page.locator("#plot-block").is_hidden()  # no per-frame class scores to plot
        page.screenshot(path=str(tmp_path / "serve-segmentation.png"), full_page=True)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "serve-segmentation.png", SCREENSHOTS / "serve-segmentation.png")
        page.fill("#pixel-size", "")  # a PNG says no pixel size: the page says why there is no HC
        page.set_input_files("#file", str(image))
        page.click("#analyse")
        page.wait_for_selector("#segmentation-summary:has-text('Pixel size unknown')", timeout=60_000)
        assert "No head circumference: the pixel size is unknown" in page.inner_text("#segmentation-summary")
        assert page.inner_text("#prediction-class") == "Masks of 1 frame(s): foreground"
        assert page.locator("#segmentation tbody tr td").all_inner_texts()[1].endswith(" %")
        assert errors == []
