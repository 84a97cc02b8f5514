"""The HTML report in a real browser: headless Chromium opens `reports/report.html` of the tiny
study, and every figure must decode (naturalWidth > 0), the claims table must be there with
all twelve claims, nothing may be fetched (the page works offline), and a screenshot is saved.

Chromium is driven by its command line alone: a copy of the page gets a small script that, on
load, writes what the browser saw into the DOM as JSON, and `--dump-dom` prints the DOM.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; CI installs it)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # Offline for real: any host name fails to resolve, so a page that needs the network breaks.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--no-first-run",
    "--disable-extensions",
]
# The tiny study has the tuned rule: its two claims follow the article's twelve.
CLAIM_IDS = [f"C{i}" for i in range(1, 13)] + ["C7-tuned", "C8-tuned"]

# Runs after every image has loaded (or failed to); its JSON is what the tests read.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  var table = Array.prototype.slice.call(document.querySelectorAll("table")).filter(function (t) {
    return t.querySelector('a[href="#C1"]') !== null;
  })[0];
  var claims = table ? Array.prototype.slice.call(table.querySelectorAll("tr")).filter(function (tr) {
    return tr.querySelector('a[href^="#C"]') !== null;
  }).map(function (tr) {
    var badge = tr.querySelector(".bs-verdict");
    return {id: tr.querySelector('a[href^="#C"]').textContent, verdict: badge ? badge.textContent : null,
            section: document.getElementById(tr.querySelector('a[href^="#C"]').textContent) !== null};
  }) : null;
  var out = document.createElement("pre");
  out.id = "bs-browser-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: broken.map(function (img) { return (img.alt || img.src).slice(0, 80); }),
    widths: images.map(function (img) { return img.naturalWidth; }),
    claims: claims,
    fetched: performance.getEntriesByType("resource").map(function (e) { return e.name; })
  });
  document.body.appendChild(out);
});
</script>
"""
RESULT = re.compile(r'<pre id="bs-browser-check">(.*?)</pre>', re.DOTALL)
EMBEDDED_PNG = re.compile(r'(<img\b[^>]*?\bsrc="data:image/png;base64,)([^"]*)(")')
# A 1 x 1 PNG: the smallest image a browser decodes.
DOT_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with its own profile folder (several may run side by side)."""
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def open_in_browser(page: str, folder: Path) -> dict:
    """Load `page` (HTML text) from `folder` with the probe added; what the browser saw.

    The page is opened from a folder of its own, so a figure that is a file beside the report
    instead of a data URI shows up broken."""
    folder.mkdir(parents=True, exist_ok=True)
    end = page.rindex("</body>")
    probed = folder / "probed.html"
    probed.write_text(page[:end] + PROBE + page[end:], encoding="utf-8")
    proc = chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()], folder / "profile")
    found = RESULT.search(proc.stdout)
    assert found, f"the probe did not run; DOM starts: {proc.stdout[:500]!r}\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def report_page(tiny_study) -> str:
    return (tiny_study / "reports/report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_in_chromium_shows_every_figure_and_the_claims_table(report_page, tmp_path):
    embedded = EMBEDDED_PNG.findall(report_page)
    assert len(embedded) >= 15, "the report's figures should be PNGs embedded as data URIs"
    assert len(re.findall(r"<img\b", report_page)) == len(embedded), "every image is an embedded PNG"

    seen = open_in_browser(report_page, tmp_path / "page")

    assert seen["images"] == len(embedded)
    assert seen["broken"] == [], f"images that did not load: {seen['broken']}"
    assert all(width > 0 for width in seen["widths"])
    assert seen["fetched"] == [], f"the report fetched resources (it must work offline): {seen['fetched']}"
    assert seen["claims"] is not None, "no claims table in the page"
    assert [row["id"] for row in seen["claims"]] == CLAIM_IDS
    assert all(row["verdict"] for row in seen["claims"]), seen["claims"]
    assert all(row["section"] for row in seen["claims"]), "each claim links to its own section"


@pytest.mark.slow
def test_report_screenshot_is_saved(tiny_study, tmp_path):
    shot = tmp_path / "report.png"
    chromium(
        ["--window-size=1280,2000", "--hide-scrollbars", f"--screenshot={shot}",
         (tiny_study / "reports/report.html").as_uri()],
        tmp_path / "profile",
    )  # fmt: skip
    data = shot.read_bytes()
    assert png_size(data) == (1280, 2000)
    assert len(data) > 20_000, "a blank page compresses to almost nothing; the report does not"


@pytest.mark.slow
def test_a_broken_figure_in_the_report_is_caught(report_page, tmp_path):
    page, replaced = EMBEDDED_PNG.subn(
        lambda m: m.group(1) + base64.b64encode(b"not a png").decode() + m.group(3), report_page, count=1
    )
    assert replaced == 1
    seen = open_in_browser(page, tmp_path / "page")
    assert len(seen["broken"]) == 1 and seen["widths"].count(0) == 1, seen["broken"]


def test_the_probe_tells_loaded_images_from_broken_and_missing_ones(tmp_path):
    """Without the workflow: a page with one good, one corrupt and one missing image, and a
    remote stylesheet; the browser sees exactly what is wrong."""
    page = (
        "<html><head><link rel='stylesheet' href='https://example.invalid/a.css'></head><body>"
        '<table><tr><td><a href="#C1">C1</a></td><td><span class="bs-verdict">reproduced</span></td></tr>'
        '</table><h2 id="C1">C1</h2>'
        f'<img alt="good" src="data:image/png;base64,{DOT_PNG}">'
        '<img alt="corrupt" src="data:image/png;base64,bm90IGEgcG5n">'
        '<img alt="missing" src="figure.png"></body></html>'
    )
    seen = open_in_browser(page, tmp_path / "page")
    assert seen["images"] == 3 and seen["widths"][0] == 1
    assert seen["broken"] == ["corrupt", "missing"]
    assert seen["claims"] == [{"id": "C1", "verdict": "reproduced", "section": True}]
    assert any("example.invalid" in url for url in seen["fetched"])
