"""Private broker and database servers for fault tests, and the worker commands the docs give users.

The shared servers must never be stopped, so a test that kills, freezes or restarts its
broker or database starts its own: :class:`PrivateRedis` (``redis-server --port N``, no
persistence) and :class:`PrivatePostgres` (``initdb`` + ``pg_ctl`` under a temporary folder,
run as the ``postgres`` user when the tests run as root, as initdb refuses root).
:func:`documented_worker_commands` reads the ``celery ... worker`` commands of README.md,
docs/ and docker-compose.yml so tests run exactly what users are told to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _port_open(port) != up:
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")
        time.sleep(0.05)


@dataclass
class PrivateRedis:
    """A throw-away ``redis-server`` on its own port: kill, restart (same port) or freeze it."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_port(self.port, True)
        return self

    def kill(self) -> None:
        """SIGKILL: every connection drops at once, every queued message is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _wait_port(self.port, False)

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open but nothing answers (a hung server or a silent network)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.thaw()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def postgres_available() -> bool:
    return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster (trust auth) that a test starts and stops at will.

    Its folder is a fresh one under the system temp dir (pytest's are private to root, and
    the server runs as ``postgres``); :meth:`close` stops the server and removes it.
    """

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dxf-pg-")))
    port: int = field(default_factory=free_port)
    _initialised: bool = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 120.0) -> None:
        command = args
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stdout}\n{done.stderr}")

    def _data(self) -> Path:
        return self.folder / "data"

    def init(self) -> PrivatePostgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.folder.chmod(0o700)
        initdb = _pg_bin("initdb")
        assert initdb is not None
        self._run([initdb, "-D", str(self._data()), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        self._initialised = True
        return self

    def start(self) -> None:
        if not self._initialised:
            self.init()
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=300"  # several prefork workers, each child with its own pool
        )
        self._run([pg_ctl, "-D", str(self._data()), "-o", options, "-l", str(self.folder / "pg.log"), "-w", "start"])
        _wait_port(self.port, True)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m MODE``: ``fast`` is an orderly outage (sessions are told and closed),
        ``immediate`` a crash."""
        if not self._initialised or not (self._data() / "postmaster.pid").exists():
            return
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        self._run([pg_ctl, "-D", str(self._data()), "-m", mode, "-w", "stop"])

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """A fresh database ``name`` (dropped first if a previous test left it); its SQLAlchemy URL."""
        import psycopg

        if not name.isidentifier():
            raise ValueError(f"not a plain database name: {name!r}")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        return self.database_url(name)

    def terminate_backends(self, database: str, spare_application: str = "") -> int:
        """``pg_terminate_backend`` every other session on ``database``; how many were killed.

        Sessions whose ``application_name`` is ``spare_application`` survive (the ledger's).
        """
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True, connect_timeout=5
        ) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s",
                (database, spare_application),
            ).fetchall()
        return sum(1 for (killed,) in rows if killed)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------- documented commands

#: The app names the docs use for "your app" (``celery -A proj ...``).
_DOC_APPS = ("proj", "app", "dxf_celery.demo_app", "shop", "shop_flask.make_celery")


def _doc_commands() -> list[str]:
    found: list[str] = []
    pattern = re.compile(r"celery -A (\S+) worker[^`\n|]*")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in pattern.finditer(path.read_text()):
            found.append(match.group(0).split(" #", 1)[0].strip())  # a shell comment is not part of it
    compose = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"command:\s*(\[[^\]]*\])", compose, re.S):
        argv = json.loads(match.group(1))
        if len(argv) > 3 and argv[0] == "celery" and argv[3] == "worker":
            found.append(shlex.join(argv))
    return found


def documented_worker_commands() -> list[list[str]]:
    """Each distinct ``celery -A <app> worker ...`` command of README.md, docs/*.md and docker-compose.yml.

    Returned as the arguments after ``celery -A <app>`` (the tests put their own app there);
    everything else is verbatim. Commands that differ only by node name count once (tests
    rename nodes with :func:`rename_node`).
    """
    commands: list[list[str]] = []
    for line in _doc_commands():
        argv = shlex.split(line)
        assert argv[:2] == ["celery", "-A"] and argv[2] in _DOC_APPS, f"unexpected app in documented command: {line}"
        args = argv[3:]
        if all(rename_node(args, "x") != rename_node(known, "x") for known in commands):
            commands.append(args)
    return commands


def rename_node(args: list[str], name: str) -> list[str]:
    """``args`` with the node name (``-n X@%h``) replaced by ``name@%h``; left as is when the docs give none."""
    out = list(args)
    for flag in ("-n", "--hostname"):
        if flag in out:
            out[out.index(flag) + 1] = f"{name}@%h"
            return out
    return out
