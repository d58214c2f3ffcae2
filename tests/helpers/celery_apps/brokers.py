"""The brokers the end-to-end suite runs on: the machine's Redis and RabbitMQ, each test on an empty one.

Redis: one database number (``DXF_TEST_REDIS_URL``), flushed before each test. RabbitMQ: a
virtual host of its own (named after ``DXF_TEST_DB_NAME``, so two test runs never share
queues), deleted and created again before each test with ``rabbitmqctl``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import redis
from kombu import pools

REDIS_URL = os.environ.get("DXF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
AMQP_HOST = os.environ.get("DXF_TEST_AMQP_HOST", "127.0.0.1:5672")
AMQP_VHOST = "dxf_" + os.environ.get("DXF_TEST_DB_NAME", "dxf_test")
BROKERS = ("redis", "rabbitmq")


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl not found: the RabbitMQ tests need the local RabbitMQ (.ci/run starts it)"
    subprocess.run([ctl, "-q", *args], check=check, capture_output=True, timeout=60)


def fresh_broker(kind: str) -> str:
    """The URL of an empty broker of ``kind`` ("redis" or "rabbitmq") for one test.

    Celery keeps broker connections in kombu's process-wide pools, keyed by URL, past
    ``app.close()``: the next test's app (same URL) would be handed a connection that the
    vhost's deletion closed (``ConnectionResetError`` on its first broadcast). So they go too.
    """
    pools.reset()
    if kind == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.flushdb()
        finally:
            client.close()
        return REDIS_URL
    if kind == "rabbitmq":
        _rabbitmqctl("delete_vhost", AMQP_VHOST, check=False)  # absent on the first test: that is fine
        _rabbitmqctl("add_vhost", AMQP_VHOST)
        _rabbitmqctl("set_permissions", "-p", AMQP_VHOST, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@{AMQP_HOST}/{AMQP_VHOST}"
    raise ValueError(f"unknown broker kind {kind!r}; one of {BROKERS}")
