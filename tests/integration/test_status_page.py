"""The status page in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium), served
by a real `edge-daq run` polling a Watlow F4 and a 32-socket burn-in board simulator over Modbus TCP.

The page must render the rig card, the 32 sockets and the instruments; show a stopped simulator's instrument
down within 5 s and a DUT the board fails as failed; keep updating across a reload (SIGHUP) that changes the
board's layout; load nothing but its own files (no request leaves loopback, from the browser's network log;
no CSP violation in its console). Screenshots are saved under the test's tmp folder and copied to
``$EDGE_DAQ_ARTIFACTS`` (default ``/tmp/edge-daq-artifacts``)/status-page, whose path the test prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from simulators import serve
from simulators.burnin_board import REG_BIAS, BurnInBoard, Failure
from tests.daemon_process import DaemonProcess
from tests.servers import free_port

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SOCKETS = 32
FAILED_SOCKET = 7
TOKEN = "page-test-token-5f1c0b9e"
POLL = 0.2


def write_gateway(folder: Path, chamber_port: int, board_port: int, http_port: int, layout: bool = False) -> Path:
    duts = [{"socket": s, "serial": f"P{s:04d}", "lot": "L-PAGE"} for s in range(1, SOCKETS + 1)]
    rig: dict[str, Any] = {
        "rig": "htol-page",
        "test": {"id": "T-PAGE", "kind": "HTOL"},
        "duts": duts,
        "instruments": [
            {"name": "chamber", "profile": "watlow-f4", "host": "127.0.0.1", "port": chamber_port,
             "interval": POLL, "timeout": 0.3},
            {"name": "board1", "profile": "burnin-board", "host": "127.0.0.1", "port": board_port,
             "interval": POLL, "timeout": 0.3},
        ],
        "stress": {"all": [{"point": "board1.bias_enable", "equals": 1, "reason": "bias off"}],
                   "milestones": ["1h", "2h"]},
        "failures": {"confirm": 2, "rules": [{"name": "open", "field": "i", "below": 1.0, "mode": "open"}]},
    }  # fmt: skip
    if layout:
        rig["layout"] = {"board1": {"rows": 8, "columns": 4}}
    (folder / "rigs.d").mkdir(exist_ok=True)
    (folder / "rigs.d" / "htol-page.yaml").write_text(yaml.safe_dump(rig, sort_keys=False))
    (folder / "token").write_text(TOKEN + "\n")
    gateway = folder / "gateway.yaml"
    gateway.write_text(
        yaml.safe_dump(
            {
                "gateway": "gw-page",
                "rigs": "rigs.d/",
                "state_dir": str(folder / "state"),
                "http": {"listen": f"127.0.0.1:{http_port}", "token_file": str(folder / "token")},
                "outputs": {"file": {"dir": str(folder / "archive"), "flush_interval": "100ms"}},
            }
        )
    )
    return gateway


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1600",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: webdriver.Chrome, condition: Any, within: float, what: str) -> Any:
    """Wait (in the calling thread) until ``condition(driver)`` is truthy; fail naming ``what``."""

    def check(d: webdriver.Chrome) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:  # the page re-rendered between finding and reading
            return False

    return WebDriverWait(driver, within, poll_frequency=0.1).until(check, message=f"page never showed {what}")


def state_of(driver: webdriver.Chrome, selector: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].get_attribute("data-state") if found else None


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):  # type: ignore[no-untyped-call]
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


async def post(url: str, token: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_status_page_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Fail, never skip: .ci/run installs them.
    for program in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(program), f"{program}: apt-get install chromium chromium-driver"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    http_port = free_port()
    chamber_stack = contextlib.AsyncExitStack()
    chamber_port = (await chamber_stack.enter_async_context(serve("watlow-f4", seed=3))).port
    async with (
        chamber_stack,
        serve("burnin-board", seed=5, bias=False, failures=[Failure(FAILED_SOCKET, 1.0, "open")]) as board_server,
    ):
        board = board_server.devices[1]
        assert isinstance(board, BurnInBoard)
        gateway = write_gateway(tmp_path, chamber_port, board_server.port, http_port)
        async with DaemonProcess(gateway, http_port) as daemon:
            with chromium(tmp_path / "chromium-profile") as driver:
                await asyncio.to_thread(driver.get, daemon.url + "/")
                # The rig card, its 32 sockets and both instruments up.
                await asyncio.to_thread(
                    wait_for,
                    driver,
                    lambda d: d.find_elements(By.CSS_SELECTOR, '[data-rig="htol-page"]'),
                    10,
                    "the rig",
                )
                cells = await asyncio.to_thread(
                    wait_for, driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".cell") or None, 10, "sockets"
                )
                assert len(cells) == SOCKETS
                for name in ("chamber", "board1"):
                    selector = f'[data-instrument="{name}"]'
                    await asyncio.to_thread(
                        wait_for, driver, lambda d, s=selector: state_of(d, s) == "up", 10, f"{name} up"
                    )
                card = driver.find_element(By.CSS_SELECTOR, '[data-rig="htol-page"]').text
                assert "T-PAGE" in card
                assert "32 active" in card.replace("\n", " ")
                assert "bias off" in card  # stress not accruing yet, and why
                await asyncio.to_thread(driver.save_screenshot, str(shots / "1-running.png"))

                # Bias on: the board's socket 7 opens after 1 s of stress, and the page shows it failed.
                board.apply_write(REG_BIAS, 1)
                failed = f'.cell[data-socket="{FAILED_SOCKET}"]'
                await asyncio.to_thread(
                    wait_for, driver, lambda d: state_of(d, failed) == "failed", 15, f"socket {FAILED_SOCKET} failed"
                )
                driver.find_element(By.CSS_SELECTOR, failed).click()  # a tap shows the failure's details
                detail = await asyncio.to_thread(
                    wait_for, driver, lambda d: d.find_element(By.ID, "cell-detail").text or None, 5, "the details"
                )
                assert f"P{FAILED_SOCKET:04d}" in detail
                assert "open" in detail
                assert "stress at failure" in detail
                await asyncio.to_thread(driver.save_screenshot, str(shots / "2-socket-failed.png"))

                # Actions need the token; the page and /status never show it.
                action = f"{daemon.url}/api/rigs/htol-page/test/pause"
                assert (await post(action, None))[0] == 401
                assert (await post(action, "wrong"))[0] == 401
                status, reply, headers = await post(action, TOKEN)
                assert status == 200, reply
                assert reply["ok"], reply
                assert "default-src 'none'" in headers["Content-Security-Policy"]
                for path in ("/api/page", "/status", "/"):
                    code, body = await daemon.get(path)
                    assert code == 200
                    assert TOKEN not in json.dumps(body)
                await asyncio.to_thread(
                    wait_for, driver, lambda d: state_of(d, '[data-rig="htol-page"] .badge') == "paused", 5, "paused"
                )

                # The chamber's simulator stops: its instrument turns down within 5 s.
                await chamber_stack.aclose()
                await asyncio.to_thread(
                    wait_for, driver, lambda d: state_of(d, '[data-instrument="chamber"]') == "down", 5, "chamber down"
                )
                await asyncio.to_thread(driver.save_screenshot, str(shots / "3-chamber-down.png"))

                # A reload with a layout: the same page, without reloading it, shows the board as 8 x 4.
                write_gateway(tmp_path, chamber_port, board_server.port, http_port, layout=True)
                daemon.reload()
                board_map = '[data-board="board1"]'
                await asyncio.to_thread(
                    wait_for,
                    driver,
                    lambda d: d.find_element(By.CSS_SELECTOR, board_map).get_attribute("data-columns") == "4",
                    10,
                    "the new layout",
                )
                assert state_of(driver, failed) == "failed"
                await asyncio.to_thread(driver.save_screenshot, str(shots / "4-after-reload.png"))

                urls = await asyncio.to_thread(requested_urls, driver)
                console = await asyncio.to_thread(driver.get_log, "browser")
    assert daemon.returncode == 0, daemon.log[-3000:]
    # Nothing but the daemon itself: every request the browser made went to loopback.
    assert any(url.endswith("/api/page") for url in urls), urls
    parts = [urllib.parse.urlsplit(url) for url in urls]
    # chrome:// and chrome-untrusted:// (its start page, before the test's first navigation; which of them a
    # Chromium release uses varies), data:, about: and blob: never leave the browser.
    internal = {"chrome", "chrome-untrusted", "data", "about", "blob"}
    assert {p.scheme for p in parts} <= {"http", "https", "ws", "wss"} | internal, urls
    network = [p for p in parts if p.scheme in ("http", "https", "ws", "wss")]
    outside = [p.geturl() for p in network if p.hostname not in ("127.0.0.1", "localhost", "::1")]
    assert not outside, outside
    assert {p.port for p in network} == {http_port}, urls
    # The page runs under its CSP: no violation (nor any other error) in the console.
    assert not [entry for entry in console if entry["level"] == "SEVERE"], console
    artifacts = Path(os.environ.get("EDGE_DAQ_ARTIFACTS", "/tmp/edge-daq-artifacts")) / "status-page"
    shutil.copytree(shots, artifacts, dirs_exist_ok=True)
    with capsys.disabled():
        print(f"\nstatus page screenshots: {shots} (copied to {artifacts})")
    assert sorted(path.name for path in artifacts.glob("*.png"))[:4] == [
        "1-running.png",
        "2-socket-failed.png",
        "3-chamber-down.png",
        "4-after-reload.png",
    ]
