"""``manage.py dxf list|show|cancel|pause|resume|resolve|migrate|purge``: ``celery dxf`` for Django users.

Every verb goes through the client API of the project's DXF (:func:`get_dxf`), so it acts on
the same database the workers use, and needs no ``-A`` option. Errors are one line each.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dxf_celery.contrib.django.conf import configured_alias, dxf_uses_alias, get_dxf
from dxf_celery.errors import DXFError
from dxf_celery.proto import Subtask, Task, TaskState
from dxf_celery.settings import DXFConfigError

STEERING = {"cancel": "cancelled", "pause": "paused", "resume": "resumed", "resolve": "resolved"}


def _task_line(t: Task) -> list[str]:
    created = t.create_time.strftime("%Y-%m-%d %H:%M:%S") if t.create_time else "-"
    return [str(t.id), t.key, t.type, t.state.value, str(t.step), str(t.concurrency), created]


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _task_dict(t: Task) -> dict[str, Any]:
    return {"id": t.id, "key": t.key, "type": t.type, "state": t.state.value, "step": t.step,
            "concurrency": t.concurrency, "priority": t.priority,
            "create_time": t.create_time.isoformat() if t.create_time else None,
            "error": str(t.error) if t.error is not None else None}


def _subtask_dict(s: Subtask) -> dict[str, Any]:
    return {"id": s.id, "step": s.step, "ordinal": s.ordinal, "state": s.state.value, "node": s.exec_id,
            "error": str(s.error) if s.error is not None else None}


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = "Manage dxf-celery tasks: list, show, cancel, pause, resume, resolve; migrate or purge the tables."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
        p = sub.add_parser("list", help="List tasks, live ones first, then finished ones.")
        p.add_argument("--state", action="append", default=[], help="Only tasks in this state (repeatable).")
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("show", help="Show one task (key or id) with its progress per step.")
        p.add_argument("key_or_id")
        p.add_argument("--subtasks", action="store_true", help="Also list the subtasks.")
        p.add_argument("--json", action="store_true")
        for verb in STEERING:
            p = sub.add_parser(verb, help=f"{verb.capitalize()} a task (key or id).")
            p.add_argument("key_or_id")
        p = sub.add_parser("migrate", help="Create or upgrade the DXF tables.")
        p.add_argument("--revision", default="head", help="Alembic revision (DXF database outside DATABASES only).")
        p = sub.add_parser("purge", help="Delete finished tasks (and their subtasks) from history.")
        p.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                       help="Finished more than DAYS days ago (fractions allowed).")

    def handle(self, *args: Any, **options: Any) -> None:
        verb = options["verb"]
        try:
            getattr(self, f"_{verb}")(options)
        except (DXFError, DXFConfigError, ValueError) as err:
            raise CommandError(f"dxf {verb}: {err}") from None

    @staticmethod
    def _key(value: str) -> str | int:
        return int(value) if value.isdigit() else value

    def _list(self, options: dict[str, Any]) -> None:
        try:
            states = [TaskState(s) for s in options["state"]] or None
        except ValueError:
            raise CommandError(f"unknown state; use one of {', '.join(s.value for s in TaskState)}") from None
        tasks = get_dxf().list_tasks(states, limit=options["limit"])
        if options["json"]:
            self.stdout.write(json.dumps([_task_dict(t) for t in tasks], indent=2))
        elif not tasks:
            self.stdout.write("no tasks")
        else:
            self.stdout.write(_table([_task_line(t) for t in tasks],
                                     ["ID", "KEY", "TYPE", "STATE", "STEP", "CONC", "CREATED (UTC)"]))

    def _show(self, options: dict[str, Any]) -> None:
        dxf = get_dxf()
        task = dxf.get_task(self._key(options["key_or_id"]))
        progress = dxf.get_task_progress(task.id)
        subtasks = dxf.get_subtasks(task.id) if options["subtasks"] else []
        if options["json"]:
            data = _task_dict(task)
            data["progress"] = progress.to_dict()["steps"]
            if options["subtasks"]:
                data["subtasks"] = [_subtask_dict(s) for s in subtasks]
            self.stdout.write(json.dumps(data, indent=2))
            return
        for name, value in _task_dict(task).items():
            self.stdout.write(f"{name:<12} {value if value is not None else '-'}")
        rows = [[str(step), f"{sp.finished}/{sp.total}", str(sp.row_count)]
                for step, sp in sorted(progress.steps.items())]
        self.stdout.write("")
        self.stdout.write(_table(rows, ["STEP", "DONE", "ROWS"]) if rows else "no steps planned yet")
        if options["subtasks"]:
            self.stdout.write("")
            self.stdout.write(_table([[str(s.id), str(s.step), str(s.ordinal), s.state.value, s.exec_id]
                                      for s in subtasks], ["ID", "STEP", "ORD", "STATE", "NODE"]))

    def _steer(self, verb: str, options: dict[str, Any]) -> None:
        dxf = get_dxf()
        key = self._key(options["key_or_id"])
        task = dxf.get_task(key)
        done = bool(getattr(dxf, f"{verb}_task")(task.id))
        if not done:
            raise CommandError(
                f"dxf {verb}: task {task.key!r} is {task.state.value}; it cannot be {STEERING[verb]} now"
            )
        self.stdout.write(f"{verb} requested for task {task.key!r} (id {task.id})")

    def _cancel(self, options: dict[str, Any]) -> None:
        self._steer("cancel", options)

    def _pause(self, options: dict[str, Any]) -> None:
        self._steer("pause", options)

    def _resume(self, options: dict[str, Any]) -> None:
        self._steer("resume", options)

    def _resolve(self, options: dict[str, Any]) -> None:
        self._steer("resolve", options)

    def _migrate(self, options: dict[str, Any]) -> None:
        dxf = get_dxf()
        alias = configured_alias()
        if alias is not None and dxf_uses_alias(dxf, alias):
            # The tables live in a Django database: Django's migrate records what it applied.
            call_command("migrate", "dxf_celery", database=alias, verbosity=options.get("verbosity", 1),
                         stdout=self.stdout)
            return
        from dxf_celery.storage import migrate

        migrate(dxf.settings.database_url, options["revision"])
        self.stdout.write(f"dxf tables at revision {options['revision']} in {dxf.task_manager.url}")

    def _purge(self, options: dict[str, Any]) -> None:
        from dxf_celery.storage.retention import purge_history

        days = options["older_than"]
        result = purge_history(get_dxf().task_manager, timedelta(days=days))
        self.stdout.write(f"purged {result.tasks} finished tasks and {result.subtasks} subtasks older than {days} days")

