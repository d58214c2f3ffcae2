"""Serving the dashboard: ``serve`` for ``celery dxf dashboard``, and ``python -m dxf_celery.dashboard``.

The ``celery dxf`` command itself lives with the other commands (:mod:`dxf_celery.cli.dashboard`);
this module holds what both share (the options, the server loop) and the standalone command.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import click

from dxf_celery.errors import DXFError
from dxf_celery.storage import TaskManager

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def dashboard_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--host",
        default=DEFAULT_HOST,
        show_default=True,
        help="Address to listen on; beyond loopback a --token is required.",
    )(fn)
    fn = click.option(
        "--port",
        default=DEFAULT_PORT,
        show_default=True,
        type=click.IntRange(0, 65535),
        help="TCP port (0 picks a free one).",
    )(fn)
    fn = click.option(
        "--enable-actions", is_flag=True, help="Show the cancel/pause/resume/modify buttons and accept their requests."
    )(fn)
    fn = click.option(
        "--token",
        envvar="DXF_DASHBOARD_TOKEN",
        default=None,
        help="Require this token (Bearer header, basic-auth password, or ?token= once).",
    )(fn)
    return fn


def serve(
    tm: TaskManager,
    *,
    host: str,
    port: int,
    actions: bool,
    token: str | None,
    node_ttl: float | None = None,
    wake: Callable[[str], None] | None = None,
) -> None:
    """Listen until SIGINT/SIGTERM; a refused bind raises :class:`DashboardConfigError` before listening."""
    from dxf_celery.dashboard.server import Dashboard, check_bind, make_app

    check_bind(host, token)
    dash = Dashboard(tm, actions=actions, token=token, node_ttl=node_ttl, wake=wake)

    async def main() -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        sockets = bind_sockets(port, address=host)
        server = HTTPServer(make_app(dash))
        server.add_sockets(sockets)
        bound = sockets[0].getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        click.echo(
            f"DXF dashboard on http://{url_host}:{bound}/ (actions {'on' if actions else 'off'}); reading {tm.url}"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.stop()

    try:
        asyncio.run(main())
    finally:
        dash.close()


def run_dashboard(
    tm: TaskManager,
    host: str,
    port: int,
    enable_actions: bool,
    token: str | None,
    node_ttl: float | None,
    wake: Callable[[str], None] | None,
) -> None:
    """:func:`serve`, with its errors turned into one-line CLI errors."""
    try:
        serve(tm, host=host, port=port, actions=enable_actions, token=token, node_ttl=node_ttl, wake=wake)
    except DXFError as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:
        raise click.ClickException(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


@click.command(name="dxf-dashboard")
@click.option("--database-url", envvar="DXF_DATABASE_URL", required=True, help="SQLAlchemy URL of the dxf tables.")
@click.option("--node-ttl", type=float, default=None, help="Seconds after which a silent node shows as dead.")
@dashboard_options
def main(
    database_url: str, node_ttl: float | None, host: str, port: int, enable_actions: bool, token: str | None
) -> None:
    """Serve the dashboard for a database without a Celery app (actions then need no broker)."""
    from dxf_celery.dashboard.server import check_bind

    try:
        check_bind(host, token)
    except DXFError as err:
        raise click.ClickException(str(err)) from None
    tm = TaskManager(database_url)
    try:
        run_dashboard(tm, host, port, enable_actions, token, node_ttl, None)
    finally:
        tm.dispose()


__all__ = ["dashboard_options", "main", "run_dashboard", "serve"]
