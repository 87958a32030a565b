"""Secrets are never echoed: not by a server that repeats the Authorization header in its error bodies, not
when a secret was pasted into ``token_file`` or ``password_file`` by mistake.

The echoing server is scripted (aiohttp on a free loopback port): no real InfluxDB echoes headers. The daemon
is real: `edge-daq run` writing to it, with its log, /status and /metrics searched for every form of the
secrets (in clear, base64, and the basic-auth pair).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from edge_daq.errors import RetriableSinkError
from edge_daq.sinks.secrets import MASK, Scrubber, read_secret, scrub_credentials
from simulators import serve
from tests.daemon_process import DaemonProcess, log_lines, write_config
from tests.servers import free_port

TOKEN = "tok-SECRET-7f3a9c1e5b"
PASSWORD = "pw-SECRET-2b8d4e6f"
USER = "gw-writer"
PASTED = "pasted-SECRET-0c9e1d"  # a secret pasted into password_file instead of a path


def forms(secret: str, user: str = "") -> list[str]:
    found = [secret, base64.b64encode(secret.encode()).decode()]
    if user:
        found.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return found


def test_scrubber_masks_secrets_and_credential_patterns() -> None:
    scrub = Scrubber([TOKEN])
    scrub.add(PASSWORD, username=USER)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    text = (
        f'{{"error": "bad request", "headers": {{"Authorization": "Token {TOKEN}", "X-Echo": "{TOKEN}"}}, '
        f'"basic": "Basic {basic}", "raw": "{basic}", "url": "/write?db=x&u={USER}&p={PASSWORD}&precision=ns"}}'
    )
    scrubbed = scrub(text)
    for secret in [*forms(TOKEN), *forms(PASSWORD, USER)]:
        assert secret not in scrubbed
    assert '"Authorization": "***"' in scrubbed
    assert "&p=***&precision=ns" in scrubbed
    assert json.loads(scrubbed)["error"] == "bad request"  # what is not a credential is kept
    # Without knowing the secrets, the patterns alone.
    assert scrub_credentials("authorization: Bearer abc.def-ghi") == "authorization: ***"
    assert scrub_credentials("sent Bearer abc.def-ghi-jkl") == f"sent Bearer {MASK}"
    assert scrub_credentials("basic checks passed") == "basic checks passed"
    assert scrub_credentials("?u=admin&p=hunter2") == "?u=***&p=***"
    assert scrub_credentials("x" * 100_000).startswith("x")  # bounded: cut before the patterns run


async def test_a_secret_file_error_names_the_key_never_the_value(tmp_path: Path) -> None:
    with pytest.raises(RetriableSinkError) as raised:
        await read_secret(None, Path(PASTED), what="password_file")
    assert str(raised.value) == "cannot read the file given as password_file: No such file or directory"
    assert raised.value.__cause__ is None  # the OSError, which names the path, is not chained
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70_000)
    with pytest.raises(RetriableSinkError, match="over 64 KiB"):
        await read_secret(None, big, what="token_file")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + PASTED.encode())
    with pytest.raises(RetriableSinkError, match="not UTF-8 text") as raised:
        await read_secret(None, binary, what="token_file")
    assert PASTED not in str(raised.value)
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert await read_secret(None, good, what="token_file") == TOKEN


@pytest.fixture
async def echoing_server() -> AsyncIterator[str]:
    """Answers 500 for 1.5 s from its first request (retried), then 400 for 1.5 s (bisected, the points
    dropped), then 500 again; always with the URL and every request header in the message, as JSON (InfluxDB
    1.x style) or plain text, alternately."""
    requests = 0
    first: float | None = None

    async def echo(request: web.Request) -> web.Response:
        nonlocal requests, first
        requests += 1
        now = asyncio.get_running_loop().time()
        first = now if first is None else first
        await request.read()
        headers = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
        authorization = request.headers.get("Authorization", "")
        message = f"request {requests} rejected: Authorization: {authorization}; {request.rel_url} {headers}"
        status = 400 if 1.5 <= now - first < 3.0 else 500
        if requests % 2:
            return web.Response(text=message, status=status)
        return web.json_response({"error": message, "headers": dict(request.headers)}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("api", ["v2", "v1"])
async def test_no_secret_in_the_log_status_or_metrics(api: str, echoing_server: str, tmp_path: Path) -> None:
    if api == "v2":
        influx = {"url": echoing_server, "api": "v2", "org": "lab", "bucket": "b", "token": "${INFLUX_TOKEN}"}
        secrets = forms(TOKEN)
    else:
        influx = {"url": echoing_server, "api": "v1", "database": "d", "username": USER, "password": PASSWORD}
        secrets = forms(PASSWORD, USER)
    influx |= {"flush_interval": "100ms", "max_backoff": "1s"}
    mqtt = {"host": "127.0.0.1", "port": free_port(), "username": USER, "password_file": PASTED, "timeout": "1s"}
    os.environ["INFLUX_TOKEN"] = TOKEN  # inherited by the daemon
    try:
        async with serve("watlow-f4", seed=1) as chamber:
            http_port = free_port()
            outputs = {"influxdb": influx, "mqtt": mqtt}
            gateway = write_config(tmp_path, [chamber.port], http_port=http_port, outputs=outputs, reliability=False)
            async with DaemonProcess(gateway, http_port) as daemon:
                await asyncio.sleep(4)  # several rounds of 400 (bisected, dropped) and 500 (retried)
                _, status = await daemon.get("/status")
                _, metrics = await daemon.get("/metrics")
                _, healthz = await daemon.get("/healthz")
    finally:
        del os.environ["INFLUX_TOKEN"]
    assert daemon.returncode == 0
    entries = log_lines(daemon.log)
    outputs_status = {output["output"]: output for output in status["outputs"]}
    # The failures are there, with what the server said, minus the credentials.
    assert "Authorization: ***" in outputs_status["influxdb"]["last_error"]
    failures = [entry for entry in entries if entry["event"] == "output_failed" and entry["output"] == "influxdb"]
    assert failures
    assert any("Authorization: ***" in failed["error"] for failed in failures), failures
    rejected = [entry for entry in entries if entry["event"] == "influxdb_points_rejected"]
    assert rejected
    assert "Authorization: ***" in rejected[0]["message"]
    assert (
        outputs_status["mqtt"]["last_error"] == "cannot read the file given as password_file: No such file or directory"
    )
    shown = {"log": daemon.log, "/status": json.dumps(status), "/metrics": metrics, "/healthz": json.dumps(healthz)}
    occurrences = {where: sum(text.count(secret) for secret in [*secrets, PASTED]) for where, text in shown.items()}
    print(f"api {api}: secret occurrences {occurrences} in {len(entries)} log lines")
    assert occurrences == dict.fromkeys(shown, 0)
