"""The web GUI in a real headless Chromium (Debian's chromium and chromium-driver, driven
by selenium), against a real mount: log in with the URL, see the models, promote one and
watch its progress to hot, run fsck, change a setting, resize a pool; and the refusals:
no token, and a cross-site request from another page.

``TIERFS_SCREENSHOTS=docs`` saves a screenshot of each tab there (docs/gui-*.png).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.fuse import tierutil as tu
from tests.fuse import webutil as wu
from tests.fuse.mounting import MountFactory, file_hash

tier_guard = tu.tier_guard
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# A name straight from a file system, made to be markup: it must show as text.
HOSTILE = "solo/<img src=x onerror=window.pwned=1>.safetensors"
SHOTS = os.environ.get("TIERFS_SCREENSHOTS")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("the GUI tests need chromium and chromium-driver (scripts/setup test)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,820"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[str]:
    """Another origin on this host (same site, other port): a page that is not ours."""
    root = tmp_path / "other"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html><title>elsewhere</title><p>elsewhere</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def shot(driver: WebDriver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"gui-{name}.png"))


def wait(driver: WebDriver, timeout: float = 60) -> WebDriverWait[WebDriver]:
    # The page re-renders its tables as data arrives: an element found a moment ago may
    # have been replaced, and is simply looked up again.
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )


def cell(driver: WebDriver, table: str, name: str, css: str) -> str | None:
    """The text of `css` in the row of `table` named `name`, read in one go in the page."""
    found = driver.execute_script(
        """
        const [table, name, css] = arguments;
        for (const row of document.querySelectorAll("#" + table + " tbody tr")) {
          if (row.dataset.model === name || row.dataset.pool === name) {
            const el = row.querySelector(css);
            return el ? el.textContent : null;
          }
        }
        return null;
        """,
        table,
        name,
        css,
    )
    return None if found is None else str(found)


def in_row(driver: WebDriver, table: str, name: str, css: str) -> WebElement:
    """An element in the row of `table` named `name`, as the page shows it now."""
    for row in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr"):
        if name in (row.get_attribute("data-model"), row.get_attribute("data-pool")):
            return row.find_element(By.CSS_SELECTOR, css)
    raise NoSuchElementException(f"no row {name!r} in #{table}")


def on_row(
    driver: WebDriver, table: str, name: str, css: str, act: Callable[[WebElement], None]
) -> None:
    """Do `act` on an element of a row, again if the row was re-rendered meanwhile."""

    def attempt(d: WebDriver) -> bool:
        act(in_row(d, table, name, css))
        return True

    wait(driver).until(attempt)


def fetch_status(driver: WebDriver, path: str) -> object:
    """The HTTP status of a GET fetched by the page the browser shows now."""
    return driver.execute_async_script(
        "const [path, done] = arguments;"
        "fetch(path).then((r) => done(r.status), (e) => done(String(e)));",
        path,
    )


def post_from_elsewhere(driver: WebDriver, url: str, body: str) -> object:
    """What another site's script can do: a no-cors POST that carries our cookies."""
    return driver.execute_async_script(
        """
        const [url, body, done] = arguments;
        fetch(url, {method: "POST", mode: "no-cors", credentials: "include", body})
          .then((r) => done(r.type), (e) => done(String(e)));
        """,
        url,
        body,
    )


def test_gui_end_to_end(
    tier_guard: Path,
    mount_factory: MountFactory,
    tmp_path: Path,
    demo_cold: Path,
    browser: WebDriver,
    other_site: str,
) -> None:
    cold = tmp_path / "cold"
    shutil.copytree(demo_cold, cold, symlinks=True)
    hashes = wu.make_store(cold)
    tu.write_random(cold / HOSTILE, wu.MiB, 9)
    # Each copied file pauses a second once written: the transfer is slow enough to watch.
    env = {"TIERFS_FAULT_PAUSE": "copy_written", "TIERFS_FAULT_PAUSE_S": "1"}
    web = wu.web_mount(mount_factory, tier_guard, cold, env=env)
    driver = browser

    # Log in with the URL `tierfs gui` prints; the token leaves the address bar.
    url = tu.cli_ok(web.mount.config, "gui", "--no-browser").stdout.strip()
    driver.get(url)
    assert driver.current_url.split("#")[0] == web.url + "/"
    expected = {m["name"] for m in tu.status(web.mount.state_dir)["models"]}
    assert {wu.HF_MODEL, HOSTILE, "hf/tiny-llama"} <= expected

    # The models, every one; the hostile name as text, not markup.
    def shown() -> set[str]:
        return {
            str(r.get_attribute("data-model"))
            for r in driver.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        }

    wait(driver).until(lambda d: shown() == expected)
    assert cell(driver, "models", HOSTILE, "td.name") == HOSTILE
    assert driver.find_elements(By.CSS_SELECTOR, "#models img") == []
    assert driver.execute_script("return window.pwned === undefined") is True

    # Promote to ram0 and watch the transfer, pushed by the server, until it is hot.
    model = wu.HF_MODEL
    on_row(
        driver, "models", model, "select.tier-choice", lambda e: Select(e).select_by_value("ram0")
    )
    on_row(driver, "models", model, "button.promote", lambda e: e.click())
    # Bytes moving: each file pauses once copied, so the count sits past zero a while.
    seen = wait(driver).until(
        lambda d: (t := cell(d, "models", model, "td.transfer") or "") and " 0 B /" not in t and t
    )
    assert "GB/s" in seen and " / 5.0 MiB" in seen, seen
    shot(driver, "models")
    wait(driver).until(lambda d: cell(d, "models", model, "td.state") == "hot")
    assert cell(driver, "models", model, "td.transfer") == ""
    for rel in wu.HF_FILES:
        backing = Path(os.fsdecode(os.getxattr(web.mount.mountpoint / rel, "user.tierfs.backing")))
        assert backing.is_relative_to(tier_guard / "ram0"), backing
        assert file_hash(backing) == hashes[rel], rel
    assert tu.model_of(tu.status(web.mount.state_dir), wu.HF_MODEL)["tiers"] == ["ram0"]

    # Demote, pin (which promotes again), unpin.
    on_row(driver, "models", model, "button.demote", lambda e: e.click())
    wait(driver).until(lambda d: cell(d, "models", model, "td.state") == "cold")
    assert tu.model_of(tu.status(web.mount.state_dir), model)["tiers"] == []
    on_row(driver, "models", model, "button.pin", lambda e: e.click())
    wait(driver).until(lambda d: cell(d, "models", model, "td:nth-child(6)") == "pinned to ram0")
    wait(driver).until(lambda d: cell(d, "models", model, "td.state") == "hot")
    on_row(driver, "models", model, "button.unpin", lambda e: e.click())
    wait(driver).until(lambda d: cell(d, "models", model, "td:nth-child(6)") == "")
    assert not tu.model_of(tu.status(web.mount.state_dir), model)["pinned"]

    # Health: a check, and its report.
    driver.find_element(By.ID, "tab-health").click()
    driver.find_element(By.ID, "fsck").click()
    summary = wait(driver).until(
        lambda d: (
            d.find_element(By.ID, "fsck-summary").text.startswith("fsck: ")
            and d.find_element(By.ID, "fsck-summary").text
        )
    )
    assert "clean" in summary and "3 hot copies checked" in summary, summary
    driver.find_element(By.ID, "fsck-deep").click()
    deep = wait(driver).until(
        lambda d: "re-hashed" in (t := d.find_element(By.ID, "fsck-summary").text) and t
    )
    # Each hot copy and its cold file: twice the model's 5 MiB.
    assert "clean" in deep and "10.0 MiB re-hashed" in deep, deep
    shot(driver, "health")

    # Settings: applied and saved.
    driver.find_element(By.ID, "tab-settings").click()
    form = driver.find_element(By.ID, "settings")
    Select(form.find_element(By.NAME, "strategy")).select_by_value("round-robin")
    low = form.find_element(By.NAME, "low_watermark")
    low.clear()
    low.send_keys("0.99")
    driver.find_element(By.ID, "settings-save").click()
    refused = wait(driver).until(lambda d: d.find_element(By.ID, "settings-result").text)
    assert "low_watermark (0.99) must not exceed high_watermark" in refused, refused
    low.clear()
    low.send_keys("0.8")
    driver.find_element(By.ID, "settings-save").click()
    wait(driver).until(
        lambda d: d.find_element(By.ID, "settings-result").text.startswith("Applied")
    )
    assert 'strategy = "round-robin"' in web.mount.config.read_text()
    shot(driver, "settings")

    # The pools, and the strategy in use.
    driver.find_element(By.ID, "tab-pools").click()
    assert driver.find_element(By.ID, "strategy").text == "round-robin"
    assert cell(driver, "pools", "ram0", "td:nth-child(3)") == "64.0 MiB"
    shot(driver, "pools")

    # No token, no access; and another site's page cannot act with our cookie.
    driver.get(other_site)
    sent = post_from_elsewhere(driver, web.url + "/api/pin", '{"model": "hf/big"}')
    assert sent == "opaque", sent  # sent, with the cookie; its answer is hidden from it
    assert not tu.model_of(tu.status(web.mount.state_dir), wu.HF_MODEL)["pinned"]
    driver.delete_all_cookies()
    driver.get(web.url + "/")
    assert "a token is needed" in driver.find_element(By.TAG_NAME, "body").text
    assert fetch_status(driver, "/api/status") == 401

    # Resize a pool, with its steps shown.
    driver.get(url)
    driver.find_element(By.ID, "tab-pools").click()
    on_row(driver, "pools", "ram0", "input.resize-size", lambda e: e.send_keys("48M"))
    on_row(driver, "pools", "ram0", "button.resize", lambda e: e.click())
    wait(driver).until(lambda d: "resize ram0: done" in d.find_element(By.ID, "pool-steps").text)
    with web.client(token=web.token) as client:
        pools = {p["name"]: p for p in client.get("/api/pools").json()["pools"]}
    assert pools["ram0"]["size"] == 48 * wu.MiB
    shot(driver, "pools")
