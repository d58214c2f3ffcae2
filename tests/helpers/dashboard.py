"""A real dashboard server on an ephemeral loopback port, run on its own thread, and a tiny client."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dxf_celery.dashboard.server import Dashboard, make_app
from dxf_celery.storage import TaskManager


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    port: int
    token: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        auth: str | None = "bearer",
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        all_headers = dict(headers or {})
        if self.token and auth == "bearer":
            all_headers["Authorization"] = f"Bearer {self.token}"
        elif self.token and auth == "basic":
            all_headers["Authorization"] = "Basic " + base64.b64encode(f"any:{self.token}".encode()).decode()
        try:
            conn.request(method, path, body=body, headers=all_headers)
            raw = conn.getresponse()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, payload: Any = None, *, header: bool = True, **kw: Any) -> Response:
        headers = {"Content-Type": "application/json"}
        if header:
            headers["X-DXF-Request"] = "1"
        body = json.dumps(payload).encode() if payload is not None else b""
        return self.request("POST", path, body=body, headers=headers, **kw)


@contextmanager
def running_dashboard(tm: TaskManager, **options: Any) -> Iterator[Client]:
    """Serve ``make_app`` on 127.0.0.1:<free port> until the block ends."""
    dash = Dashboard(tm, **options)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            from tornado.httpserver import HTTPServer
            from tornado.netutil import bind_sockets

            sockets = bind_sockets(0, address="127.0.0.1")
            server = HTTPServer(make_app(dash))
            server.add_sockets(sockets)
            holder["server"] = server
            holder["port"] = sockets[0].getsockname()[1]
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        holder["server"].stop()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="dashboard-test", daemon=True)
    thread.start()
    assert ready.wait(30), "the dashboard did not start"
    try:
        yield Client(int(holder["port"]), options.get("token"))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        dash.close()
