"""The book (``make book``) built at smoke-test settings, served on 127.0.0.1 and read in a real
headless Chromium: no error output, every image loads, the equations are typeset, the
kernel-free latent-space explorer redraws when the method changes. Screenshots are kept in
``book/_build/screenshots/`` (CI artifacts: look at them).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without them
the test is skipped, unless ``S4KIT_REQUIRE_BROWSER=1`` (set by CI), where it fails.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "book" / "_build" / "html-smoke"
SHOTS = ROOT / "book" / "_build" / "screenshots"
PAGES = {"index": "book/index.html", "method": "docs/methods/css.html",
         "notebook": "notebooks/03_gaussian_prototypes.html",
         "latent": "notebooks/06_latent_space.html"}


def _browser_missing() -> str | None:
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the book with every notebook at FAST settings, data and runs in a fresh S4KIT_HOME."""
    missing = _browser_missing()
    if missing and os.environ.get("S4KIT_REQUIRE_BROWSER"):
        pytest.fail(f"the book test needs {missing} (apt-get install chromium chromium-driver; pip install selenium)")
    if missing:
        pytest.skip(f"needs {missing}")
    home = tmp_path_factory.mktemp("book_home")
    cache = tmp_path_factory.mktemp("book_cache")
    env = {**os.environ, "S4KIT_FAST": "1", "S4KIT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    shutil.rmtree(BUILD, ignore_errors=True)
    out = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                          "-D", f"nb_execution_cache_path={cache}", "-c", "book", ".", str(BUILD)],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-8000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(BUILD))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, site, page: str):
    browser.get(f"{site}/{PAGES[page]}")
    deadline = time.time() + 30
    while time.time() < deadline and browser.execute_script(
            "return document.readyState !== 'complete' || Array.from(document.images).some(i => !i.complete)"):
        time.sleep(0.2)


def _shot(browser, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


@pytest.mark.parametrize("page", list(PAGES))
def test_pages_show_no_errors_and_every_image_loads(browser, site, page):
    _open(browser, site, page)
    text = browser.execute_script("return document.body.innerText")
    assert "Traceback (most recent call last)" not in text and "Error" not in browser.title
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [], broken
    _shot(browser, page)
    if page in ("notebook", "latent"):
        figures = browser.execute_script("return document.querySelectorAll('.cell_output img').length")
        assert figures > 0
        for k in range(figures):  # each figure of the executed notebook, scrolled into view
            browser.execute_script("document.querySelectorAll('.cell_output img')[arguments[0]].scrollIntoView()", k)
            time.sleep(0.2)
            _shot(browser, f"{page}_figure{k}")


def test_equations_are_typeset(browser, site):
    _open(browser, site, "method")
    deadline = time.time() + 30
    n = 0
    while time.time() < deadline and not n:
        n = browser.execute_script("return document.querySelectorAll('mjx-container').length")
        time.sleep(0.3)
    assert n > 0, "MathJax typeset no equation on the CSS note"


def test_the_static_explorer_responds_to_a_change_of_method(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(browser, site, "latent")
    root = browser.find_element(By.CSS_SELECTOR, ".s4kit-explorer")
    browser.execute_script("arguments[0].scrollIntoView()", root)
    before = root.get_attribute("data-drawn")
    method = Select(root.find_element(By.CSS_SELECTOR, "select.method"))
    assert before and before.startswith(method.first_selected_option.text)
    assert len(method.options) >= 2
    assert browser.execute_script("return arguments[0].querySelectorAll('.plot .scatterlayer, .plot canvas').length",
                                  root) > 0
    method.select_by_index(len(method.options) - 1)
    time.sleep(1.0)
    after = root.get_attribute("data-drawn")
    assert after != before and after.startswith(method.options[-1].text)
    _shot(browser, "latent_explorer")
