"""The status page in a real browser (#18): headless Chromium from the distribution's packages,
driven by Selenium through /usr/bin/chromedriver (nothing downloads a browser). One daemon and
one browser for the module; the screenshots in docs/ are taken here."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from daemon_support import Daemon, wait_for
from web_support import HOSTILE, base_url, web_config

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless Chromium is not installed (Debian packages chromium and chromium-driver; "
        ".ci/run installs them as root with CI=true)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test dependency")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

# one browser and daemon for the module, and the docs/*.png it writes: on one xdist worker
pytestmark = pytest.mark.xdist_group("browser")
DOCS = Path(__file__).parent.parent / "docs"
TOKEN = "browser-token-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    d = Daemon(tmp_path_factory.mktemp("web"))
    web_config(d)
    d.start()
    yield d, base_url(d)
    leftovers = d.cleanup()
    assert leftovers == [], f"workers outlived the daemon: {leftovers}"
    assert "Traceback" not in d.stderr(), d.stderr()


def until(driver: Any, check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    def attempt() -> Any:
        try:
            return check()
        except Exception:  # noqa: BLE001 — an element replaced meanwhile: look again
            return None

    return wait_for(attempt, timeout, what)


def row_state(driver: Any, plan: str) -> str:
    row = driver.find_element(By.CSS_SELECTOR, f'#plans tr[data-plan="{plan}"]')
    return str(row.find_element(By.CSS_SELECTOR, ".badge").text)


def test_a_running_plan_turns_succeeded_without_a_reload(
    web: tuple[Daemon, str], browser: Any
) -> None:
    d, url = web
    d.submit("DOCS-done", phases=("P01", "P02"))
    d.submit("DOCS-failed", repo="other", worker="web_todo")
    d.wait_plans_end(["DOCS-done", "DOCS-failed"])
    d.hold("WEB-run")
    d.submit("WEB-run", worker="web")
    d.wait_event("worker.started", plan="WEB-run")  # shown running from the first render
    browser.get(url)
    until(browser, lambda: row_state(browser, "WEB-run") == "running", "WEB-run running")
    browser.execute_script("window.notReloaded = true")
    until(
        browser,
        lambda: "on" in browser.find_element(By.ID, "live").get_attribute("class"),
        "the live stream connected",
    )
    DOCS.mkdir(exist_ok=True)
    browser.save_screenshot(str(DOCS / "web-plans.png"))
    d.release("WEB-run")
    until(browser, lambda: row_state(browser, "WEB-run") == "succeeded", "WEB-run succeeded")
    assert browser.execute_script("return window.notReloaded") is True


def test_the_plan_page_shows_a_failed_checks_reason_and_the_log_growing(
    web: tuple[Daemon, str], browser: Any
) -> None:
    d, url = web
    d.hold("WEB-fail")
    d.submit("WEB-fail", worker="web_todo")
    d.wait_event("worker.started", plan="WEB-fail")
    browser.get(f"{url}plans/WEB-fail")

    def ticks() -> int:
        lines = browser.find_element(By.ID, "log").text.splitlines()
        return max((int(x.split()[1]) for x in lines if x.startswith("tick ")), default=0)

    first = until(browser, ticks, "ticks in the log")
    until(browser, lambda: ticks() > first + 5, "the log tail growing")
    browser.execute_script("window.notReloaded = true")
    d.release("WEB-fail")
    reason = until(
        browser,
        lambda: next(
            (
                e.text
                for e in browser.find_elements(By.CSS_SELECTOR, "li.check.failed")
                if "[rule: placeholder]" in e.text
            ),
            None,
        ),
        "the failed check on the page",
    )
    assert "P01-worker.md:" in reason and "[TODO]" in reason
    badge = browser.find_element(By.CSS_SELECTOR, "#summary .badge")
    assert badge.text == "failed"
    assert browser.execute_script("return window.notReloaded") is True
    browser.set_window_size(1280, 1500)  # down to the log tail
    browser.save_screenshot(str(DOCS / "web-plan.png"))
    browser.set_window_size(1280, 860)


def test_markup_in_a_prompt_a_check_reason_and_a_log_line_stays_inert(
    web: tuple[Daemon, str], browser: Any
) -> None:
    d, url = web
    data = d.plan_data("WEB-xss", repo="xss<b>repo</b>", worker="web")
    data["phases"][0]["prompt"] = f"Build it. {HOSTILE}"
    data["phases"][0]["verify"] = [{"run": f"echo '{HOSTILE}'; exit 3", "expect": "pass"}]
    d.drop("WEB-xss.toml", data)
    d.wait_plans_end(["WEB-xss"])
    for page in (url, f"{url}plans/WEB-xss"):
        browser.get(page)
        until(
            browser,
            lambda: "WEB-xss" in browser.find_element(By.TAG_NAME, "main").text,
            f"WEB-xss on {page}",
        )
        assert browser.execute_script(
            "return [window.pwned, window.pwnedLog, document.querySelectorAll("
            "'main script, main img, main b').length]"
        ) == [None, None, 0]
        assert "xss<b>repo</b>" in browser.find_element(By.TAG_NAME, "main").text
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "<script>window.pwnedLog = 1</script>" in main  # the log line, as text
    browser.find_element(By.CSS_SELECTOR, "#phase-P01 details summary").click()
    assert HOSTILE in browser.find_element(By.CSS_SELECTOR, "#phase-P01 details pre").text
    reasons = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "li.check.failed")]
    assert any(HOSTILE in r for r in reasons), reasons


def test_the_daemon_page(web: tuple[Daemon, str], browser: Any) -> None:
    _, url = web
    browser.get(f"{url}daemon")
    text = browser.find_element(By.ID, "daemon").text
    assert "max_workers = 4" in text and "Uptime" in text
    browser.save_screenshot(str(DOCS / "web-daemon.png"))


def test_the_token_is_asked_for_once_off_loopback(daemon: Daemon, browser: Any) -> None:
    web_config(daemon, listen="0.0.0.0:0", token=TOKEN)
    daemon.start()
    url = f"http://127.0.0.1:{urlsplit(base_url(daemon)).port}"
    browser.get(f"{url}/daemon")
    assert "Token required" in browser.find_element(By.TAG_NAME, "h1").text
    field = browser.find_element(By.NAME, "token")
    field.send_keys("wrong-token-wrong-token")
    field.submit()
    assert "wrong token" in browser.find_element(By.TAG_NAME, "main").text
    field = browser.find_element(By.NAME, "token")
    field.send_keys(TOKEN)
    field.submit()
    until(browser, lambda: browser.find_element(By.ID, "daemon"), "the daemon page")
    browser.get(f"{url}/")  # the session keeps it: no second ask
    assert browser.find_element(By.TAG_NAME, "h1").text == "Plans"
