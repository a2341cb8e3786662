"""The ops page in a real browser: headless Debian chromium driven by Selenium, against a
real LocalCluster (redis-server, worker, beat, fake cloud) and the real dashboard server
process (``python -m atlas_tasks dashboard``).

Every wait is a condition (WebDriverWait), never a sleep. In CI (``CI=true``) a missing
chromium or chromedriver fails the module instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from atlas_tasks import events, orchestrator
from atlas_tasks.sdk import spawn_compute
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token-0123456789abcdef"
OPERATOR = "Ada Ops"
#: The issue's bound: a new session / a status change shows within 2 s, no reload.
LIVE_BOUND_S = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def _cluster() -> Iterator[LocalCluster]:
    """This module's cluster: a long orphan grace, so an orphan stays listed until the
    test terminates it from the page (the shared one reaps orphans after 1.5 s)."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(
        fakecloud={"boot_delay_s": 0.0}, orphan_grace_ms=600_000, orphan_scan_interval_ms=1000
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dashboard(_cluster: LocalCluster) -> Iterator[str]:
    """The real dashboard server process; yields its base URL."""
    port = _free_port()
    proc = ManagedProcess(
        name="dashboard",
        args=[sys.executable, "-m", "atlas_tasks", "dashboard", "--port", str(port)],
        env={**_cluster.env, "ATLAS_DASHBOARD_TOKEN": TOKEN},
    ).start()
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            return httpx.get(url + "login", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        proc.wait_until(answers, 30, "the dashboard answering")
        yield url
    finally:
        proc.stop()
        print(proc.log()[-3000:])


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless chromium (Debian's), via Debian's chromedriver."""
    if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = (
            "chromium + chromium-driver are required (apt-get install chromium chromium-driver)"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1600,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(cluster: LocalCluster, dashboard: str, browser: WebDriver) -> WebDriver:
    """The page, logged in (the login form on the first use), live."""
    browser.get(dashboard)
    if "/login" in browser.current_url:
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.NAME, "operator").send_keys(OPERATOR)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, 10).until(
        lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live"
    )
    return browser


def wait(driver: WebDriver, timeout: float) -> WebDriverWait[WebDriver]:
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=(WebDriverException,)
    )


def cell(driver: WebDriver, session_id: str, field: str) -> str:
    return str(
        driver.find_element(
            By.CSS_SELECTOR, f'tr[data-session-id="{session_id}"] [data-field="{field}"]'
        ).text
    )


def button(driver: WebDriver, session_id: str, action: str) -> Any:
    return driver.find_element(
        By.CSS_SELECTOR, f'tr[data-session-id="{session_id}"] [data-action="{action}"]'
    )


def pod_status(cluster: LocalCluster, pod_name: str) -> str | None:
    state = cluster.cloud.state()
    for pod in state["pods"] + state["terminated_pods"]:
        if pod["name"] == pod_name:
            return str(pod["status"])
    return None


def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``predicate``; returns how long it took (fails the test after timeout)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling interval of a condition wait, not a fixed delay
    return time.monotonic() - started


def spawn(user: str) -> orchestrator.Session:
    return orchestrator.spawn(
        provider="runpod",
        gpu="h100",
        image="ghcr.io/acme/infer:1",
        ports=[(8000, "http")],
        auth="bearer",
        user_id=user,
        idle_ttl_ms=300_000,
    )


def operator_actions(session_id: str) -> list[dict[str, Any]]:
    return [e.data for e in events.history(session_id) if e.type == "operator_action"]


def test_login_required_and_no_secret_in_page(
    cluster: LocalCluster, dashboard: str, browser: WebDriver
) -> None:
    browser.delete_all_cookies()
    browser.get(dashboard)
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "token").send_keys("wrong-token-wrong-token")
    browser.find_element(By.NAME, "operator").send_keys(OPERATOR)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, 5).until(lambda d: d.find_elements(By.ID, "login-error"))
    assert httpx.get(dashboard + "api/sessions").status_code == 401
    assert (
        httpx.get(dashboard + "api/sessions", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )

    s = spawn("carol")
    s.wait(30)
    browser.get(dashboard)
    browser.find_element(By.NAME, "token").send_keys(TOKEN)
    browser.find_element(By.NAME, "operator").send_keys(OPERATOR)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, 10).until(lambda d: cell(d, s.id, "status") == "running")
    cookie = browser.get_cookie("atlas_dashboard")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    source = browser.page_source
    assert TOKEN not in source and s.token is not None and s.token not in source
    # The JSON the page reads holds no raw token either (nor the stored hash).
    api = httpx.get(dashboard + "api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
    assert api.status_code == 200 and s.id in api.text
    assert s.token not in api.text and TOKEN not in api.text and "token_hash" not in api.text
    timeline = httpx.get(
        dashboard + f"api/sessions/{s.id}/timeline", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert timeline.status_code == 200 and s.token not in timeline.text
    orchestrator.stop_tracked(s.id)


def test_new_session_and_status_change_show_within_2s(
    cluster: LocalCluster, page: WebDriver
) -> None:
    s = spawn("alice")
    started = time.monotonic()
    wait(page, LIVE_BOUND_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-session-id="{s.id}"]')
    )
    appeared = time.monotonic() - started
    assert cell(page, s.id, "user") == "alice"
    assert cell(page, s.id, "provider") == "runpod"
    assert cell(page, s.id, "gpu") == "h100"
    until(lambda: orchestrator.info(s.id).status == "running", 30, "the pod running")
    changed_at = time.monotonic()
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    shown = time.monotonic() - changed_at
    print(f"live latency: new row {appeared * 1000:.0f} ms, status change {shown * 1000:.0f} ms")
    assert cell(page, s.id, "url").startswith("http")
    assert cell(page, s.id, "ttl_left").endswith(("s", "m"))
    orchestrator.stop_tracked(s.id)


def test_touch_rearms_the_idle_clock(cluster: LocalCluster, page: WebDriver) -> None:
    s = spawn("bob")
    s.wait(30)
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    before = orchestrator.info(s.id).last_activity_ms or 0
    until(lambda: cluster_now_ms(cluster) > before + 50, 5, "the Redis clock to move")
    button(page, s.id, "touch").click()
    until(
        lambda: (orchestrator.info(s.id).last_activity_ms or 0) > before,
        5,
        "the idle clock re-armed",
    )
    until(
        lambda: any(a["action"] == "touch" for a in operator_actions(s.id)),
        5,
        "the operator_action event",
    )
    assert {"operator": OPERATOR, "action": "touch"}.items() <= operator_actions(s.id)[-1].items()
    assert pod_status(cluster, s.pod_name) == "RUNNING"
    orchestrator.stop_tracked(s.id)


def cluster_now_ms(cluster: LocalCluster) -> int:
    from atlas_tasks.redis_conn import get_redis

    seconds, micros = get_redis().time()
    return int(seconds) * 1000 + int(micros) // 1000


def test_stop_ends_the_pod(cluster: LocalCluster, page: WebDriver) -> None:
    s = spawn("dave")
    s.wait(30)
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    button(page, s.id, "stop").click()
    until(lambda: orchestrator.info(s.id).status == "terminated", 15, "the session ended")
    ended_at = time.monotonic()
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "terminated")
    print(f"live latency: terminated shown {(time.monotonic() - ended_at) * 1000:.0f} ms")
    assert pod_status(cluster, s.pod_name) == "TERMINATED"
    assert "ended" in (
        page.find_element(By.CSS_SELECTOR, f'tr[data-session-id="{s.id}"]').get_attribute("class")
        or ""
    )
    assert any(a["action"] == "stop" and a["operator"] == OPERATOR for a in operator_actions(s.id))


def test_terminate_asks_then_ends_the_pod_through_the_fence(
    cluster: LocalCluster, page: WebDriver
) -> None:
    s = spawn("erin")
    s.wait(30)
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    button(page, s.id, "terminate").click()
    dialog = page.find_element(By.ID, "confirm")
    wait(page, 2).until(lambda d: dialog.get_attribute("open") is not None)
    page.find_element(By.CSS_SELECTOR, '#confirm [data-confirm="no"]').click()
    wait(page, 2).until(lambda d: dialog.get_attribute("open") is None)
    assert orchestrator.info(s.id).status == "running"  # cancelled: nothing happened

    button(page, s.id, "terminate").click()
    wait(page, 2).until(lambda d: dialog.get_attribute("open") is not None)
    page.find_element(By.ID, "confirm-yes").click()
    until(lambda: pod_status(cluster, s.pod_name) == "TERMINATED", 15, "the pod deleted")
    wait(page, LIVE_BOUND_S + 1).until(lambda d: cell(d, s.id, "status") == "terminated")
    history = events.history(s.id)
    assert any(e.type == "terminating" and e.data.get("reason") == "operator" for e in history)
    assert any(
        e.type == "operator_action"
        and e.data["action"] == "terminate"
        and e.data["operator"] == OPERATOR
        for e in history
    )
    assert cluster.cloud.state()["totals"].get("deletes", 0) >= 1


def test_actions_without_csrf_token_are_refused(
    cluster: LocalCluster, dashboard: str, page: WebDriver
) -> None:
    s = spawn("frank")
    s.wait(30)
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    # From the logged-in page itself (cookie sent), without and with a wrong token.
    script = """
        const done = arguments[arguments.length - 1];
        const post = (headers) => fetch(arguments[0], {method: "POST", headers,
                                        credentials: "same-origin"}).then(r => r.status);
        Promise.all([post({}), post({"X-CSRF-Token": "forged"})]).then(done);
    """
    statuses = page.execute_async_script(script, f"api/sessions/{s.id}/stop")
    assert statuses == [403, 403]
    # A bearer client without its CSRF token is refused too, and accepted with it.
    bearer = {"Authorization": f"Bearer {TOKEN}", "X-Atlas-Operator": "script"}
    refused = httpx.post(dashboard + f"api/sessions/{s.id}/touch", headers=bearer)
    assert refused.status_code == 403
    assert orchestrator.info(s.id).status == "running"
    assert operator_actions(s.id) == []
    csrf = httpx.get(dashboard + "api/csrf", headers=bearer).json()["csrf"]
    accepted = httpx.post(
        dashboard + f"api/sessions/{s.id}/touch", headers={**bearer, "X-CSRF-Token": csrf}
    )
    assert accepted.status_code == 200, accepted.text
    assert operator_actions(s.id)[-1]["operator"] == "script"
    # Cross-origin requests are refused even with a valid token.
    cross = httpx.post(
        dashboard + f"api/sessions/{s.id}/touch",
        headers={**bearer, "X-CSRF-Token": csrf, "Origin": "http://evil.test"},
    )
    assert cross.status_code == 403
    orchestrator.stop_tracked(s.id)


def test_timeline_and_health(cluster: LocalCluster, page: WebDriver) -> None:
    s = spawn("grace")
    s.wait(30)
    wait(page, LIVE_BOUND_S).until(lambda d: cell(d, s.id, "status") == "running")
    button(page, s.id, "touch").click()
    page.find_element(
        By.CSS_SELECTOR, f'tr[data-session-id="{s.id}"] [data-action="timeline"]'
    ).click()
    wait(page, 5).until(
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '#timeline-events li[data-event-type="operator_action"]'
        )
    )
    types = [
        li.get_attribute("data-event-type")
        for li in page.find_elements(By.CSS_SELECTOR, "#timeline-events li")
    ]
    assert types[0] == "status" and "operator_action" in types
    wait(page, 10).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '#health [data-field="reaper"]').text == "sweeping"
        )
    )
    orchestrator.stop_tracked(s.id)


def test_orphans_listed_and_terminated_from_the_page(
    cluster: LocalCluster, page: WebDriver
) -> None:
    orphan = spawn_compute(provider="runpod", gpu="h100", image="x", name="atlas-lost-pod")
    foreign = spawn_compute(provider="runpod", gpu="h100", image="x", name="someone-else")
    page.find_element(By.ID, "scan-orphans").click()
    wait(page, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#orphan-table tr[data-pod-id="{orphan.id}"]')
    )
    row = page.find_element(By.CSS_SELECTOR, f'#orphan-table tr[data-pod-id="{orphan.id}"]')
    assert row.find_element(By.CSS_SELECTOR, '[data-field="kind"]').text == "orphan (in grace)"
    foreign_row = page.find_element(
        By.CSS_SELECTOR, f'#orphan-table tr[data-pod-id="{foreign.id}"]'
    )
    assert foreign_row.find_element(By.CSS_SELECTOR, '[data-field="kind"]').text == "foreign"
    assert foreign_row.find_elements(By.CSS_SELECTOR, '[data-action="terminate"]') == []
    row.find_element(By.CSS_SELECTOR, '[data-action="terminate"]').click()
    wait(page, 2).until(lambda d: d.find_element(By.ID, "confirm").get_attribute("open"))
    page.find_element(By.ID, "confirm-yes").click()
    until(lambda: pod_status(cluster, "atlas-lost-pod") == "TERMINATED", 15, "the orphan deleted")
    assert pod_status(cluster, "someone-else") == "RUNNING"


def test_filters_by_user_provider_and_status(cluster: LocalCluster, page: WebDriver) -> None:
    from selenium.webdriver.support.select import Select

    zoe, yan = spawn("zoe"), spawn("yan")
    zoe.wait(30)
    yan.wait(30)
    wait(page, LIVE_BOUND_S).until(
        lambda d: cell(d, zoe.id, "status") == "running" and cell(d, yan.id, "status") == "running"
    )

    def shown(session_id: str) -> bool:
        return bool(
            page.find_element(By.CSS_SELECTOR, f'tr[data-session-id="{session_id}"]').is_displayed()
        )

    page.find_element(By.ID, "f-user").send_keys("zoe")
    wait(page, 2).until(lambda d: shown(zoe.id) and not shown(yan.id))
    page.find_element(By.ID, "f-user").clear()
    page.execute_script("document.getElementById('f-user').dispatchEvent(new Event('input'))")
    Select(page.find_element(By.ID, "f-provider")).select_by_value("runpod")
    wait(page, 2).until(lambda d: shown(zoe.id) and shown(yan.id))
    orchestrator.stop_tracked(yan.id)
    status = Select(page.find_element(By.ID, "f-status"))
    status.select_by_value("terminated")
    wait(page, 15).until(lambda d: shown(yan.id) and not shown(zoe.id))
    status.select_by_value("")
    orchestrator.stop_tracked(zoe.id)
