"""Writing over HTTP: ``POST /write``, off unless the gateway file enables it, and then only with its token.

Gateway file::

    http:
      listen: 127.0.0.1:9108
      writes: {enabled: true, token_file: /etc/edge-daq/write-token}   # off by default

Request: ``Authorization: Bearer <token>`` and a JSON body ``{"rig", "instrument", "point", "value",
"reason", "user"}`` of at most :data:`MAX_BODY` bytes. ``user`` is recorded as claimed by the token's holder
(``who`` is ``http <address> as <user>``). The reply is the write's outcome, as ``edge-daq write`` prints it:
200 when verified, 409 when refused or failed, 401 without the token, 400 for a malformed body. The token is
compared in constant time and never appears in a reply, the log, the page or /status.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from edge_daq.writes.http_config import HttpWritesConfig
from edge_daq.writes.service import WriteOrder, WriteService

MAX_BODY = 4096
MIN_TOKEN_CHARS = 16
log = structlog.get_logger("edge_daq.writes.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def write_handler(service: WriteService, token: str) -> Handler:
    expected = f"Bearer {token}".encode()

    async def handle(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not token or not hmac.compare_digest(given, expected):
            return web.json_response({"ok": False, "error": "a valid bearer token is required"}, status=401)
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.json_response({"ok": False, "error": f"a write request is at most {MAX_BODY} bytes"}, status=400)
        try:
            data: Any = json.loads(body)  # at most MAX_BODY bytes: cheap on the loop
            value = float(data["value"])
            order = WriteOrder(
                rig=str(data["rig"]),
                instrument=str(data["instrument"]),
                point=str(data["point"]),
                value=value,
                who=f"http {request.remote}" + (f" as {str(data['user'])[:64]}" if data.get("user") else ""),
                why=str(data.get("reason", ""))[:500],
                source="http",
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            message = "expected JSON {rig, instrument, point, value, reason}"
            return web.json_response({"ok": False, "error": message}, status=400)
        reply = (await service.write(order)).reply()
        return web.json_response(reply, status=200 if reply["ok"] else 409)

    return handle


async def routes(config: HttpWritesConfig, service: WriteService) -> dict[str, Handler]:
    """``{"/write": handler}`` when writing over HTTP is enabled and its token could be read; else none."""
    if not config.enabled or config.token_file is None:
        return {}
    from edge_daq.errors import SinkError
    from edge_daq.sinks.secrets import read_secret

    try:
        token = await read_secret(None, config.token_file, what="http.writes.token_file")
    except SinkError as error:
        log.error("http_writes_disabled", reason=str(error))
        return {}
    if not token or len(token) < MIN_TOKEN_CHARS:
        log.error("http_writes_disabled", reason=f"the token must have at least {MIN_TOKEN_CHARS} characters")
        return {}
    return {"/write": write_handler(service, token)}
