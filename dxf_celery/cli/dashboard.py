"""``celery -A proj dxf dashboard``: the live dashboard on the app's dxf database."""

from __future__ import annotations

import click

from dxf_celery.cli.commands import dxf
from dxf_celery.cli.runtime import runtime
from dxf_celery.dashboard.command import dashboard_options, run_dashboard
from dxf_celery.errors import DXFError


@dxf.command(name="dashboard")
@dashboard_options
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, enable_actions: bool, token: str | None) -> None:
    """Serve the live dashboard (tasks, task, nodes pages; JSON API; /metrics) from the dxf database."""
    from dxf_celery.dashboard.server import check_bind

    try:
        check_bind(host, token)  # before touching the database: a refusal is one line, at once
    except DXFError as err:
        raise click.ClickException(str(err)) from None
    rt = runtime(ctx)
    with_actions_wake = (lambda reason: rt.wake()) if enable_actions else None
    run_dashboard(rt.task_manager, host, port, enable_actions, token, rt.node_ttl, with_actions_wake)
