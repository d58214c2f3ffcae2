"""``celery -A proj dxf ...``: manage DXF tasks from the shell.

Installed as a ``celery.commands`` entry point, so the group sees the project's Celery app
(``-A proj``) and reads the dxf settings from it. Every failure the user can cause (unknown
key, wrong state, database down, bad JSON) prints one line and exits non-zero; tracebacks
are for bugs only.

Exit codes: 0 ok; 1 the operation failed or the task did not succeed; 2 usage error;
3 ``wait`` timed out; 4 ``wait`` found the task paused.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click
from sqlalchemy import exc as sa_exc

from dxf_celery import handle
from dxf_celery.errors import DXFError, TaskFailedError, TaskNotFoundError
from dxf_celery.proto import STEP_DONE, STEP_INIT, Subtask, SubtaskState, Task, TaskState
from dxf_celery.storage import TaskManager, safe_url, utcnow
from dxf_celery.storage.migrate import migrate as run_migrations

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_PAUSED = 4


class _Runtime:
    """What the subcommands share: the Celery app and, lazily, the TaskManager."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._tm: TaskManager | None = None

    @property
    def database_url(self) -> str:
        return database_url_of(self.app)

    @property
    def task_manager(self) -> TaskManager:
        if self._tm is None:
            self._tm = task_manager_of(self.app)
        return self._tm

    def wake(self, reason: str) -> None:
        """Ask a worker for a scheduler pass now (latency only; beat's tick comes anyway)."""
        ext = _dxf_extension(self.app)
        state = getattr(ext, "state", None)
        if state is not None and hasattr(state, "send_wakeup"):
            state.send_wakeup(reason)


def database_url_of(app: Any) -> str:
    """The dxf database URL of a Celery app: its DXF extension's, else ``dxf_database_url``."""
    ext = _dxf_extension(app)
    if ext is not None:
        for attr in ("database_url", "url"):
            value = getattr(getattr(ext, "settings", None), attr, None) or getattr(ext, attr, None)
            if isinstance(value, str) and value:
                return value
    from dxf_celery.settings import DXFSettings

    conf = getattr(app, "conf", {})
    if not any(conf.get(k) for k in ("dxf_database_url", "DXF_DATABASE_URL", "CELERY_DXF_DATABASE_URL")):
        # Never fall back to a default SQLite file in the current folder: that hides a wrong -A.
        raise click.ClickException(
            f"Celery app {getattr(app, 'main', None)!r} has no DXF: call DXF(app) where the app is created, "
            f"or set dxf_database_url (check the -A option)"
        )
    return DXFSettings.from_conf(conf).database_url


def _dxf_extension(app: Any) -> Any:
    """The DXF object attached to ``app`` by ``DXF(app)``, if any."""
    for name in ("dxf",):
        ext = getattr(app, name, None)
        if ext is not None and hasattr(ext, "task_manager"):
            return ext
    try:
        app_module = importlib.import_module("dxf_celery.app")
    except ImportError:
        return None
    getter = getattr(app_module, "get_dxf", None)
    if callable(getter):
        try:
            return getter(app)
        except Exception:
            return None
    return None


def task_manager_of(app: Any) -> TaskManager:
    ext = _dxf_extension(app)
    if ext is not None:
        tm = ext.task_manager
        if isinstance(tm, TaskManager):
            return tm
    return TaskManager(database_url_of(app))


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can cause into one-line messages and exit code 1."""
    try:
        yield
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except DXFError as err:
        raise click.ClickException(str(err)) from None
    except sa_exc.ArgumentError as err:
        raise click.ClickException(f"bad dxf_database_url: {err}") from None
    except sa_exc.SQLAlchemyError as err:
        raise click.ClickException(f"database error: {str(err).splitlines()[0]}") from None
    except ModuleNotFoundError as err:
        raise click.ClickException(f"{err}: install the driver (e.g. pip install 'dxf-celery[postgres]')") from None


def _command(fn: F) -> F:
    """Run a subcommand inside :func:`_errors`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _runtime(ctx: click.Context) -> _Runtime:
    rt = ctx.find_object(_Runtime)
    assert rt is not None
    return rt


def _find_task(tm: TaskManager, key_or_id: str) -> Task:
    """A task by key, or by id when the argument is a number that is not also a key."""
    if key_or_id.isdigit():
        try:
            return handle.get_task(tm, int(key_or_id))
        except TaskNotFoundError:
            pass
    try:
        return handle.get_task(tm, key_or_id)
    except TaskNotFoundError:
        raise TaskNotFoundError(f"no task with key or id {key_or_id!r} (see `celery dxf list`)") from None


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def step_name(step: int) -> str:
    if step == STEP_INIT:
        return "init"
    if step == STEP_DONE:
        return "done"
    return str(step)


def task_to_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "key": task.key,
        "type": task.type,
        "state": task.state.value,
        "step": task.step,
        "priority": task.priority,
        "concurrency": task.concurrency,
        "target_scope": task.target_scope,
        "max_node_count": task.max_node_count,
        "create_time": task.create_time.isoformat() if task.create_time else None,
        "start_time": task.start_time.isoformat() if task.start_time else None,
        "end_time": task.end_time.isoformat() if task.end_time else None,
        "error": str(task.error) if task.error is not None else None,
        "meta": _meta_text(task.meta),
    }


def subtask_to_dict(s: Subtask) -> dict[str, Any]:
    return {
        "id": s.id,
        "step": s.step,
        "ordinal": s.ordinal,
        "state": s.state.value,
        "exec_id": s.exec_id,
        "concurrency": s.concurrency,
        "error": str(s.error) if s.error is not None else None,
        "summary": json.loads(s.summary) if s.summary else {},
        "meta": _meta_text(s.meta),
    }


def _meta_text(meta: bytes) -> Any:
    try:
        return json.loads(meta)
    except (ValueError, UnicodeDecodeError):
        return meta.decode("utf-8", "replace")


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _states(values: Sequence[str]) -> list[TaskState]:
    out = []
    for v in values:
        try:
            out.append(TaskState(v))
        except ValueError:
            known = ", ".join(s.value for s in TaskState)
            raise click.BadParameter(f"unknown state {v!r}; use one of {known}", param_hint="--state") from None
    return out


# ---------------------------------------------------------------------------- the group


@click.group(name="dxf")
@click.pass_context
def dxf(ctx: click.Context) -> None:
    """Manage dxf-celery tasks: list, inspect, submit, steer them, and migrate the tables."""
    parent = ctx.obj
    app = getattr(parent, "app", None)
    if app is None:
        from celery import current_app

        app = current_app
    ctx.obj = _Runtime(app)


@dxf.command(name="list")
@click.option("--state", "states", multiple=True, help="Only tasks in this state (repeatable).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_command
def list_command(ctx: click.Context, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List tasks, live ones first, then finished ones from history."""
    tasks = handle.list_tasks(_runtime(ctx).task_manager, _states(states) or None, limit=limit)
    if as_json:
        _echo_json([task_to_dict(t) for t in tasks])
        return
    if not tasks:
        click.echo("no tasks")
        return
    rows = [
        [str(t.id), t.key, t.type, t.state.value, step_name(t.step), str(t.concurrency), _fmt_time(t.create_time)]
        for t in tasks
    ]
    click.echo(_table(rows, ["ID", "KEY", "TYPE", "STATE", "STEP", "CONC", "CREATED (UTC)"]))


@dxf.command()
@click.argument("key_or_id")
@click.option("--subtasks", is_flag=True, help="Also list the subtasks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_command
def show(ctx: click.Context, key_or_id: str, subtasks: bool, as_json: bool) -> None:
    """Show one task (by key or id) with its progress per step."""
    tm = _runtime(ctx).task_manager
    task = _find_task(tm, key_or_id)
    progress = handle.get_task_progress(tm, task.id)
    subs = handle.get_subtasks(tm, task.id) if subtasks else []
    if as_json:
        data = task_to_dict(task)
        data["progress"] = progress.to_dict()["steps"]
        if subtasks:
            data["subtasks"] = [subtask_to_dict(s) for s in subs]
        _echo_json(data)
        return
    fields = [
        ("id", str(task.id)),
        ("key", task.key),
        ("type", task.type),
        ("state", task.state.value),
        ("step", step_name(task.step)),
        ("priority", str(task.priority)),
        ("concurrency", str(task.concurrency)),
        ("max nodes", str(task.max_node_count or "no limit")),
        ("scope", task.target_scope or "-"),
        ("created", _fmt_time(task.create_time)),
        ("started", _fmt_time(task.start_time)),
        ("ended", _fmt_time(task.end_time)),
        ("error", str(task.error) if task.error is not None else "-"),
    ]
    width = max(len(k) for k, _ in fields)
    for k, v in fields:
        click.echo(f"{k.ljust(width)}  {v}")
    _echo_progress(progress)
    if subtasks:
        rows = [
            [str(s.id), step_name(s.step), str(s.ordinal), s.state.value, s.exec_id, _summary_rows(s), _err(s)]
            for s in subs
        ]
        click.echo("")
        click.echo(_table(rows, ["ID", "STEP", "ORD", "STATE", "NODE", "ROWS", "ERROR"]) if rows else "no subtasks")


def _summary_rows(s: Subtask) -> str:
    try:
        return str(json.loads(s.summary or "{}").get("row_count", 0))
    except ValueError:
        return "-"


def _err(s: Subtask) -> str:
    return str(s.error)[:60] if s.error is not None else ""


def _echo_progress(progress: handle.TaskProgress) -> None:
    if not progress.steps:
        click.echo("steps     none planned yet")
        return
    click.echo("")
    rows = []
    for step, sp in sorted(progress.steps.items()):
        others = ", ".join(
            f"{n} {st.value}" for st, n in sorted(sp.counts.items(), key=lambda kv: kv[0].value)
            if st != SubtaskState.SUCCEED and n
        )
        rows.append([step_name(step), f"{sp.finished}/{sp.total}", str(sp.row_count), others or "-"])
    click.echo(_table(rows, ["STEP", "DONE", "ROWS", "OTHER SUBTASKS"]))


@dxf.command()
@click.argument("key_or_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_command
def progress(ctx: click.Context, key_or_id: str, as_json: bool) -> None:
    """Subtasks done per step and rows processed (from the subtask summaries)."""
    tm = _runtime(ctx).task_manager
    task = _find_task(tm, key_or_id)
    prog = handle.get_task_progress(tm, task.id)
    if as_json:
        _echo_json(prog.to_dict())
        return
    click.echo(f"task {task.id} ({task.key}) {task.state.value}, step {step_name(task.step)}")
    _echo_progress(prog)


@dxf.command()
@click.argument("key_or_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 3).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.pass_context
@_command
def wait(ctx: click.Context, key_or_id: str, timeout: float | None, interval: float) -> None:
    """Wait until the task succeeds (exit 0), fails or reverts (1), or is paused (4)."""
    tm = _runtime(ctx).task_manager
    task = _find_task(tm, key_or_id)
    _wait_and_report(tm, task, timeout, interval)


def _wait_and_report(tm: TaskManager, task: Task, timeout: float | None, interval: float) -> None:
    try:
        done = handle.wait_task(tm, task.id, timeout=timeout, raise_error=True, poll_interval=interval)
    except TimeoutError as err:
        click.echo(f"timed out: {err}", err=True)
        sys.exit(EXIT_TIMEOUT)
    except TaskFailedError as err:
        click.echo(f"task {task.id} ({task.key}) {err.task.state.value}: {err.task.error}", err=True)
        sys.exit(EXIT_FAILED)
    if done.state == TaskState.PAUSED:
        click.echo(f"task {done.id} ({done.key}) is paused; resume it with `celery dxf resume {done.key}`")
        sys.exit(EXIT_PAUSED)
    click.echo(f"task {done.id} ({done.key}) {done.state.value}")


@dxf.command()
@click.argument("key")
@click.argument("task_type")
@click.option("--meta", default=None, help="Task meta as JSON text.")
@click.option("--meta-file", type=click.File("rb"), default=None, help="Read the task meta from a file ('-': stdin).")
@click.option("--concurrency", type=click.IntRange(1), default=1, show_default=True, help="Slots per node.")
@click.option("--priority", type=click.IntRange(1, 1024), default=512, show_default=True, help="Smaller runs first.")
@click.option("--target-scope", default="", help="Run only on nodes with this role.")
@click.option("--max-node-count", type=click.IntRange(0), default=0, help="At most this many nodes (0: no limit).")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the task to finish (exit codes as for `wait`).")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.pass_context
@_command
def submit(
    ctx: click.Context,
    key: str,
    task_type: str,
    meta: str | None,
    meta_file: Any,
    concurrency: int,
    priority: int,
    target_scope: str,
    max_node_count: int,
    wait_: bool,
    timeout: float | None,
) -> None:
    """Submit a task of TASK_TYPE under the unique KEY."""
    if meta is not None and meta_file is not None:
        raise click.UsageError("pass --meta or --meta-file, not both")
    raw = meta_file.read() if meta_file is not None else (meta or "{}").encode()
    try:
        json.loads(raw)
    except ValueError as err:
        raise click.BadParameter(f"the meta is not JSON: {err}", param_hint="--meta") from None
    tm = _runtime(ctx).task_manager
    task = handle.submit_task(
        tm,
        key,
        task_type,
        meta=raw,
        concurrency=concurrency,
        priority=priority,
        target_scope=target_scope,
        max_node_count=max_node_count,
    )
    _runtime(ctx).wake("submit")
    click.echo(f"submitted task {task.id} ({task.key}), type {task.type}")
    if wait_:
        _wait_and_report(tm, task, timeout, 0.5)


def _steer(verb: str, fn: Callable[[TaskManager, str | int], bool], allowed: str) -> Callable[..., None]:
    @click.argument("key_or_id")
    @click.pass_context
    @_command
    def command(ctx: click.Context, key_or_id: str) -> None:
        tm = _runtime(ctx).task_manager
        task = _find_task(tm, key_or_id)
        if not fn(tm, task.id):
            current = handle.get_task(tm, task.id).state.value
            raise click.ClickException(f"cannot {verb} task {task.id} ({task.key}): it is {current}; {allowed}")
        _runtime(ctx).wake(verb)
        click.echo(f"{verb} requested for task {task.id} ({task.key})")

    command.__doc__ = f"Ask to {verb} a task (by key or id); {allowed}."
    return command


dxf.command(name="cancel")(_steer("cancel", handle.cancel_task, "only pending, running or awaiting-resolution tasks"))
dxf.command(name="pause")(_steer("pause", handle.pause_task, "only pending or running tasks"))
dxf.command(name="resume")(_steer("resume", handle.resume_task, "only paused tasks"))
dxf.command(name="resolve")(
    _steer("resolve", handle.resolve_task, "only awaiting-resolution tasks; fix the cause first")
)


@dxf.command()
@click.argument("key_or_id")
@click.option("--concurrency", type=click.IntRange(1), default=None, help="New slots per node.")
@click.option("--max-node-count", type=click.IntRange(1), default=None, help="New node limit.")
@click.pass_context
@_command
def modify(ctx: click.Context, key_or_id: str, concurrency: int | None, max_node_count: int | None) -> None:
    """Change a pending, running or paused task's concurrency or node limit."""
    if concurrency is None and max_node_count is None:
        raise click.UsageError("nothing to modify: pass --concurrency and/or --max-node-count")
    tm = _runtime(ctx).task_manager
    task = _find_task(tm, key_or_id)
    handle.modify_task(tm, task.id, concurrency=concurrency, max_node_count=max_node_count)
    _runtime(ctx).wake("modify")
    click.echo(f"modification requested for task {task.id} ({task.key})")


@dxf.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_command
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List the worker nodes registered in the dxf database, with their used slots."""
    tm = _runtime(ctx).task_manager
    all_nodes = tm.get_all_nodes()
    used = tm.get_used_slots_on_nodes()
    now = utcnow()
    if as_json:
        _echo_json(
            [
                {
                    "id": n.id,
                    "role": n.role,
                    "slots": n.cpu_count,
                    "used_slots": used.get(n.id, 0),
                    "heartbeat": n.heartbeat.isoformat() if n.heartbeat else None,
                }
                for n in all_nodes
            ]
        )
        return
    if not all_nodes:
        click.echo("no nodes registered: start a worker of an app that calls DXF(app)")
        return
    rows = [
        [
            n.id,
            n.role or "-",
            f"{used.get(n.id, 0)}/{n.cpu_count}",
            f"{(now - n.heartbeat).total_seconds():.1f}s ago" if n.heartbeat else "-",
        ]
        for n in all_nodes
    ]
    click.echo(_table(rows, ["NODE", "ROLE", "SLOTS USED", "HEARTBEAT"]))


@dxf.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@click.pass_context
@_command
def migrate(ctx: click.Context, revision: str) -> None:
    """Create or upgrade the dxf tables in the configured database."""
    url = _runtime(ctx).database_url
    run_migrations(url, revision)
    click.echo(f"dxf tables at {revision} in {safe_url(url)}")
