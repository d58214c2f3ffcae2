"""What every ``celery dxf`` command shares: the app's DXF, its TaskManager, one-line errors.

The database comes from the app's :class:`~dxf_celery.app.DXF` (``DXF(app)`` sets
``app.dxf``), else from ``dxf_database_url`` in the app's conf. Never from a default SQLite
file in the current folder: that would hide a wrong ``-A``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import click
from celery import Celery
from sqlalchemy import exc as sa_exc

from dxf_celery.app import DXF
from dxf_celery.client import TaskClient
from dxf_celery.errors import DXFError, TaskNotFoundError
from dxf_celery.proto import Task
from dxf_celery.settings import DXFSettings
from dxf_celery.storage import TaskManager

P = ParamSpec("P")
R = TypeVar("R")

#: The conf keys that name the dxf database when the app has no DXF attached.
DATABASE_URL_KEYS = ("dxf_database_url", "DXF_DATABASE_URL", "CELERY_DXF_DATABASE_URL")


class Runtime(TaskClient):
    """The Celery app of the command line and, lazily, its settings and TaskManager.

    It is a :class:`~dxf_celery.client.TaskClient`, so every command calls the same client
    methods as ``DXF`` and ``LocalCluster``; an accepted write wakes a worker when the app has
    DXF attached (with only ``dxf_database_url`` set, beat's next tick picks it up).
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        attached = getattr(app, "dxf", None)
        #: The app's DXF extension, or None when the app only sets ``dxf_database_url``.
        self.dxf: DXF | None = attached if isinstance(attached, DXF) else None
        self._settings: DXFSettings | None = None
        self._tm: TaskManager | None = None

    @property
    def settings(self) -> DXFSettings:
        if self._settings is None:
            if self.dxf is not None:
                self._settings = self.dxf.settings
            elif any(self.app.conf.get(key) for key in DATABASE_URL_KEYS):
                self._settings = DXFSettings.from_conf(self.app.conf)
            else:
                raise click.ClickException(
                    f"Celery app {self.app.main!r} has no DXF: call DXF(app) where the app is created, "
                    f"or set dxf_database_url (check the -A option)"
                )
        return self._settings

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def task_manager(self) -> TaskManager:
        if self._tm is None:
            self._tm = self.dxf.task_manager if self.dxf is not None else TaskManager(self.database_url)
        return self._tm

    def _wake(self, reason: str) -> None:
        """Ask a worker for a scheduler pass now (latency only; beat's tick comes anyway)."""
        if self.dxf is not None:
            self.dxf.state.send_wakeup(reason)

    @property
    def node_ttl(self) -> float | None:
        """Seconds after which a silent node counts as dead, when the app's settings say."""
        try:
            return self.settings.node_ttl
        except click.ClickException:
            return None

    def find_task(self, key_or_id: str) -> Task:
        """A task by key, or by id when the argument is a number that is not also a key."""
        if key_or_id.isdigit():
            try:
                return self.get_task(int(key_or_id))
            except TaskNotFoundError:
                pass
        try:
            return self.get_task(key_or_id)
        except TaskNotFoundError:
            raise TaskNotFoundError(f"no task with key or id {key_or_id!r} (see `celery dxf list`)") from None


def runtime(ctx: click.Context) -> Runtime:
    """The :class:`Runtime` the ``dxf`` group put on the click context."""
    return ctx.find_object(Runtime) or ctx.fail("the dxf commands run inside `celery dxf`")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one-line messages and exit code 1."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException):
        raise
    except DXFError as err:
        raise click.ClickException(str(err)) from None
    except sa_exc.ArgumentError as err:
        raise click.ClickException(f"bad dxf_database_url: {err}") from None
    except sa_exc.SQLAlchemyError as err:
        raise click.ClickException(f"database error: {str(err).splitlines()[0]}") from None
    except ModuleNotFoundError as err:
        raise click.ClickException(f"{err}: install the driver (e.g. pip install 'dxf-celery[postgres]')") from None


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a command inside :func:`one_line_errors`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with one_line_errors():
            return fn(*args, **kwargs)

    return wrapper
