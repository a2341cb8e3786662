"""Regenerate docs/dashboard.png: the ops page with a few sessions on a local cluster.

    .venv/bin/python docs/make_dashboard_screenshot.py

Needs redis-server, chromium and chromium-driver (Debian packages).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from atlas_tasks import orchestrator
from atlas_tasks.sdk import spawn_compute
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess

TOKEN = "screenshot-token-0123456789abcdef"
OUT = Path(__file__).with_name("dashboard.png")


def main() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with LocalCluster(fakecloud={"boot_delay_s": 0.0}, orphan_grace_ms=600_000) as cluster:
        proc = ManagedProcess(
            name="dashboard",
            env={**cluster.env, "ATLAS_DASHBOARD_TOKEN": TOKEN},
            args=[sys.executable, "-m", "atlas_tasks", "dashboard", "--port", str(port)],
        ).start()
        url = f"http://127.0.0.1:{port}/"
        proc.wait_until(lambda: _answers(url), 30, "the dashboard")
        sessions = []
        for user, gpu, ttl in (
            ("alice", "h100", 900_000),
            ("bob", "a100_80g", 600_000),
            ("carol", "l40s", 300_000),
            ("dave", "rtx_4090", 900_000),
            ("erin", "h100", 120_000),
        ):
            sessions.append(
                orchestrator.spawn(
                    provider="runpod",
                    gpu=gpu,
                    image="ghcr.io/acme/infer:1",
                    ports=[(8000, "http")],
                    auth="bearer",
                    user_id=user,
                    idle_ttl_ms=ttl,
                )
            )
        for s in sessions:
            s.wait(30)
        spawn_compute(provider="runpod", gpu="h100", image="x", name="atlas-left-behind")
        spawn_compute(provider="runpod", gpu="l4", image="x", name="team-b-notebook")
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1500,1100",
            "--hide-scrollbars",
        ):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url)
            driver.find_element(By.NAME, "token").send_keys(TOKEN)
            driver.find_element(By.NAME, "operator").send_keys("ada")
            driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait = WebDriverWait(driver, 10)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-session-id]")) == 5)
            first = sessions[1].id
            driver.find_element(
                By.CSS_SELECTOR, f'tr[data-session-id="{first}"] [data-action="touch"]'
            ).click()
            driver.find_element(
                By.CSS_SELECTOR, f'tr[data-session-id="{sessions[3].id}"] [data-action="stop"]'
            ).click()
            wait.until(
                lambda d: (
                    d.find_element(
                        By.CSS_SELECTOR,
                        f'tr[data-session-id="{sessions[3].id}"] [data-field="status"]',
                    ).text
                    == "terminated"
                )
            )
            driver.find_element(By.ID, "scan-orphans").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#orphan-table tr[data-pod-id]"))
            driver.find_element(
                By.CSS_SELECTOR, f'tr[data-session-id="{first}"] [data-action="timeline"]'
            ).click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline-events li"))
            wait.until(
                lambda d: (
                    d.find_element(By.CSS_SELECTOR, '#health [data-field="reaper"]').text
                    == "sweeping"
                )
            )
            time.sleep(1.5)  # let the flash highlight of the last update fade for the picture
            driver.save_screenshot(str(OUT))
            print(f"wrote {OUT}")
        finally:
            driver.quit()
            proc.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "login", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
