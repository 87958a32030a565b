"""A scripted stand-in for InfluxDB 2.x/3.x, only for the replies no server installed here produces.

InfluxDB 1.6 cannot answer 413, 422, 429 or 401 on ``/api/v2/write``, and VictoriaMetrics answers 204 to
everything, so these status codes come from this small aiohttp server. It records every write request
(decompressed) and answers with whatever its ``respond`` function returns for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One request as the server saw it (the body already gunzipped by aiohttp)."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    lines: list[str]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 204
    json_body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Respond = Callable[[WriteRequest], Reply | Awaitable[Reply]]


def accept_all(request: WriteRequest) -> Reply:
    return Reply(204)


class FakeInfluxDB:
    """``async with FakeInfluxDB(respond) as fake``: ``fake.url``, ``fake.requests``, ``fake.written_lines``."""

    def __init__(self, respond: Respond = accept_all) -> None:
        self.respond = respond
        self.requests: list[WriteRequest] = []
        self.written_lines: list[str] = []  # lines of the requests answered 2xx
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        app.router.add_post("/write", self._write)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    async def __aenter__(self) -> FakeInfluxDB:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.close()

    async def _write(self, http_request: web.Request) -> web.Response:
        body = await http_request.text()
        request = WriteRequest(
            path=http_request.path,
            query=dict(http_request.query),
            headers=dict(http_request.headers),
            lines=[line for line in body.splitlines() if line],
        )
        self.requests.append(request)
        reply = self.respond(request)
        if inspect.isawaitable(reply):
            reply = await reply
        if 200 <= reply.status < 300:
            self.written_lines.extend(request.lines)
        if reply.json_body is None:
            return web.Response(status=reply.status, headers=dict(reply.headers))
        return web.json_response(dict(reply.json_body), status=reply.status, headers=dict(reply.headers))
