"""OHIF in a real headless Chromium, on MONAI Label's ``/ohif/``, over the Orthanc PACS of ``pacs_loop``.

The browser is Debian's Chromium driven by playwright (no browser download), WebGL through SwiftShader, and every
request that does not go to 127.0.0.1 is refused (OHIF asks Google for a web font). The test does what a user does:
the study list from Orthanc; the MR study opened in OHIF's MONAI Label mode until its images render; the server
connected in the MONAI Label panel and kvmonai's auto-segmentation run from it, until its overlay shows; then the
SEG that MONAI Label stored in the PACS opened in OHIF's Segmentation mode, with the segment names in its panel and
the organ colours on the image. ``KVMONAI_OHIF_SHOT_DIR`` keeps the screenshots (docs/measured/ holds one).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: screen size of the browser page
VIEW = {"width": 1400, "height": 900}
#: page region of the viewports (between the study browser on the left and the panel on the right)
VIEWPORTS = (slice(60, 880), slice(290, 1110))


def _chromium() -> str | None:
    return os.environ.get("KVMONAI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page(pacs_loop: Any, require_or_skip) -> Iterator[Any]:
    """A headless Chromium page that may reach 127.0.0.1 only; the browser is closed in the end."""
    chromium = _chromium()
    require_or_skip(chromium is not None, "Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_or_skip(False, "playwright is not installed (the 'test' extra has it)")
    args = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            context = browser.new_context(viewport=VIEW)
            context.route(lambda url: not url.startswith("http://127.0.0.1"), lambda route: route.abort())
            pg = context.new_page()
            pg.console_lines = []
            pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"[:300]))
            pg.on("pageerror", lambda e: pg.console_lines.append(f"page error: {e}"[:300]))
            pg.on("response", lambda r: "/infer/" in r.url and pg.console_lines.append(f"response {r.status} {r.url}"))
            yield pg
        finally:
            browser.close()


def _shot_dir(tmp: Path) -> Path:
    out = Path(os.environ.get("KVMONAI_OHIF_SHOT_DIR") or tmp)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pixels(page: Any, path: Path | None = None) -> np.ndarray:
    from PIL import Image

    png = page.screenshot(path=str(path) if path else None)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _grey_image_pixels(rgb: np.ndarray) -> int:
    """Pixels of a rendered grey image in the viewports: grey (no hue) and not dark."""
    v = rgb[VIEWPORTS]
    return int(((v.max(-1) - v.min(-1) < 12) & (v.mean(-1) > 40)).sum())


def _overlay_pixels(before: np.ndarray, after: np.ndarray) -> int:
    """Viewport pixels of the grey image that have taken a colour (a segmentation overlay drawn over them)."""
    b, a = before[VIEWPORTS], after[VIEWPORTS]
    grey = (b.max(-1) - b.min(-1) < 12) & (b.mean(-1) > 40)
    return int((grey & (a.max(-1) - a.min(-1) > 40)).sum())


def _wait(page: Any, condition: Callable[[], Any], what: str, timeout: float = 90.0, poll: float = 1.0) -> Any:
    """``condition()`` once it is true; on timeout an error with the browser console's last lines.

    It waits with the page's own timer: playwright's synchronous API handles the browser's events (console lines,
    responses) only while it is called, not during a ``time.sleep``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            console = "\n".join(page.console_lines[-20:])
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{console}")
        page.wait_for_timeout(poll * 1000)


def _open_study(page: Any, url: str, case: str, mode: str) -> None:
    """From OHIF's study list, open the study of patient ``case`` in ``mode``, and wait for its images."""
    page.goto(f"{url}/ohif/", wait_until="networkidle", timeout=90000)
    banner = page.get_by_text("Confirm and Hide")
    if banner.count():
        banner.click()
    page.get_by_text(case, exact=True).first.click()
    page.get_by_text(mode, exact=True).click()
    _wait(page, lambda: _grey_image_pixels(_pixels(page)) > 20000, f"the images of {case} to render in {mode} mode")


def test_ohif_lists_the_pacs_studies_and_shows_the_auto_segmentation(pacs_loop: Any, page: Any, tmp_path: Path):
    url = pacs_loop.server.url
    page.goto(f"{url}/ohif/", wait_until="networkidle", timeout=90000)
    for study in pacs_loop.studies:  # the study list, from Orthanc through MONAI Label's DICOMweb proxy
        _wait(page, lambda s=study: page.get_by_text(s.case, exact=True).count() > 0, f"{study.case} in the study list")
    study = pacs_loop.studies[1]  # the axial one
    _open_study(page, url, study.case, "MONAI Label")
    page.wait_for_timeout(2000)  # let progressive loading finish, so that only the overlay changes the image
    before = _pixels(page)

    page.fill("#monailabelServerURL", f"{url}/")
    page.click(".monaiLabelPanel button.actionButton")  # connect
    _wait(page, lambda: page.locator(".monaiLabelPanel").get_by_text("Auto-Segmentation").count() > 0, "the panel")
    models = page.locator(".monaiLabelPanel select:has(option[value='setr_kv'])").first  # Auto-Segmentation's
    assert models.input_value() == "setr_kv"
    models.locator("xpath=ancestor::tr[1]").get_by_role("button", name="Run").click()
    _wait(
        page,
        lambda: any("updated the segmentation's scalar data" in line for line in page.console_lines),
        "the panel to apply kvmonai's segmentation",
        timeout=120,
    )
    page.wait_for_timeout(2000)
    after = _pixels(page, tmp_path / "ohif_monailabel_autoseg.png")
    assert _overlay_pixels(before, after) > 300, "no segmentation overlay on the images"


def test_the_stored_seg_opens_in_ohif_with_its_segments(pacs_loop: Any, page: Any, submit_truth, tmp_path: Path):
    from kvmonai.portable.dicom_seg import SEGMENT_COLOURS

    study = pacs_loop.studies[1]
    label = submit_truth(study)  # the ground truth, as a corrected label a user submits
    _open_study(page, pacs_loop.server.url, study.case, "Segmentation")
    before = _pixels(page)
    page.get_by_text("SEG", exact=True).first.dblclick()  # the SEG series in the study browser
    load = page.get_by_text("LOAD", exact=True)
    _wait(page, lambda: load.count() > 0 or page.get_by_text("Yes", exact=True).count() > 0, "OHIF to offer the SEG")
    if load.count():
        load.first.click()
    yes = page.get_by_text("Yes", exact=True)
    _wait(page, lambda: yes.count() > 0 or page.get_by_text("Stomach", exact=True).count() > 0, "the SEG prompt")
    if yes.count():
        yes.first.click()
    names = ("Large bowel", "Small bowel", "Stomach")
    for name in names:  # OHIF's Segmentations panel lists the SEG's segments by their labels
        _wait(page, lambda n=name: page.get_by_text(n, exact=True).count() > 0, f"segment {name!r} in the panel")
    page.get_by_text("Stomach", exact=True).first.click()  # OHIF jumps to the slice through the segment's centre
    page.wait_for_timeout(2000)
    rgb = _pixels(page)
    page.screenshot(path=str(_shot_dir(tmp_path) / "ohif_seg_from_pacs.png"))
    # the overlay blends each organ's recommended colour into the grey image: the stomach's magenta raises red
    # and blue over green where it lies; the slice through its centre holds some of it
    delta = (rgb - before)[VIEWPORTS]
    r, g, b = (np.sign(delta[..., i]) for i in range(3))
    stomach = np.array(SEGMENT_COLOURS["stomach"]) - 128
    magenta = (r == np.sign(stomach[0])) & (g == np.sign(stomach[1])) & (np.abs(delta).sum(-1) > 30)
    assert int(magenta.sum()) > 50, f"no stomach-coloured overlay on the slice ({int(magenta.sum())} pixels)"
    assert int((label == 3).sum()) > 0
