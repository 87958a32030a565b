"""The status page without a browser: board layouts, the page's document from a daemon built from the shipped
configuration, its feed, and the endpoint's security (read-only without a token, CSP on every response)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from edge_daq.config.layout import BoardLayout, grid
from edge_daq.config.loader import LoadedConfig, load_config, shipped_profiles_folder
from edge_daq.daemon import Daemon
from edge_daq.errors import ConfigError
from edge_daq.record import Record, Series
from edge_daq.service.http import HttpEndpoint
from edge_daq.service.lifecycle import http_endpoint
from edge_daq.service.page import CONTENT_SECURITY_POLICY
from edge_daq.service.page_model import EVENTS_KEPT, PageFeed

TOKEN = "unit-test-token-3c9d"


def shipped(tmp_path: Path) -> LoadedConfig:
    loaded = load_config(shipped_profiles_folder().parent / "edge-daq.yaml")
    gateway = loaded.gateway.model_copy(update={"state_dir": tmp_path / "state"})
    return dataclasses.replace(loaded, gateway=gateway)


@pytest.mark.parametrize(
    ("sockets", "shape"), [(32, (4, 8)), (48, (6, 8)), (16, (4, 4)), (7, (3, 3)), (1, (1, 1)), (0, (0, 0))]
)
def test_grid_from_the_channel_count(sockets: int, shape: tuple[int, int]) -> None:
    assert grid(sockets) == shape


def test_layout_counts() -> None:
    assert BoardLayout(columns=4).shape(32) == (8, 4)
    assert BoardLayout(rows=2).shape(32) == (2, 16)
    with pytest.raises(ValidationError, match="give rows, columns or both"):
        BoardLayout()


def rig_with_layout(tmp_path: Path, layout: str) -> Path:
    (tmp_path / "rigs.d").mkdir()
    (tmp_path / "rigs.d" / "r.yaml").write_text(
        "rig: r\ninstruments:\n"
        "  - {name: board1, profile: burnin-board, host: 127.0.0.1, port: 15021}\n"
        "  - {name: chamber, profile: watlow-f4, host: 127.0.0.1, port: 15020}\n"
        f"layout: {layout}\n"
    )
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(f"gateway: gw\nrigs: rigs.d/\nstate_dir: {tmp_path / 'state'}\n")
    return gateway


def test_a_layout_is_checked_against_the_channels(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(rig_with_layout(tmp_path, "{chamber: {rows: 2}, board1: {rows: 2, columns: 2}}"))
    text = str(error.value)
    assert "'chamber' is not an instrument with channels: (those are: board1)" in text
    assert "board1: 2 x 2 cells cannot hold its 32 channels" in text


def test_a_layout_loads(tmp_path: Path) -> None:
    rig = load_config(rig_with_layout(tmp_path, "{board1: {columns: 4, order: columns}}")).rigs[0]
    assert rig.layout["board1"].shape(32) == (8, 4)


def test_the_document_shows_the_shipped_rig_with_its_32_sockets(tmp_path: Path) -> None:
    daemon = Daemon(shipped(tmp_path))
    endpoint, feed = http_endpoint(daemon, listen="127.0.0.1:0", token=None)
    assert endpoint.page is not None
    model = endpoint.page.model
    tags = {"rig": "htol-07", "instrument": "board1", "socket": "07", "dut": "A3-0007"}
    feed.on_record(Record(Series("burnin", tags), {"v": 3.3, "i": 4.0}, 1))
    feed.on_record(Record(Series("burnin", {**tags, "kind": "flag"}), {"oc": False}, 2))  # one poll, two series
    series = Series("burnin", tags)
    feed.on_record(Record(series, {"v": 3.3, "i": 45.1}, 3))
    feed.on_record(Record(series, {"v": 3.3, "i": 45.1}, 4))  # the next poll replaces the last
    feed.on_record(Record(Series("edge_daq_event", {"rig": "htol-07", "event": "note"}), {"message": "x" * 500}, 3))
    document = json.loads(model.cached("page", None))
    assert document["rig"] == "htol-07"
    (card,) = document["rigs"]
    assert (card["test"], card["state"]) == (None, "no test")  # the rig file's test starts once the daemon runs
    assert card["duts"] == {"active": 32, "failed": 0, "removed": 0}
    assert card["next_milestone_h"] == 168.0
    (board,) = document["boards"]
    assert (board["instrument"], board["rows"], board["columns"], len(board["cells"])) == ("board1", 4, 8, 32)
    cell = board["cells"][6]
    values = {"v": 3.3, "i": 45.1, "oc": False}
    assert cell == {"socket": 7, "status": "active", "dut": "A3-0007", "lot": "L2611-03", "values": values}
    assert [i["state"] for i in document["instruments"]] == ["waiting", "waiting"]
    (event,) = document["events"]
    assert event["kind"] == "note"
    assert len(event["message"]) == 80
    assert document["control"] is False
    # Built once however many browsers ask within a second.
    assert model.cached("page", "no-such-rig") is model.cached("page", "htol-07")
    assert model.documents_built == 1


def test_the_document_shows_the_spool_against_its_caps(tmp_path: Path) -> None:
    loaded = shipped(tmp_path)
    buffer = loaded.gateway.buffer.model_copy(update={"spool_dir": tmp_path / "spool", "spool_max_bytes": 1 << 20})
    daemon = Daemon(dataclasses.replace(loaded, gateway=loaded.gateway.model_copy(update={"buffer": buffer})))
    endpoint, _ = http_endpoint(daemon, listen="127.0.0.1:0", token=None)
    assert endpoint.page is not None
    assert daemon.stats.spool is not None
    daemon.stats.spool.bytes = 1 << 18
    spool = json.loads(endpoint.page.model.cached("page", None))["spool"]
    assert (spool["kind"], spool["max_bytes"], spool["use"]) == ("spool", 1 << 20, 0.25)


def test_the_feed_keeps_a_bounded_number_of_events_and_forgets_removed_instruments(tmp_path: Path) -> None:
    daemon = Daemon(shipped(tmp_path))
    feed = PageFeed(daemon.ring)
    for number in range(EVENTS_KEPT + 50):
        feed.on_record(Record(Series("edge_daq_event", {"gateway": "gw"}), {"kind": "config_change", "n": number}, 0))
    assert len(feed.events) == EVENTS_KEPT
    feed.on_record(Record(Series("m", {"rig": "r", "instrument": "gone"}), {"x": 1.0}, 0))
    feed.on_record(Record(Series("m", {"rig": "r", "instrument": "kept"}), {"x": 1.0, "s": "text"}, 0))
    feed.sample_trends()
    feed.forget({("r", "kept")})
    assert list(feed.instruments) == [("r", "kept")]
    assert {name: list(points) for name, points in feed.trends[("r", "kept")].items()} == {"x": [1.0]}  # numbers only


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[HttpEndpoint]:
    daemon = Daemon(shipped(tmp_path))
    endpoint, _ = http_endpoint(daemon, listen="127.0.0.1:0", token=request.param)
    async with endpoint:
        yield endpoint


@pytest.mark.parametrize("served", [None], indirect=True)
async def test_read_only_without_a_token_and_csp_everywhere(served: HttpEndpoint) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/static/page.js", "/static/page.css", "/api/page", "/status", "/metrics", "/nowhere"):
            async with session.get(served.url + path) as response:
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.status == (404 if path == "/nowhere" else 200), path
        async with session.post(
            served.url + "/api/rigs/htol-07/test/pause", headers={"Authorization": "Bearer x"}
        ) as r:
            assert r.status == 403
            assert "read-only" in (await r.json())["error"]
            assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assets = {}
        for path in ("/", "/static/page.js", "/static/page.css"):
            async with session.get(served.url + path) as response:
                assets[path] = await response.text()
    # Nothing from elsewhere: the page's own files by absolute path, no URL in its style sheet, and the one
    # "://" in its script is the SVG namespace (an identifier, never fetched).
    assert set(re.findall(r'(?:src|href)="([^"]*)"', assets["/"])) == {
        "/static/page.css",
        "/static/page.js",
        "/static/favicon.svg",
    }
    assert "url(" not in assets["/static/page.css"]
    assert "@import" not in assets["/static/page.css"]
    assert re.findall(r"\w+://[^\"']*", assets["/static/page.js"]) == ["http://www.w3.org/2000/svg"]


@pytest.mark.parametrize("served", [TOKEN], indirect=True)
async def test_actions_need_the_token(served: HttpEndpoint) -> None:
    url = served.url + "/api/rigs/htol-07/test/"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN[:-1]}):
            async with session.post(url + "pause", headers=headers) as response:
                assert response.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(url + "explode", headers=bearer) as response:
            assert response.status == 404
        async with session.post(url + "resume", headers=bearer) as response:
            assert response.status == 409  # the engine's answer: no test is running yet (the daemon is not)
            assert (await response.json())["ok"] is False
        async with session.get(served.url + "/api/page") as response:
            text = await response.text()
            assert json.loads(text)["control"] is True
            assert TOKEN not in text
    assert served.page is not None
    assert served.page.refused == 4  # three without the token, one unknown action
