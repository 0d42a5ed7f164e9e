"""The fleet page (issue 19 point 6) in a real browser: headless Debian chromium driven by selenium through
chromedriver, against a receiver holding what the home-support scenario delivered (a battery running down, a
sensor dying in water, one dying of its battery). The page must list the dying battery and the dead sensors as
needing attention, and plot as many points as the read API returns. A screenshot of a desk and a phone layout is
kept under ``$EDGE_GATEWAY_ARTEFACTS`` (default: the test's tmp_path) and its path printed."""

import asyncio
import os
import pathlib
import shutil
import types

import pytest

from backend.receiver import Receiver, ReceiverServer
from gateway.adapters.keys import TrustStore
from tests.support import get_json, wait_until
from tools.scenarios import home_support

pytestmark = pytest.mark.timeout(240)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def fed_receiver(tmp_path_factory):
    """A receiver on the database the quick home-support scenario filled (its outcome checks passed)."""
    workdir = tmp_path_factory.mktemp("home-support")
    summary = asyncio.run(home_support.run(types.SimpleNamespace(quick=True, seed=1), str(workdir)))
    assert summary["ok"], summary["failed"]
    receiver = Receiver(str(workdir / "receiver.sqlite"), TrustStore.load(str(workdir / "jwks.json")))
    server = ReceiverServer(receiver).start()
    yield server
    server.stop()
    receiver.close()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the test extra) is not installed")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromium and chromium-driver (Debian) are not installed")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1280,1400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def artefacts(tmp_path):
    where = pathlib.Path(os.environ.get("EDGE_GATEWAY_ARTEFACTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def plotted(driver):
    """The (x, y) pairs of the plot's line, as the browser drew them."""
    from selenium.webdriver.common.by import By
    lines = driver.find_elements(By.CSS_SELECTOR, "#plot polyline.series")
    return [p for p in (lines[0].get_attribute("points") or "").split()] if lines else []


def test_the_fleet_page_shows_who_needs_attention_and_plots_the_readings(fed_receiver, browser, tmp_path):
    from selenium.webdriver.common.by import By
    url = fed_receiver.fleet_url
    browser.get(url)
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#attention > li") and plotted(browser), 30,
               "the attention list and the plot")
    cards = {li.get_attribute("data-sensor"): li for li in browser.find_elements(By.CSS_SELECTOR, "#attention > li")}
    kinds = {s: {c.get_attribute("data-kind") for c in li.find_elements(By.CSS_SELECTOR, ".chips li")}
             for s, li in cards.items()}
    assert {"battery_low"} <= kinds["bedroom"] and {"battery_low", "silent"} <= kinds["living"]
    assert "silent" in kinds["bathroom"]  # died in water, without a warning
    assert "kitchen-fridge" not in kinds and "meter-1" not in kinds  # healthy ones are not listed
    order = list(cards)
    assert order.index("living") < order.index("bedroom")  # dead and low outranks low

    gw_row = browser.find_element(By.CSS_SELECTOR, "#gateways tbody tr")
    assert gw_row.get_attribute("data-gw") == "gw-home-support" and "synchronised" in gw_row.text

    # pick the dying bedroom sensor's battery over the whole scenario: the plot holds every point the API returns
    cards["bedroom"].click()
    browser.execute_script("document.getElementById('pick-range').value = '604800';"
                           "document.getElementById('pick-range').dispatchEvent(new Event('change'));")
    name = "bedroom/batt"
    browser.execute_script("const s = document.getElementById('pick-name'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('change'));", name)
    width = browser.find_element(By.ID, "plot").size["width"]
    status, api = get_json(fed_receiver.ops_url, "/api/v1/readings?gw=gw-home-support&name=%s&span=604800"
                           "&max_points=%d" % (name, max(50, min(2000, round(width)))))
    assert status == 200 and len(api["points"]) > 10 and not api["downsampled"]
    wait_until(lambda: len(plotted(browser)) == len(api["points"]), 15,
               "the plot to show the %d points of %s" % (len(api["points"]), name))
    assert "#gw=gw-home-support&name=bedroom%2Fbatt" in browser.current_url  # a link to this plot
    events = browser.find_elements(By.CSS_SELECTOR, "#plot line.ev.raised")
    assert [e.get_attribute("data-event") for e in events] == ["battery_low"]  # the raise is marked on the plot
    assert [t.get_attribute("data-level") for t in browser.find_elements(By.CSS_SELECTOR, "#plot line.thr")] == [
        "battery_low"] and api["thresholds"] == {"battery_low": 15.0}  # and its limit, from the event's reason
    assert "%d readings" % len(api["points"]) in browser.find_element(By.ID, "plot-caption").text

    where = artefacts(tmp_path)
    desk = where / "fleet-page-desk.png"
    assert browser.save_screenshot(str(desk)) and desk.stat().st_size > 10000
    browser.set_window_size(390, 844)  # a phone: the plot is redrawn to its width, nothing overflows the page
    wait_until(lambda: browser.find_element(By.ID, "plot").size["width"] < 400, 10, "the phone layout")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    phone = where / "fleet-page-phone.png"
    assert browser.save_screenshot(str(phone))
    print("fleet page screenshots: %s %s" % (desk, phone))


def test_the_page_keeps_its_data_when_the_receiver_goes_away(tmp_path, trust, signing_key, browser):
    """Offline: the page was loaded, then the receiver stopped; the next refresh says so and keeps what it shows."""
    from selenium.webdriver.common.by import By
    from gateway.core import senml, wire
    from gateway.core.model import Reading
    rx = Receiver(str(tmp_path / "rx.sqlite"), trust)
    readings = [Reading("s1", "temp", 20.0 + i, "Cel", 1_750_000_000.0 + 60 * i) for i in range(5)]
    rx.process(wire.sign(wire.encode_payload("gw-test", 1, 0, True, senml.encode_records(readings, (), "gw-test/")),
                         signing_key))
    server = ReceiverServer(rx).start()
    try:
        browser.get(server.fleet_url + "#gw=gw-test&name=s1%2Ftemp")
        wait_until(lambda: len(plotted(browser)) == 5, 30, "the 5 points of s1/temp")
    finally:
        server.stop()
        rx.close()
    browser.execute_script("refresh()")
    status = browser.find_element(By.ID, "status")
    wait_until(lambda: "offline" in status.get_attribute("class"), 15, "the page to notice the receiver is gone")
    assert "showing data from" in status.text and len(plotted(browser)) == 5
