"""Where the bench's databases live: one throwaway ``dxf_bench_<...>`` database per use, on the local servers.

Created, migrated and dropped through :mod:`dxf_celery.storage.provision`, so that the
benchmarks and the tests set databases up the same way. Server URLs (no database part) come
from ``DXF_BENCH_POSTGRESQL`` / ``DXF_BENCH_MARIADB`` or default to the local test servers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dxf_celery.storage.provision import drop_database, fresh_dxf_database

KINDS = ("postgresql", "mariadb", "sqlite")
SERVERS = {
    "postgresql": os.environ.get("DXF_BENCH_POSTGRESQL", "postgresql+psycopg://postgres@127.0.0.1:5432"),
    "mariadb": os.environ.get("DXF_BENCH_MARIADB", "mysql+pymysql://root@127.0.0.1:3306"),
}


def database_url(kind: str, name: str, folder: Path, servers: dict[str, str] | None = None) -> str:
    """The URL of database ``name`` of ``kind`` (SQLite: a file in ``folder``)."""
    if kind == "sqlite":
        return f"sqlite:///{folder / (name + '.db')}"
    if kind not in SERVERS:
        raise ValueError(f"unknown database kind {kind!r}; one of {', '.join(KINDS)}")
    return f"{(servers or SERVERS)[kind].rstrip('/')}/{name}"


@contextlib.contextmanager
def throwaway(kind: str, folder: Path, suffix: str = "", servers: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh, migrated ``dxf_bench_<pid>[_suffix]`` database for the block; dropped after, whatever happens."""
    name = f"dxf_bench_{os.getpid()}" + (f"_{suffix}" if suffix else "")
    url = database_url(kind, name, folder, servers)
    fresh_dxf_database(url)
    try:
        yield url
    finally:
        drop_database(url)
