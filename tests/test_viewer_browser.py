"""The results page in a real browser: system Chromium driven by selenium, page opened from a
file:// URL (no server, no network), on the real LIVECell sample (5 images, 3 cell types).

Needs `chromium` and `chromium-driver` (Debian; `.ci/run` installs them) and selenium (dev
extras); nothing is downloaded at test time. A missing browser skips the test on a user's machine
(with the install line) and FAILS it where ``CELLSEG_STRICT=1`` (the project's CI, `.ci/run`).
The screenshots are kept under the test's tmp folder (the path is printed).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from test_metrics import perturb

INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"


def _browser_paths() -> tuple[str, str]:
    chrome = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                          "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        why = f"no Chromium / chromedriver on PATH; install them: {INSTALL}"
        if os.environ.get("CELLSEG_STRICT") == "1":
            pytest.fail(f"{why} (CELLSEG_STRICT=1 forbids skipping it)")
        pytest.skip(why)
    return chrome, driver


@pytest.fixture(scope="module")
def browser():
    chrome, driver_path = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed; {INSTALL}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium-manager never runs, nothing is downloaded
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, shared_livecell):
    """Two pages from `cellseg score` on the LIVECell sample: run A alone, and A vs B."""
    from cellseg.cli import main
    from cellseg.data.loaders import load_records

    tmp = tmp_path_factory.mktemp("viewer")
    records = [r for r in load_records(shared_livecell, "val") if r.rles]
    for name, seed in (("a", 1), ("b", 2)):
        # LIVECell truth overlaps a little: written without the writer's overlap check
        rows = [f"{r.image_id},{rle}\n" for k, r in enumerate(records)
                for rle in perturb(list(r.rles), seed=seed * 10 + k)]
        (tmp / f"{name}.csv").write_text("id,predicted\n" + "".join(rows))
    base = ["score", "--truth", f"{shared_livecell}:val", "--pred", str(tmp / "a.csv"),
            "--no-coco"]
    assert main(base + ["--json", str(tmp / "a.json"), "--report", str(tmp / "one")]) == 0
    assert main(base + ["--compare", str(tmp / "b.csv"), "--json", str(tmp / "ab.json"),
                        "--report", str(tmp / "two")]) == 0
    assert main(base + ["--report", str(tmp / "emb"), "--report-embed"]) == 0
    return {"tmp": tmp, "one": tmp / "one" / "index.html", "two": tmp / "two" / "index.html",
            "emb": tmp / "emb" / "index.html",
            "score": json.loads((tmp / "a.json").read_text()),
            "compare": json.loads((tmp / "ab.json").read_text())}


def _open(browser, page: Path) -> None:
    browser.get(page.resolve().as_uri())
    for _ in range(50):
        if browser.execute_script("return document.querySelectorAll('#images tbody tr').length"):
            return
        time.sleep(0.1)
    raise AssertionError(f"the page did not build its table; console: {_errors(browser)}")


def _errors(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _text(browser, css: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, css).text


def _rows(browser) -> list[dict]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#images tbody tr')].map(tr => ({id: tr.dataset.id,"
        " cells: [...tr.children].map(td => td.textContent)}))")


def _sort_by(browser, key: str, direction: str) -> None:
    from selenium.webdriver.common.by import By

    th = browser.find_element(By.CSS_SELECTOR, f'#images th[data-key="{key}"]')
    for _ in range(3):
        if th.get_attribute("data-dir") == direction:
            return
        th.click()
    raise AssertionError(f"column {key} never sorted {direction}")


def test_score_page_in_chromium(browser, pages) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    score = pages["score"]
    _open(browser, pages["one"])
    assert "file://" in browser.current_url
    # the summary shows score.json's numbers
    c = score["counts"]
    assert _text(browser, "#score-0") == f"{score['score']:.4f}"
    assert _text(browser, "#n-images-0") == str(c["n_images"]) == "5"
    assert _text(browser, "#n-true-0") == str(c["n_true"])
    assert _text(browser, "#n-pred-0") == str(c["n_pred"])
    assert _text(browser, "#tpfpfn-0") == f"{c['tp']['0.50']} / {c['fp']['0.50']} / {c['fn']['0.50']}"
    for k, v in score["per_threshold"].items():
        assert _text(browser, f'[id="thr-0-{k}"]') == f"{v:.4f}"
    for t, v in score["per_cell_type"].items():
        assert _text(browser, f'[id="type-0-{t}"]') == f"{v:.4f}"
    assert browser.find_elements(By.CSS_SELECTOR, "svg.curve polyline")
    # worst image first by default, and again after sorting by score both ways
    per_image = {k: v["score"] for k, v in score["per_image"].items()}
    worst = min(per_image, key=per_image.get)
    assert _rows(browser)[0]["id"] == worst
    _sort_by(browser, "score0", "desc")
    assert _rows(browser)[0]["id"] == max(per_image, key=per_image.get)
    _sort_by(browser, "score0", "asc")
    ids = [r["id"] for r in _rows(browser)]
    assert ids[0] == worst and ids == sorted(per_image, key=per_image.get)
    # filter by one cell type
    types = {k: v["cell_type"] for k, v in score["per_image"].items()}
    one = sorted(set(types.values()))[0]
    Select(browser.find_element(By.ID, "type-filter")).select_by_value(one)
    shown = _rows(browser)
    assert {r["id"] for r in shown} == {k for k, t in types.items() if t == one}
    assert all(r["cells"][1] == one for r in shown)
    Select(browser.find_element(By.ID, "type-filter")).select_by_value("")
    assert len(_rows(browser)) == 5
    # open the worst image: its pictures load from the files beside the page
    browser.find_element(By.CSS_SELECTOR, f'#images tbody tr[data-id="{worst}"]').click()
    assert browser.find_element(By.ID, "detail").is_displayed()
    time.sleep(0.3)
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#panes img')].map(i => i.complete && "
        "i.naturalWidth)")
    assert len(loaded) == 4 and all(w == 704 for w in loaded), loaded  # jpg, truth, pred, errors
    assert worst in _text(browser, "#detail-title")
    # toggle the errors layer off and on
    err = browser.find_element(By.CSS_SELECTOR, "#panes .layer-errors")
    assert err.is_displayed()
    browser.find_element(By.ID, "show-errors").click()
    assert not err.is_displayed()
    browser.find_element(By.ID, "show-errors").click()
    assert err.is_displayed()
    # zoom: a click zooms 2x on that point, the 4x button zooms further
    from selenium.webdriver.common.action_chains import ActionChains

    view = browser.find_element(By.CSS_SELECTOR, "#panes .view")
    ActionChains(browser).move_to_element_with_offset(view, 60, 40).click().perform()
    detail = browser.find_element(By.ID, "detail")
    assert detail.get_attribute("data-zoom") == "2"
    browser.find_element(By.CSS_SELECTOR, 'button.zoom[data-zoom="4"]').click()
    stack = browser.find_element(By.CSS_SELECTOR, "#panes .stack")
    assert "scale(4)" in stack.get_attribute("style")
    shot = pages["tmp"] / "viewer_one_zoom4.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    browser.find_element(By.ID, "close").click()
    assert not detail.is_displayed()
    assert not _errors(browser)
    print(f"screenshots in {pages['tmp']}")


def test_compare_page_in_chromium(browser, pages) -> None:
    from selenium.webdriver.common.by import By

    res = pages["compare"]
    cmp_ = res["compare"]
    _open(browser, pages["two"])
    assert _text(browser, "#score-0") == f"{res['score']:.4f}"
    assert _text(browser, "#score-1") == f"{cmp_['score']:.4f}"
    p = cmp_["paired"]
    vs = _text(browser, "#vs-1")
    assert f"B better on {p['better']} of {p['n']} images" in vs
    sign = "+" if p["mean_diff"] > 0 else ""
    assert f"{sign}{p['mean_diff']:.4f}" in vs
    # by default the table sorts by B - A, where B lost most first
    diff = {k: cmp_["per_image"][k]["score"] - res["per_image"][k]["score"]
            for k in res["per_image"]}
    rows = _rows(browser)
    assert rows[0]["id"] == min(diff, key=diff.get)
    _sort_by(browser, "diff1", "desc")
    assert _rows(browser)[0]["id"] == max(diff, key=diff.get)
    # one image: A and B side by side
    browser.find_element(By.CSS_SELECTOR, "#images tbody tr").click()
    panes = browser.find_elements(By.CSS_SELECTOR, "#panes .pane")
    assert len(panes) == 2
    assert "a.csv" in panes[0].text and "b.csv" in panes[1].text
    browser.find_element(By.ID, "show-truth").click()  # layers follow in both panes
    hidden = browser.execute_script(
        "return [...document.querySelectorAll('.layer-truth')].map(e => e.style.display)")
    assert hidden == ["none", "none"]
    time.sleep(0.3)
    shot = pages["tmp"] / "viewer_compare.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert not _errors(browser)


def test_single_file_page_in_chromium(browser, pages) -> None:
    """--report-embed: one HTML file, the pictures inside it as data URIs."""
    from selenium.webdriver.common.by import By

    page = pages["emb"]
    assert not (page.parent / "img").exists()
    _open(browser, page)
    assert _text(browser, "#score-0") == f"{pages['score']['score']:.4f}"
    browser.find_element(By.CSS_SELECTOR, "#images tbody tr").click()
    time.sleep(0.3)
    pics = browser.execute_script(
        "return [...document.querySelectorAll('#panes img')].map(i => [i.src.slice(0, 15), "
        "i.complete && i.naturalWidth])")
    assert pics == [["data:image/jpeg", 704]] + [["data:image/png;", 704]] * 3, pics
    assert not _errors(browser)
