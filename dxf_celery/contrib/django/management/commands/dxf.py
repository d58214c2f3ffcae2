"""``manage.py dxf ...``: the ``celery dxf`` commands for Django users, with Django's own ``migrate``.

Every ``celery dxf`` verb (``list``, ``show``, ``progress``, ``wait``, ``submit``, ``cancel``,
``pause``, ``resume``, ``resolve``, ``modify``, ``nodes``, ``purge``) runs the same click command
on the project's Celery app (found through :func:`get_dxf`, so no ``-A``); its options and
output are those of docs/cli.md. One verb is Django's own:

- ``migrate``: when the DXF tables live in a ``DATABASES`` entry this is ``manage.py migrate
  dxf_celery`` (Django records what it applied); otherwise the Alembic upgrade of
  ``celery dxf migrate`` on DXF's own database.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dxf_celery.contrib.django.conf import configured_alias, dxf_uses_alias, get_dxf
from dxf_celery.errors import DXFError
from dxf_celery.settings import DXFConfigError


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = (
        "dxf-celery: list, show, progress, wait, submit, cancel, pause, resume, resolve, modify, nodes "
        "(as `celery dxf`, see docs/cli.md), migrate, purge --older-than DAYS. "
        "`manage.py dxf COMMAND --help` for a command's options."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS]")

    def handle(self, *args: Any, **options: Any) -> None:
        words: list[str] = list(options["words"])
        verb = words[0] if words else ""
        try:
            if verb == "migrate":
                self._migrate(words[1:], options)
            else:
                self._celery_dxf(words)
        except (DXFError, DXFConfigError) as err:
            raise CommandError(f"dxf {verb}: {err}") from None

    def _celery_dxf(self, words: list[str]) -> None:
        """Run ``celery dxf WORDS`` on the project's Celery app."""
        import click

        from dxf_celery.cli import dxf as celery_dxf

        app = get_dxf().app
        try:
            code = celery_dxf.main(args=words or ["--help"], prog_name="manage.py dxf", standalone_mode=False, obj=app)
        except click.exceptions.Abort:
            raise CommandError("aborted") from None
        except click.ClickException as err:
            raise CommandError(err.format_message()) from None
        if isinstance(code, int) and code != 0:
            raise SystemExit(code)

    def _migrate(self, words: list[str], options: dict[str, Any]) -> None:
        parser = argparse.ArgumentParser(prog="manage.py dxf migrate")
        parser.add_argument("--revision", default="head", help="Alembic revision (DXF database outside DATABASES)")
        ns = parser.parse_args(words)
        dxf = get_dxf()
        alias = configured_alias()
        if alias is not None and dxf_uses_alias(dxf, alias):
            if ns.revision != "head":
                raise CommandError(
                    "dxf migrate: the DXF tables are in DATABASES; use `manage.py migrate dxf_celery "
                    "<migration>` to pick a revision"
                )
            call_command(
                "migrate", "dxf_celery", database=alias, verbosity=options.get("verbosity", 1), stdout=self.stdout
            )
            return
        from dxf_celery.storage import migrate

        migrate(dxf.settings.database_url, ns.revision)
        self.stdout.write(f"dxf tables at revision {ns.revision} in {dxf.task_manager.url}")
