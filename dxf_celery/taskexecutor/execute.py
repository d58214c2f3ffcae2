"""Step executors (the code a task type runs per subtask) and their progress summary."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from dxf_celery.context import Context
from dxf_celery.proto import STEP_INIT, StepResource, Subtask

#: Progress points kept by a summary (DXF keeps 5: a window of about 15 s at one point per 3 s).
MAX_PROGRESS_POINTS = 5


class CheckpointStore(Protocol):
    """Where subtask checkpoints live (the ``TaskManager``; see ``ExecutorSubtasks``)."""

    def save_subtask_checkpoint(self, exec_id: str, subtask_id: int, checkpoint: Any) -> bool: ...

    def get_subtask_checkpoint(self, subtask_id: int) -> Any: ...


class StepExecFrameworkInfo:
    """What the framework tells a step executor before ``init``: its step, resource budget
    and where it keeps per-subtask checkpoints."""

    step: int = STEP_INIT
    resource: StepResource | None = None
    checkpoint_store: CheckpointStore | None = None

    def get_step(self) -> int:
        return self.step

    def set_checkpoint_store(self, store: CheckpointStore) -> None:
        self.checkpoint_store = store

    def save_checkpoint(self, subtask: Subtask, checkpoint: Any) -> bool:
        """Persist how far ``subtask`` got (any JSON-serialisable value) so a re-run can resume.

        A re-run of the subtask (an idempotent leftover, a retry, a resumed or resolved task,
        or another node after a rebalance) reads it back with :meth:`load_checkpoint`. The
        write is keyed by the subtask's id and ``exec_id`` and needs it ``running``: it
        returns False, writing nothing, once this node has lost the subtask, so the step
        should stop. ``TypeError`` for a value JSON cannot encode.
        """
        return self._checkpoints().save_subtask_checkpoint(subtask.exec_id, subtask.id, checkpoint)

    def load_checkpoint(self, subtask: Subtask) -> Any:
        """The last checkpoint saved for ``subtask``, or None when none was saved."""
        return self._checkpoints().get_subtask_checkpoint(subtask.id)

    def _checkpoints(self) -> CheckpointStore:
        if self.checkpoint_store is None:
            raise RuntimeError(
                f"{type(self).__name__} has no checkpoint store: the framework sets one before init; "
                f"in a unit test call set_checkpoint_store(task_manager) first"
            )
        return self.checkpoint_store

    def get_resource(self) -> StepResource | None:
        return self.resource

    def set_resource(self, resource: StepResource) -> None:
        self.resource = resource


class StepExecutor(Protocol):
    """Runs the subtasks of one step on one node: ``init`` → ``run_subtask`` (N times) → ``cleanup``."""

    step: int
    resource: StepResource | None

    def init(self, ctx: Context) -> None: ...

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        """Do the work; may rewrite ``subtask.meta`` (persisted on success). Watch ``ctx``."""

    def cleanup(self, ctx: Context) -> None: ...

    def realtime_summary(self) -> SubtaskSummary | None: ...

    def reset_summary(self) -> None: ...

    def task_meta_modified(self, ctx: Context, meta: bytes) -> None:
        """Apply a new task meta live; raising makes the framework recreate the step executor."""

    def resource_modified(self, ctx: Context, resource: StepResource) -> None:
        """Apply a new slot budget live (shrink before returning); raising leaves the old one."""


class BaseStepExecutor(StepExecFrameworkInfo):
    """No-op defaults; the two ``*_modified`` hooks refuse, so changes recreate the executor."""

    def init(self, ctx: Context) -> None:
        return None

    def run_subtask(self, ctx: Context, subtask: Subtask) -> None:
        return None

    def cleanup(self, ctx: Context) -> None:
        return None

    def realtime_summary(self) -> SubtaskSummary | None:
        return None

    def reset_summary(self) -> None:
        return None

    def task_meta_modified(self, ctx: Context, meta: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot apply a new task meta live")

    def resource_modified(self, ctx: Context, resource: StepResource) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot apply a new resource live")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class Progress:
    """One sample of a subtask's counters."""

    row_count: int
    bytes: int
    update_time: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"row_count": self.row_count, "bytes": self.bytes, "update_time": self.update_time.isoformat()}


@dataclass
class SubtaskSummary:
    """Counters a step executor reports while a subtask runs; persisted as JSON every few seconds.

    Counters may be bumped from several threads; use :meth:`add` for that.
    """

    row_count: int = 0
    bytes: int = 0
    read_bytes: int = 0
    get_request_count: int = 0
    put_request_count: int = 0
    progresses: list[Progress] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, rows: int = 0, bytes: int = 0, read_bytes: int = 0, gets: int = 0, puts: int = 0) -> None:
        with self._lock:
            self.row_count += rows
            self.bytes += bytes
            self.read_bytes += read_bytes
            self.get_request_count += gets
            self.put_request_count += puts

    def update(self, now: datetime | None = None) -> None:
        """Record the current counters as a progress point, keeping the last few."""
        with self._lock:
            self.progresses.append(Progress(self.row_count, self.bytes, now or _utc_now()))
            del self.progresses[:-MAX_PROGRESS_POINTS]

    def reset(self, now: datetime | None = None) -> None:
        with self._lock:
            self.row_count = self.bytes = self.read_bytes = 0
            self.get_request_count = self.put_request_count = 0
            self.progresses.clear()
        self.update(now)

    def speed_in_time_range(self, end: datetime, seconds: float) -> float:
        """Bytes per second over ``[end - seconds, end]``, pro-rating segments that overlap it in part."""
        with self._lock:
            points = list(self.progresses)
        if len(points) < 2 or seconds <= 0:
            return 0.0
        start_ts = end.timestamp() - seconds
        end_ts = end.timestamp()
        if end_ts < points[0].update_time.timestamp() or start_ts > points[-1].update_time.timestamp():
            return 0.0
        total = 0.0
        for a, b in itertools.pairwise(points):
            seg_start, seg_end = a.update_time.timestamp(), b.update_time.timestamp()
            if seg_end < start_ts:
                continue
            if seg_start > end_ts:
                break
            length = seg_end - seg_start
            if length <= 0:
                continue
            overlap = min(seg_end, end_ts) - max(seg_start, start_ts)
            total += (b.bytes - a.bytes) * overlap / length
        return total / seconds

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "row_count": self.row_count,
                "bytes": self.bytes,
                "read_bytes": self.read_bytes,
                "get_request_count": self.get_request_count,
                "put_request_count": self.put_request_count,
                "progresses": [p.to_dict() for p in self.progresses],
            }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubtaskSummary:
        return cls(
            row_count=int(data.get("row_count", 0)),
            bytes=int(data.get("bytes", 0)),
            read_bytes=int(data.get("read_bytes", 0)),
            get_request_count=int(data.get("get_request_count", 0)),
            put_request_count=int(data.get("put_request_count", 0)),
            progresses=[
                Progress(int(p["row_count"]), int(p["bytes"]), datetime.fromisoformat(p["update_time"]))
                for p in data.get("progresses", [])
            ],
        )

    @classmethod
    def from_json(cls, text: str) -> SubtaskSummary:
        return cls.from_dict(json.loads(text))
