"""The web console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against `filterctl web`, on mail quarantined by filterd behind a real Postfix
and released through that Postfix to the sink.

Screenshots of each step are saved in the test's tmp dir; their paths are printed (pytest -s).
Skipped, with the reason, only when the browser cannot start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from filterd.web.passwords import User, hash_password, write_user
from tests.harness.net import free_port, port_open, wait_for
from tests.harness.redis import RedisServer
from tests.harness.stack import Stack, make_message

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.skip(f"selenium is not installed ({exc}): pip install -e '.[dev]'")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.skip(f"{path} not found: scripts/install installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(arg)
    try:
        # the Debian driver named outright: Selenium Manager would try to download one
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        pytest.skip(f"headless chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _without_date(msg: bytes) -> bytes:
    return b"\r\n".join(line for line in msg.split(b"\r\n") if not line.startswith(b"Date:"))


class Shots:
    def __init__(self, driver: Any, directory: Path) -> None:
        self.driver, self.dir, self.n = driver, directory, 0

    def take(self, name: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        assert path.stat().st_size > 5000  # a real picture, not an empty page
        print(f"screenshot: {path}")
        return path


def unlabelled_fields(driver: Any) -> list[str]:
    """Form fields the user can reach that have no <label> (WebDriver's own script: our CSP
    forbids the page's scripts, not the driver's)."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.outerHTML);"
        )
    )


def heading(driver: Any, text: str, timeout: float = 60, element: tuple[str, str] | None = None) -> None:
    """Wait for the page whose <h1> (or `element`) shows `text`: a click on a submit button
    returns before the next page has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        expected_conditions.text_to_be_present_in_element(element or (By.TAG_NAME, "h1"), text)
    )


def test_review_and_release_in_a_real_browser(
    browser: Any, stack: Stack, redis_server: RedisServer, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from filterd.bayes.model import Model

    shots = Shots(browser, tmp_path)
    passwd, secret, model = tmp_path / "passwd", tmp_path / "secret", tmp_path / "bayes.npz"
    write_user(passwd, User("reviewer", hash_password(PASSWORD)))
    config = {
        "actions": {"add_header": 2.0, "quarantine": 3.0},
        "scores": {"MISSING_DATE": 4.0},
        "web": {"password_file": str(passwd), "session_secret_file": str(secret)},
        # off for filterd (as in every stack test); where the console's training goes
        "checks": {"bayes": {"enabled": False, "storage": "file", "model": str(model)}},
        # filterd counts its verdicts and keeps the last ones there: the history and graph pages
        "redis": {"url": redis_server.url, "key_prefix": f"web-e2e-{uuid.uuid4().hex[:8]}:"},
        "stats": {"enabled": "on"},
    }
    with stack.configured(config) as filterd:
        msg, marker = make_message("held for review")
        stack.send(_without_date(msg))  # MISSING_DATE scores 4 >= 3: quarantined
        wait_for(lambda: any(stack.quarantine_dir.glob("*.json")), 10, "the message quarantined")
        assert stack.sink.count(marker) == 0

        port = free_port()
        console = subprocess.Popen(
            [
                sys.executable, "-c", "from filterd.cli.filterctl import main; main()",
                "--config", str(filterd.config_path), "web", "--listen", f"127.0.0.1:{port}",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(lambda: port_open(port), 30, "filterctl web listening")
            base = f"http://127.0.0.1:{port}"

            # no session: every page sends the browser to the login page
            browser.get(f"{base}/quarantine")
            assert "/login" in browser.current_url
            assert browser.find_element(By.TAG_NAME, "h1").text == "Log in to the filterd console"
            assert unlabelled_fields(browser) == []
            shots.take("login-page")

            # a wrong password is refused
            browser.find_element(By.ID, "username").send_keys("reviewer")
            browser.find_element(By.ID, "password").send_keys("not the password", Keys.ENTER)
            heading(browser, "Wrong user name", element=(By.CSS_SELECTOR, "[role=alert]"))
            assert "Wrong user name or password" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
            assert "/login" in browser.current_url
            shots.take("wrong-password")

            # the right one, with the keyboard only: the user name field has the focus, Tab
            # moves to the password, Enter submits
            browser.get(f"{base}/quarantine")
            assert browser.switch_to.active_element.get_attribute("id") == "username"
            browser.switch_to.active_element.send_keys("reviewer", Keys.TAB)
            assert browser.switch_to.active_element.get_attribute("id") == "password"
            browser.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)
            heading(browser, "Quarantine")
            assert browser.current_url.endswith("/quarantine")
            row = browser.find_element(By.XPATH, f"//tbody/tr[contains(., '{marker}')]")
            assert "bob@example.net" in row.text and "held" in row.text  # the status in words
            assert unlabelled_fields(browser) == []
            shots.take("quarantine-list")

            # the message: symbols with their reasons, the text
            row.find_element(By.PARTIAL_LINK_TEXT, marker).click()
            heading(browser, marker)
            page = browser.find_element(By.TAG_NAME, "main").text
            assert "MISSING_DATE" in page and "just a test." in page
            shots.take("message")

            # release it: it goes out through Postfix's re-injection listener to the sink
            browser.find_element(By.CSS_SELECTOR, "button[value=release]").click()
            heading(browser, "Release")
            result = browser.find_element(By.CSS_SELECTOR, "tbody tr").text
            assert "done" in result and "released to bob@example.net" in result, result
            shots.take("released")
            got = stack.sink.find(marker)
            assert got.rcpts == ("bob@example.net",)
            browser.get(f"{base}/quarantine?status=released")
            assert marker in browser.find_element(By.TAG_NAME, "tbody").text

            # a false positive: train it as ham, through `filterctl quarantine train`
            browser.find_element(By.PARTIAL_LINK_TEXT, marker).click()
            heading(browser, marker)
            browser.find_element(By.CSS_SELECTOR, "button[value=ham]").click()
            heading(browser, "Train as ham")  # training takes a few seconds: the page comes after it
            result = browser.find_element(By.CSS_SELECTOR, "tbody tr").text
            assert "done" in result and "1 learned as ham" in result, result
            shots.take("trained")
            assert (Model.load(model).nspam, Model.load(model).nham) == (0, 1)

            # the history: filterd's verdict for it, found by its subject
            browser.get(f"{base}/history?q={marker}")
            verdict = browser.find_element(By.CSS_SELECTOR, "tbody tr").text
            assert "quarantine" in verdict and "MISSING_DATE(4)" in verdict, verdict
            shots.take("history")

            # the graphs: the counters filterd kept, as a table and as a picture that loaded
            browser.get(f"{base}/graphs?period=day")
            table = browser.find_element(By.CSS_SELECTOR, "table.totals")
            names = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
            counts = dict(
                zip(names, (int(td.text) for td in table.find_elements(By.TAG_NAME, "td")), strict=True)
            )
            assert counts["received"] >= 1 and counts["quarantined"] >= 1, counts
            image = browser.find_element(By.CSS_SELECTOR, "img.graph")
            assert (
                browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
                == 900
            )
            shots.take("graphs")

            # the scan page works with the keyboard and labels too
            browser.get(f"{base}/scan")
            assert unlabelled_fields(browser) == []
            browser.find_element(By.ID, "message").send_keys(_without_date(msg).decode())
            browser.find_element(By.CSS_SELECTOR, "form.scan button[type=submit]").click()
            heading(browser, "Result:", element=(By.ID, "result"))
            assert "MISSING_DATE" in browser.find_element(By.ID, "result").find_element(By.XPATH, "..").text
            shots.take("scan")

            # log out: the pages are closed again
            browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
            heading(browser, "Log in")
            browser.get(f"{base}/quarantine")
            assert "/login" in browser.current_url
        finally:
            console.terminate()
            output = console.communicate(timeout=10)[0].decode(errors="replace")
            print(output[-2000:])
    assert shots.n == 9
