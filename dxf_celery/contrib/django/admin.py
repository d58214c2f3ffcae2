"""The admin: tasks (live and finished), subtasks and nodes, with actions through the client API.

Every page reads the DXF tables through the unmanaged models. Changing anything goes through
:func:`get_dxf` (cancel, pause, resume, resolve), which writes only the requested state and
wakes the scheduler, exactly like ``celery dxf cancel``: rows are never edited here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from dxf_celery.contrib.django.conf import get_dxf
from dxf_celery.contrib.django.models import Node, Subtask, SubtaskHistory, Task, TaskHistory
from dxf_celery.proto import SubtaskState
from dxf_celery.storage.nodes import task_types_of


class _ReadOnly(admin.ModelAdmin):  # type: ignore[misc]  # Django ships no type hints
    """Nothing is added, edited or deleted from the admin: DXF owns these rows."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        extra = {
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "show_delete": False,
            **(extra_context or {}),
        }
        return super().changeform_view(request, object_id, form_url, extra)


class SubtaskProgressFilter(admin.SimpleListFilter):  # type: ignore[misc]
    """Tasks by the progress of their subtasks: some running, some failed, all succeeded."""

    title = "progress"
    parameter_name = "progress"
    subtask_model: type[Subtask] | type[SubtaskHistory] = Subtask

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("none", "no subtasks yet"),
            ("running", "subtasks running"),
            ("failed", "subtasks failed"),
            ("done", "all subtasks succeeded"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        subtasks = self.subtask_model.objects.filter(task_id=OuterRef("id"))
        value = self.value()
        if value == "none":
            return queryset.filter(~Exists(subtasks))
        if value == "running":
            return queryset.filter(Exists(subtasks.filter(state=SubtaskState.RUNNING.value)))
        if value == "failed":
            return queryset.filter(Exists(subtasks.filter(state=SubtaskState.FAILED.value)))
        if value == "done":
            return queryset.filter(Exists(subtasks)).exclude(Exists(subtasks.exclude(state=SubtaskState.SUCCEED.value)))
        return None


class HistoryProgressFilter(SubtaskProgressFilter):
    subtask_model = SubtaskHistory


def _subtask_rows(task_id: int) -> list[Subtask | SubtaskHistory]:
    live = list(Subtask.objects.filter(task_id=task_id))
    done = list(SubtaskHistory.objects.filter(task_id=task_id))
    return sorted(live + done, key=lambda s: (s.step, s.exec_id, s.ordinal))


class _TaskAdmin(_ReadOnly):
    list_display = (
        "id",
        "task_key",
        "type",
        "state",
        "step",
        "progress",
        "concurrency",
        "priority",
        "create_time",
        "state_update_time",
    )
    list_display_links = ("id", "task_key")
    list_filter: tuple[Any, ...] = ("state", "type", "step")
    search_fields = ("task_key",)
    readonly_fields = ("steps_and_subtasks",)
    exclude = ("meta",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        model = SubtaskHistory if self.model is TaskHistory else Subtask
        counts = model.objects.filter(task_id=OuterRef("id")).values("task_id")
        total = counts.annotate(n=Count("id")).values("n")
        succeeded = counts.annotate(n=Count("id", filter=Q(state=SubtaskState.SUCCEED.value))).values("n")
        return super().get_queryset(request).annotate(_total=total[:1], _succeeded=succeeded[:1])

    @admin.display(description="subtasks done")  # type: ignore[untyped-decorator]
    def progress(self, obj: Any) -> str:
        total = getattr(obj, "_total", None) or 0
        return f"{getattr(obj, '_succeeded', None) or 0}/{total}" if total else "-"

    @admin.display(description="steps and subtasks (per node)")  # type: ignore[untyped-decorator]
    def steps_and_subtasks(self, obj: Any) -> SafeString:
        rows = _subtask_rows(obj.id)
        if not rows:
            return format_html("<p>{}</p>", "no subtasks yet: the scheduler plans them on its next pass")
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.step, s.exec_id, s.ordinal, s.state, s.summary or "", s.error or "") for s in rows),
        )
        return format_html(
            "<table><thead><tr><th>step</th><th>node</th><th>ordinal</th><th>state</th><th>summary</th>"
            "<th>error</th></tr></thead><tbody>{}</tbody></table>",
            body,
        )


def _client_action(verb: str, past: str, method: Callable[[Any, int], bool], description: str) -> Callable[..., None]:
    """An admin action calling one client API method per selected task."""

    def action(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: Iterable[Task]) -> None:
        dxf = get_dxf()
        done: list[str] = []
        skipped: list[str] = []
        for task in queryset:
            (done if method(dxf, task.id) else skipped).append(task.task_key)
        if done:
            modeladmin.message_user(request, f"{past}: {', '.join(done)}", messages.SUCCESS)
        if skipped:
            modeladmin.message_user(
                request, f"not {past} (their state does not allow it): {', '.join(skipped)}", messages.WARNING
            )

    action.__name__ = f"{verb}_tasks"
    decorated: Callable[..., None] = admin.action(description=description, permissions=["change"])(action)
    return decorated


cancel_tasks = _client_action("cancel", "cancelled", lambda dxf, i: bool(dxf.cancel_task(i)), "Cancel selected tasks")
pause_tasks = _client_action("pause", "paused", lambda dxf, i: bool(dxf.pause_task(i)), "Pause selected tasks")
resume_tasks = _client_action("resume", "resumed", lambda dxf, i: bool(dxf.resume_task(i)), "Resume selected tasks")
resolve_tasks = _client_action(
    "resolve",
    "resolved",
    lambda dxf, i: bool(dxf.resolve_task(i)),
    "Resolve selected tasks (rerun their failed subtasks)",
)


@admin.register(Task)
class TaskAdmin(_TaskAdmin):
    list_filter = ("state", "type", "step", SubtaskProgressFilter)
    actions = [cancel_tasks, pause_tasks, resume_tasks, resolve_tasks]


@admin.register(TaskHistory)
class TaskHistoryAdmin(_TaskAdmin):
    list_filter = ("state", "type", "step", HistoryProgressFilter)
    actions = None


class _SubtaskAdmin(_ReadOnly):
    list_display = ("id", "task_id", "step", "ordinal", "exec_id", "state", "concurrency", "state_update_time")
    list_filter = ("state", "type", "step", "exec_id")
    search_fields = ("=task_id", "exec_id")
    exclude = ("meta",)
    actions = None

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        """Search by task key too (subtasks store the task id only)."""
        result, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            ids = list(Task.objects.filter(task_key=term).values_list("id", flat=True))
            ids += list(TaskHistory.objects.filter(task_key=term).values_list("id", flat=True))
            if ids:
                result = result | queryset.filter(task_id__in=ids)
        return result, may_have_duplicates


@admin.register(Subtask)
class SubtaskAdmin(_SubtaskAdmin):
    pass


@admin.register(SubtaskHistory)
class SubtaskHistoryAdmin(_SubtaskAdmin):
    pass


@admin.register(Node)
class NodeAdmin(_ReadOnly):
    list_display = ("host", "role", "cpu_count", "heartbeat", "types")
    list_filter = ("role",)
    search_fields = ("host",)
    actions = None

    @admin.display(description="task types")  # type: ignore[untyped-decorator]
    def types(self, node: Node) -> str:
        types = task_types_of(node.task_types)
        return "unknown (older version)" if types is None else ", ".join(types) or "none"
