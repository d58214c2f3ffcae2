"""The ``celery dxf`` commands: parse the options, call the client API, print what render makes.

Every failure the user can cause (unknown key, wrong state, database down, bad JSON) prints
one line and exits non-zero; tracebacks are for bugs only. docs/cli.md lists the commands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import IO

import click
from celery import Celery, current_app
from celery.bin.base import CLIContext

from dxf_celery import handle
from dxf_celery.cli import render
from dxf_celery.cli.runtime import Runtime, runtime, user_errors
from dxf_celery.errors import TaskFailedError
from dxf_celery.proto import DEFAULT_LIST_LIMIT, MAX_PRIORITY, MIN_PRIORITY, NORMAL_PRIORITY, Task, TaskState
from dxf_celery.storage import safe_url
from dxf_celery.storage.migrate import migrate as run_migrations
from dxf_celery.storage.retention import purge_history

EXIT_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_PAUSED = 4

#: Seconds between polls of ``submit --wait``.
SUBMIT_WAIT_INTERVAL = 0.5


def _states(values: Sequence[str]) -> list[TaskState]:
    out = []
    for v in values:
        try:
            out.append(TaskState(v))
        except ValueError:
            known = ", ".join(s.value for s in TaskState)
            raise click.BadParameter(f"unknown state {v!r}; use one of {known}", param_hint="--state") from None
    return out


@click.group(name="dxf")
@click.pass_context
def dxf(ctx: click.Context) -> None:
    """Manage dxf-celery tasks: list, inspect, submit, steer them, and migrate the tables."""
    # celery's CLI hands its CLIContext; manage.py / flask hand the project's Celery app itself.
    app = ctx.obj.app if isinstance(ctx.obj, CLIContext) else ctx.obj if isinstance(ctx.obj, Celery) else current_app
    ctx.obj = Runtime(app)


@dxf.command(name="list")
@click.option("--state", "states", multiple=True, help="Only tasks in this state (repeatable).")
@click.option("--limit", default=DEFAULT_LIST_LIMIT, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def list_command(ctx: click.Context, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List tasks, live ones first, then finished ones from history."""
    tasks = runtime(ctx).list_tasks(_states(states) or None, limit=limit)
    click.echo(render.to_json([render.task_to_dict(t) for t in tasks]) if as_json else render.task_table(tasks))


@dxf.command()
@click.argument("key_or_id")
@click.option("--subtasks", is_flag=True, help="Also list the subtasks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def show(ctx: click.Context, key_or_id: str, subtasks: bool, as_json: bool) -> None:
    """Show one task (by key or id) with its progress per step."""
    rt = runtime(ctx)
    task = rt.find_task(key_or_id)
    progress = rt.get_task_progress(task.id)
    subs = rt.get_subtasks(task.id) if subtasks else None
    waiting = handle.waiting_reason(rt.task_manager, task)
    if as_json:
        click.echo(render.to_json(render.task_detail(task, progress, subs, waiting)))
        return
    click.echo(render.task_fields(task, waiting))
    click.echo(render.progress_text(progress))
    if subs is not None:
        click.echo("")
        click.echo(render.subtask_table(subs))


@dxf.command()
@click.argument("key_or_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def progress(ctx: click.Context, key_or_id: str, as_json: bool) -> None:
    """Subtasks done per step and rows processed (from the subtask summaries)."""
    rt = runtime(ctx)
    task = rt.find_task(key_or_id)
    prog = rt.get_task_progress(task.id)
    if as_json:
        click.echo(render.to_json(prog.to_dict()))
        return
    click.echo(f"task {task.id} ({task.key}) {task.state.value}, step {render.step_name(task.step)}")
    click.echo(render.progress_text(prog))


@dxf.command()
@click.argument("key_or_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 3).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.pass_context
@user_errors
def wait(ctx: click.Context, key_or_id: str, timeout: float | None, interval: float) -> None:
    """Wait until the task succeeds (exit 0), fails or reverts (1), or is paused (4)."""
    rt = runtime(ctx)
    _wait_and_report(rt, rt.find_task(key_or_id), timeout, interval)


def _wait_and_report(rt: Runtime, task: Task, timeout: float | None, interval: float) -> None:
    try:
        done = rt.wait_task(task.id, timeout=timeout, raise_error=True, poll_interval=interval)
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
@click.option(
    "--priority",
    type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY),
    default=NORMAL_PRIORITY,
    show_default=True,
    help="Smaller runs first.",
)
@click.option("--target-scope", default="", help="Run only on nodes with this role.")
@click.option("--max-node-count", type=click.IntRange(0), default=0, help="At most this many nodes (0: no limit).")
@click.option("--wait", "wait_", is_flag=True, help="Wait for the task to finish (exit codes as for `wait`).")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.pass_context
@user_errors
def submit(
    ctx: click.Context,
    key: str,
    task_type: str,
    meta: str | None,
    meta_file: IO[bytes] | None,
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
    rt = runtime(ctx)
    task = rt.submit_task(
        key,
        task_type,
        meta=raw,
        concurrency=concurrency,
        priority=priority,
        target_scope=target_scope,
        max_node_count=max_node_count,
    )
    click.echo(f"submitted task {task.id} ({task.key}), type {task.type}")
    if wait_:
        _wait_and_report(rt, task, timeout, SUBMIT_WAIT_INTERVAL)


def _steer(verb: str, request: Callable[[Runtime, int], bool], allowed: str) -> click.Command:
    """A command that asks for one state change and says why it was refused."""

    @click.argument("key_or_id")
    @click.pass_context
    @user_errors
    def command(ctx: click.Context, key_or_id: str) -> None:
        rt = runtime(ctx)
        task = rt.find_task(key_or_id)
        if not request(rt, task.id):
            current = rt.get_task(task.id).state.value
            raise click.ClickException(f"cannot {verb} task {task.id} ({task.key}): it is {current}; {allowed}")
        click.echo(f"{verb} requested for task {task.id} ({task.key})")

    return dxf.command(name=verb, help=f"Ask to {verb} a task (by key or id); {allowed}.")(command)


_steer("cancel", Runtime.cancel_task, "only pending, running or awaiting-resolution tasks")
_steer("pause", Runtime.pause_task, "only pending or running tasks")
_steer("resume", Runtime.resume_task, "only paused tasks")
_steer("resolve", Runtime.resolve_task, "only awaiting-resolution tasks; fix the cause first")


@dxf.command()
@click.argument("key_or_id")
@click.option("--concurrency", type=click.IntRange(1), default=None, help="New slots per node.")
@click.option("--max-node-count", type=click.IntRange(0), default=None, help="New node limit (0: no limit).")
@click.pass_context
@user_errors
def modify(ctx: click.Context, key_or_id: str, concurrency: int | None, max_node_count: int | None) -> None:
    """Change a pending, running or paused task's concurrency or node limit."""
    if concurrency is None and max_node_count is None:
        raise click.UsageError("nothing to modify: pass --concurrency and/or --max-node-count")
    rt = runtime(ctx)
    task = rt.find_task(key_or_id)
    rt.modify_task(task.id, concurrency=concurrency, max_node_count=max_node_count)
    click.echo(f"modification requested for task {task.id} ({task.key})")


@dxf.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@user_errors
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List the worker nodes registered in the dxf database, with their used slots."""
    tm = runtime(ctx).task_manager
    all_nodes = tm.get_all_nodes()
    used = tm.get_used_slots_on_nodes()
    if as_json:
        click.echo(render.to_json([render.node_to_dict(n, used.get(n.id, 0)) for n in all_nodes]))
        return
    click.echo(render.node_table(all_nodes, used, tm.server_time()))


@dxf.command()
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    required=True,
    metavar="DAYS",
    help="Delete finished tasks (and their subtasks) that ended more than DAYS days ago.",
)
@click.pass_context
@user_errors
def purge(ctx: click.Context, days: float) -> None:
    """Delete finished tasks older than DAYS from the history tables (live tasks are never touched)."""
    result = purge_history(runtime(ctx).task_manager, timedelta(days=days))
    click.echo(f"purged {result.tasks} finished tasks and {result.subtasks} subtasks older than {days:g} days")


@dxf.command()
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@click.pass_context
@user_errors
def migrate(ctx: click.Context, revision: str) -> None:
    """Create or upgrade the dxf tables in the configured database."""
    url = runtime(ctx).database_url
    run_migrations(url, revision)
    click.echo(f"dxf tables at {revision} in {safe_url(url)}")
