"""Wait for the DXF database when a worker starts, as Celery waits for its broker.

A worker started before its database (containers coming up together, a database restart)
retries with one log line per attempt, at most ``dxf_database_connect_retries`` times
``dxf_database_connect_interval`` seconds, then stops with one line that names the URL (password
masked) and what to check, instead of a traceback after a few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)


class DatabaseUnavailableError(RuntimeError):
    """The database did not answer within the startup bound (or its URL cannot work at all)."""


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what logs may show)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def one_line(err: BaseException) -> str:
    """The first line of an error, its type first: driver errors span many lines."""
    if isinstance(err, DBAPIError) and err.orig is not None:
        err = err.orig  # the driver's own words, without SQLAlchemy's wrapper and link
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def probe(url: str) -> None:
    """Open one connection and run ``SELECT 1`` (no pool is left behind for a fork to inherit)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def wait_for_database(
    url: str,
    *,
    retries: int,
    interval: float,
    prepare: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Probe ``url`` (then run ``prepare``, e.g. migrations) until it works; the attempts it took.

    Only errors the database or its driver report (connection refused, authentication, a
    server still starting) are retried; a URL that cannot work (unknown dialect, missing
    driver, bad syntax) fails at once. Raises :class:`DatabaseUnavailableError` with a
    one-line message.
    """
    shown = masked_url(url)
    for attempt in range(1, retries + 1):
        try:
            probe(url)
            if prepare is not None:
                prepare()
            if attempt > 1:
                logger.info("DXF: database %s is reachable (attempt %d)", shown, attempt)
            return attempt
        except (ArgumentError, NoSuchModuleError, ImportError) as err:
            raise DatabaseUnavailableError(
                f"DXF: dxf_database_url {shown} cannot be used ({one_line(err)}); fix the URL or install its driver"
            ) from None
        except (DBAPIError, OSError) as err:
            if attempt == retries:
                raise DatabaseUnavailableError(
                    f"DXF: cannot reach the database {shown} after {retries} attempts "
                    f"{interval:g} s apart ({one_line(err)}); check that the database server is running and "
                    "reachable and that dxf_database_url (host, port, user, password, database) is right"
                ) from None
            logger.warning(
                "DXF: database %s unreachable (%s); retry %d/%d in %g s",
                shown,
                one_line(err),
                attempt,
                retries - 1,
                interval,
            )
            sleep(interval)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
