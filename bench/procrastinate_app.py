"""The procrastinate baseline: one no-op job (a Redis ``INCR``, like ``bench.noop``) on the same PostgreSQL.

Loaded by ``procrastinate --app=bench.procrastinate_app.app worker``; needs the optional
extra ``bench`` (``pip install -e '.[bench]'``). ``DXF_BENCH_PG_DSN`` is a libpq DSN.
"""

from __future__ import annotations

import os
from typing import Any

import procrastinate

from bench.app import BROKER, COUNTER_KEY

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("DXF_BENCH_PG_DSN", "")))
_redis: Any = None


@app.task(name="bench_noop")
def noop() -> None:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BROKER)
    _redis.incr(COUNTER_KEY)
