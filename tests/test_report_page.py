"""The `korllama compare` report as a reader sees it: a real report of four systems (three on the same rows, one on
a sample of them; the evaluation folders made by hand as tests/test_report.py does, no training) opened in Debian's
chromium through selenium at 1280 px (marked `browser`, skipped, saying so, without chromium or chromedriver). The
verdict comes first and fits the first screen, every image is at least 280 px wide and has alt text, no two
figures, captions, tables or headings overlap, and the page prints to PDF. A screenshot is saved in
$KORLLAMA_SCREENSHOTS (default: a pytest temporary folder).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from test_page import CHROMEDRIVER, CHROMIUM, INSTALL, shot
from test_report import evaluation

from korllama.plots import plot_train_curve

WIDTH, HEIGHT = 1280, 1000
MIN_IMAGE_PX = 280

# every laid-out block the reader looks at; two of them overlapping (neither inside the other) is a broken page
BOXES = """
const picked = [...document.querySelectorAll('figure, img, figcaption, table, h1, h2, h3, p, ul')];
const box = e => { const r = e.getBoundingClientRect();
  return {x0: r.left + scrollX, y0: r.top + scrollY, x1: r.right + scrollX, y1: r.bottom + scrollY}; };
const name = e => e.tagName.toLowerCase() + (e.alt ? `[alt="${e.alt}"]` : '') + ' '
  + (e.textContent || '').slice(0, 40);
const found = [];
for (let i = 0; i < picked.length; i++) for (let j = i + 1; j < picked.length; j++) {
  const a = picked[i], b = picked[j];
  if (a.contains(b) || b.contains(a)) continue;
  const p = box(a), q = box(b);
  if (p.x0 < q.x1 - 1 && q.x0 < p.x1 - 1 && p.y0 < q.y1 - 1 && q.y0 < p.y1 - 1) found.push([name(a), name(b)]);
}
return found;
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """`korllama compare` of four systems: tuned (with its run's training curve), before tuning and the trees on
    the same 140 rows, and a generation sample of 100 of them."""
    from korllama.cli import main

    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    plot_train_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_macro_f1": 0.4},
                      {"step": 4, "loss": 1.0}, {"step": 4, "eval_macro_f1": 0.5}], run / "train_curve.png")
    folders = [root / n for n in ("before", "tuned", "trees", "generation")]
    evaluation(folders[0], "tiny before tuning", 0.3, seed=1)
    evaluation(folders[1], "tiny after tuning", 0.85, seed=2, run=run)
    trees = evaluation(folders[2], "LightGBM trees", 0.75, seed=3, proba=False)
    trees.fit_cpu_seconds = 30.0  # a training cost: the time-to-quality figure is drawn too
    (folders[2] / "metrics.json").write_text(trees.text(), "utf-8")
    evaluation(folders[3], "tiny after tuning, generation", 0.6, seed=4, proba=False, rows=100)
    out = root / "report.html"
    assert main(["compare", *map(str, folders), "--out", str(out), "--allow-different-rows",
                 "--title", "four systems"]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"the browser tests need chromium and chromedriver, which are not installed: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.browser
def test_the_report_reads_at_1280_px(browser, report, tmp_path_factory):
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(report.as_uri())
    js = browser.execute_script
    assert js("return document.readyState") == "complete"
    # the verdict is the first section, and the pick is on the first screen
    assert js("return document.querySelector('section').id") == "verdict"
    assert js("return document.querySelector('h2').closest('section').id") == "verdict"
    assert js("return document.querySelector('#verdict .pick').getBoundingClientRect().bottom") <= \
        js("return innerHeight")
    assert "tiny after tuning grades best" in js("return document.querySelector('#verdict .headline').textContent")
    assert "tiny after tuning, generation" in js("return document.querySelector('#verdict ul').textContent")
    # every image: decoded, alt text, at least 280 px wide, inside the window
    images = js("return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0, "
                "i.getBoundingClientRect().width, i.getBoundingClientRect().right])")
    # the 140 rows' confusions, F1 per grade and reliability; the sample's confusions and F1 per grade; time to
    # quality; the run's training curve
    assert len(images) == 7
    for alt, decoded, width, right in images:
        assert alt.strip() and decoded, alt
        assert width >= MIN_IMAGE_PX, f"{alt}: {width:.0f} px wide"
        assert right <= WIDTH, f"{alt}: runs off the page"
    assert js(BOXES) == []
    js("document.querySelectorAll('figure')[1].style.marginTop = '-200px'")  # the check finds a broken layout
    assert js(BOXES)
    js("document.querySelectorAll('figure')[1].style.marginTop = ''")
    shots = Path(os.environ.get("KORLLAMA_SCREENSHOTS") or tmp_path_factory.mktemp("report-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    shot(browser, shots, "report-1280")


@pytest.mark.browser
def test_the_report_prints_to_pdf(browser, report):
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(report.as_uri())
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:  # in print, still no figure or table over another, and no image wider than the page
        assert browser.execute_script(BOXES) == []
        body = browser.execute_script("return document.body.getBoundingClientRect().width")
        widths = browser.execute_script("return [...document.images].map(i => i.getBoundingClientRect().width)")
        assert max(widths) <= body
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = base64.b64decode(browser.print_page())
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") > 2
