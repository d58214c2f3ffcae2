"""``flask dxf ...``: the ``celery dxf`` commands on the Flask app's Celery app.

    from dxf_celery.contrib.flask_cli import dxf_cli
    app.cli.add_command(dxf_cli)          # in the app factory, after DXFFlask(app)

Every ``celery dxf`` verb (docs/cli.md) is the same click command with the same options and
output; the Celery app is the one behind ``app.extensions["dxf"]``, so no ``-A`` is needed.
"""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup, ScriptInfo

from dxf_celery.cli import dxf as celery_dxf
from dxf_celery.settings import DXFConfigError


def _flask_dxf(ctx: click.Context) -> Any:
    from dxf_celery.contrib.flask import get_dxf

    info = ctx.find_object(ScriptInfo)
    if info is None:
        raise click.ClickException("flask dxf must run under the flask command (no Flask app found)")
    app = info.load_app()
    with app.app_context():
        try:
            return get_dxf()
        except DXFConfigError as err:
            raise click.ClickException(str(err)) from None


@click.pass_context
def _group(ctx: click.Context) -> None:
    """Manage dxf-celery tasks of this Flask app (the commands of `celery dxf`)."""
    dxf = _flask_dxf(ctx)
    ctx.obj = dxf.app
    if celery_dxf.callback is not None:
        ctx.invoke(celery_dxf.callback)  # the celery group's own setup (its runtime object)


dxf_cli = AppGroup("dxf", help=_group.__doc__, callback=_group, commands=dict(celery_dxf.commands))

__all__ = ["dxf_cli"]
