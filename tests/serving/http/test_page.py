"""The page at `GET /`, in a real headless browser: Debian's chromium and chromium-driver,
driven by selenium. It picks the served digits model, takes a digit picture through
its file input and shows the labels the server answers.

`make test` installs chromium and chromium-driver where apt can; where neither is
installed the test is skipped, and says why.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "no headless browser here: chromium and chromium-driver are not installed "
            "(make test installs them with apt-get where it can)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
    )
    yield driver
    driver.quit()


def _top_labels(http_url: str, picture: Path) -> list[str]:
    """What the server answers for the picture, asked directly."""
    request = urllib.request.Request(
        f"http://{http_url}/v2/vision/models/lenet5/classify", data=picture.read_bytes()
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [x["label"] for x in json.loads(answer.read())["results"][0]["labels"]]


def test_the_page_classifies_a_digit_picture(browser, http_url):
    """The digits model (lenet5 with class names, tests/serving/http/conftest.py) is picked
    from the page's list, the picture goes in through the file input, and the page shows
    the server's labels, best first."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"http://{http_url}/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
    choices = Select(browser.find_element(By.ID, "model"))
    assert [o.get_attribute("value") for o in choices.options] == ["lenet5", "tinyseg"]
    choices.select_by_value("lenet5")
    picture = ROOT / "examples" / "images" / "three.png"
    browser.find_element(By.ID, "file").send_keys(str(picture))
    shown = wait.until(
        lambda b: b.find_element(By.ID, "top-label").text or b.find_element(By.ID, "error").text
    )
    assert browser.find_element(By.ID, "error").text == ""
    expected = _top_labels(http_url, picture)
    assert shown == expected[0]
    listed = [
        item.text.split(" ")[0] for item in browser.find_elements(By.CSS_SELECTOR, "#labels li")
    ]
    assert listed == expected  # top 5, best first, by their class names


def test_the_page_draws_a_segmentation_mask_over_the_picture(browser, http_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"http://{http_url}/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
    Select(browser.find_element(By.ID, "model")).select_by_value("tinyseg")
    browser.find_element(By.ID, "file").send_keys(str(ROOT / "examples" / "images" / "scene.png"))
    wait.until(
        lambda b: (
            b.find_elements(By.CSS_SELECTOR, "#labels li") or b.find_element(By.ID, "error").text
        )
    )
    assert browser.find_element(By.ID, "error").text == ""
    mask = browser.find_element(By.ID, "mask")
    assert (mask.get_attribute("width"), mask.get_attribute("height")) == ("96", "96")
    counts = [
        int(item.text.rsplit(": ", 1)[1].split()[0])
        for item in browser.find_elements(By.CSS_SELECTOR, "#labels li")
    ]
    assert sum(counts) == 96 * 96  # every pixel of the picture has its class
