"""The dashboard's Tornado application: static pages, JSON endpoints, actions and ``/metrics``.

Every figure comes from SQL through :mod:`dxf_celery.dashboard.views`, read on a small
thread pool so a slow database never blocks the event loop. Actions call the client API
(:mod:`dxf_celery.handle`), exactly as ``celery dxf pause`` does, and are refused (403)
unless the dashboard was started with actions enabled. A POST must carry the
``X-DXF-Request`` header: a cross-site form cannot set it, so a page on another origin
cannot steer tasks through a logged-in browser.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, TypeVar

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dxf_celery import handle
from dxf_celery.dashboard import views
from dxf_celery.errors import DXFError, InvalidTaskError, TaskNotFoundError, TaskStateNotAllowedError
from dxf_celery.metrics import sql_registry
from dxf_celery.proto import TaskState
from dxf_celery.storage import TaskManager

T = TypeVar("T")

#: Version of the JSON documents; bumped only on an incompatible change (docs/dashboard.md).
API_VERSION = 1
#: How often the pages poll the JSON endpoints, in seconds.
POLL_INTERVAL = 1.0
ACTIONS = ("cancel", "pause", "resume", "modify")
ACTION_HEADER = "X-DXF-Request"
TOKEN_COOKIE = "dxf_dashboard_token"

STATIC_DIR = str(resources.files("dxf_celery.dashboard") / "static")


class DashboardConfigError(DXFError, ValueError):
    """The dashboard cannot start as asked (e.g. a non-loopback address without a token)."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: the pages show every task's errors."""
    if not is_loopback(host) and not token:
        raise DashboardConfigError(
            f"refusing to listen on {host} without --token (or DXF_DASHBOARD_TOKEN): "
            "anyone who can reach it would see every task; bind 127.0.0.1 or set a token"
        )


class Dashboard:
    """What the handlers share: the TaskManager, the switches, and the thread pool for SQL."""

    def __init__(
        self,
        tm: TaskManager,
        *,
        actions: bool = False,
        token: str | None = None,
        node_ttl: float | None = None,
        wake: Callable[[str], None] | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.tm = tm
        self.actions = actions
        self.token = token or None
        self.node_ttl = node_ttl
        self.wake = wake
        self.poll_interval = poll_interval
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dxf-dashboard")
        self.registry = sql_registry(tm)

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Base(tornado.web.RequestHandler):
    dash: Dashboard

    def initialize(self, dash: Dashboard) -> None:
        self.dash = dash

    def prepare(self) -> None:
        token = self.dash.token
        if token is None:
            return
        if self._presented_token() is not None and hmac.compare_digest(self._presented_token() or "", token):
            if self.get_query_argument("token", None) is not None:
                self.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return
        self.set_header("WWW-Authenticate", 'Basic realm="dxf dashboard"')
        self._error(401, "authentication required: send the dashboard token as a Bearer token or basic-auth password")

    def _presented_token(self) -> str | None:
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :].strip()
        if auth.startswith("Basic "):
            try:
                _, _, password = base64.b64decode(auth[len("Basic ") :]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return password
        query = self.get_query_argument("token", None)
        if query is not None:
            return query
        cookie = self.get_cookie(TOKEN_COOKIE)
        return cookie if cookie else None

    def _json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message, "status": status}, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._json({"error": self._reason, "status": status_code}, status_code)


class PageHandler(_Base):
    """Every page is the same shell; the script picks the view from the path."""

    async def get(self, *_: str) -> None:
        self.set_header("Cache-Control", "no-store")
        with open(f"{STATIC_DIR}/index.html", "rb") as f:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(f.read())


class ConfigHandler(_Base):
    async def get(self) -> None:
        self._json({"api_version": API_VERSION, "actions": self.dash.actions, "poll_interval": self.dash.poll_interval})


class TasksHandler(_Base):
    async def get(self) -> None:
        states = self.get_query_arguments("state")
        known = {s.value for s in TaskState}
        bad = [s for s in states if s not in known]
        if bad:
            return self._error(400, f"unknown state {bad[0]!r}; use one of {', '.join(sorted(known))}")
        try:
            limit = int(self.get_query_argument("limit", "100"))
        except ValueError:
            return self._error(400, "limit must be an integer")
        if not 1 <= limit <= 10_000:
            return self._error(400, "limit must be between 1 and 10000")
        self._json(await self.dash.run(lambda: views.tasks_view(self.dash.tm, states=states, limit=limit)))


class TaskHandler(_Base):
    async def get(self, key_or_id: str) -> None:
        try:
            doc = await self.dash.run(lambda: views.task_detail_view(self.dash.tm, key_or_id))
        except TaskNotFoundError as err:
            return self._error(404, str(err))
        self._json(doc)


class NodesHandler(_Base):
    async def get(self) -> None:
        self._json(await self.dash.run(lambda: views.nodes_view(self.dash.tm, node_ttl=self.dash.node_ttl)))


class ActionHandler(_Base):
    """``POST /api/tasks/<key or id>/<action>``: cancel, pause, resume, or modify (JSON body)."""

    async def post(self, key_or_id: str, action: str) -> None:
        if not self.dash.actions:
            return self._error(403, "actions are disabled: start the dashboard with --enable-actions")
        if self.request.headers.get(ACTION_HEADER) != "1":
            return self._error(403, f"actions need the {ACTION_HEADER}: 1 header")
        body: dict[str, Any] = {}
        if action == "modify":
            try:
                parsed = json.loads(self.request.body or b"{}")
            except ValueError:
                return self._error(400, "the body must be JSON")
            if not isinstance(parsed, dict):
                return self._error(400, "the body must be a JSON object")
            body = parsed
        try:
            ok, task = await self.dash.run(lambda: self._act(key_or_id, action, body))
        except TaskNotFoundError as err:
            return self._error(404, str(err))
        except TaskStateNotAllowedError as err:
            return self._error(409, str(err))
        except InvalidTaskError as err:
            return self._error(400, str(err))
        if not ok:
            return self._error(409, f"task {task.key!r} is {task.state.value}; it cannot {action} now")
        if self.dash.wake is not None:
            await self.dash.run(lambda: self.dash.wake(action) if self.dash.wake else None)
        self._json({"ok": True, "action": action, "id": task.id, "key": task.key})

    def _act(self, key_or_id: str, action: str, body: dict[str, Any]) -> tuple[bool, Any]:
        tm = self.dash.tm
        task = views.find_task(tm, key_or_id)
        if action == "cancel":
            return handle.cancel_task(tm, task.id), task
        if action == "pause":
            return handle.pause_task(tm, task.id), task
        if action == "resume":
            return handle.resume_task(tm, task.id), task
        unknown = set(body) - {"concurrency", "max_node_count"}
        if unknown:
            raise InvalidTaskError(f"modify takes concurrency and max_node_count, not {sorted(unknown)}")
        handle.modify_task(tm, task.id, concurrency=body.get("concurrency"), max_node_count=body.get("max_node_count"))
        return True, task


class MetricsHandler(_Base):
    async def get(self) -> None:
        data = await self.dash.run(lambda: generate_latest(self.dash.registry))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(data)


class NotFoundHandler(_Base):
    async def get(self, *_: str) -> None:
        self._error(404, f"no such page or endpoint: {self.request.path}")

    post = get


def make_app(dash: Dashboard) -> tornado.web.Application:
    """The routes; docs/dashboard.md lists the JSON ones as the stable API."""
    kw = {"dash": dash}
    actions = "|".join(ACTIONS)
    return tornado.web.Application(
        [
            (r"/", PageHandler, kw),
            (r"/nodes", PageHandler, kw),
            (r"/tasks/([^/]+)", PageHandler, kw),
            (r"/api/config", ConfigHandler, kw),
            (r"/api/tasks", TasksHandler, kw),
            (rf"/api/tasks/([^/]+)/({actions})", ActionHandler, kw),
            (r"/api/tasks/([^/]+)", TaskHandler, kw),
            (r"/api/nodes", NodesHandler, kw),
            (r"/metrics", MetricsHandler, kw),
            (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": STATIC_DIR}),
            (r"(.*)", NotFoundHandler, kw),
        ],
        compress_response=True,
    )


__all__ = [
    "ACTIONS",
    "ACTION_HEADER",
    "API_VERSION",
    "Dashboard",
    "DashboardConfigError",
    "check_bind",
    "is_loopback",
    "make_app",
]
