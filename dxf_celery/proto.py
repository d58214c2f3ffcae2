"""Plain data of the framework: tasks, subtasks, states, steps, nodes and slots.

Everything here is pure data with no I/O, so every layer (storage, scheduler,
taskexecutor, handle) can share it without import cycles.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

#: The step of a task that has not been planned yet.
STEP_INIT = -1
#: The step of a task whose every business step is done.
STEP_DONE = -2

#: Priority given to every new task unless the caller picks one; smaller runs first.
NORMAL_PRIORITY = 512
MIN_PRIORITY = 1
MAX_PRIORITY = 1024
#: How many tasks a listing returns unless told otherwise (client API, CLI and storage alike).
DEFAULT_LIST_LIMIT = 100

#: At most this many tasks hold slots at once (DXF's MaxConcurrentTask).
MAX_CONCURRENT_TASKS = 16

#: What an empty task meta looks like.
EMPTY_META = b"{}"

#: The error message stored on a task that the user cancelled.
CANCELLED_BY_USER = "cancelled by user"


class TaskState(str, enum.Enum):
    """States of a task; the values are DXF's and are stored as they are."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEED = "succeed"
    FAILED = "failed"
    REVERTING = "reverting"
    AWAITING_RESOLUTION = "awaiting-resolution"
    REVERTED = "reverted"
    CANCELLING = "cancelling"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    MODIFYING = "modifying"

    def __str__(self) -> str:
        return self.value


class SubtaskState(str, enum.Enum):
    """States of a subtask; the values are DXF's and are stored as they are."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEED = "succeed"
    FAILED = "failed"
    CANCELED = "canceled"
    PAUSED = "paused"

    def __str__(self) -> str:
        return self.value


TASK_DONE_STATES = frozenset({TaskState.SUCCEED, TaskState.REVERTED, TaskState.FAILED})
SUBTASK_DONE_STATES = frozenset({SubtaskState.SUCCEED, SubtaskState.CANCELED, SubtaskState.FAILED})

#: States in which a task is still being worked on by the scheduler.
UNFINISHED_TASK_STATES = (
    TaskState.PENDING,
    TaskState.RUNNING,
    TaskState.REVERTING,
    TaskState.CANCELLING,
    TaskState.PAUSING,
    TaskState.RESUMING,
    TaskState.MODIFYING,
)
#: Unfinished states whose scheduler needs no slots (always served, even when saturated).
NO_RESOURCE_TASK_STATES = (
    TaskState.REVERTING,
    TaskState.CANCELLING,
    TaskState.PAUSING,
    TaskState.MODIFYING,
)
# Which states a task may move between is the table in ``dxf_celery.transitions``.


def is_cancelled_error(error: object) -> bool:
    """True when a stored task error is the user's cancel marker."""
    return error is not None and CANCELLED_BY_USER in str(error)


def validate_priority(priority: int) -> int:
    """Return ``priority`` or raise ``ValueError`` naming the valid range."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an int in [{MIN_PRIORITY}, {MAX_PRIORITY}], got {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority {priority} is out of range: use {MIN_PRIORITY}..{MAX_PRIORITY} "
            f"(smaller runs first, default {NORMAL_PRIORITY})"
        )
    return priority


@dataclass(frozen=True)
class StoredError(Exception):
    """An error read back from the database: the original type's name and message."""

    type_name: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> str:
        return json.dumps({"type": self.type_name, "message": self.message})

    @classmethod
    def from_exception(cls, err: BaseException) -> StoredError:
        if isinstance(err, StoredError):
            return err
        return cls(type(err).__name__, str(err) or type(err).__name__)

    @classmethod
    def from_json(cls, text: str | None) -> StoredError | None:
        """Parse a stored error; unparsable text becomes a plain error with the raw text."""
        if text is None or text == "":
            return None
        try:
            data = json.loads(text)
            return cls(str(data["type"]), str(data["message"]))
        except (ValueError, KeyError, TypeError):
            return cls("Error", text)


def serialize_error(err: BaseException | None) -> str | None:
    """Turn an exception into the JSON text stored in an ``error`` column."""
    if err is None:
        return None
    return StoredError.from_exception(err).to_json()


@dataclass(frozen=True)
class ExtraParams:
    """Task options that are not used for ordering or filtering."""

    #: Park the task in ``awaiting-resolution`` instead of reverting when a subtask fails.
    manual_recovery: bool = False
    #: Cap on the slots used at runtime (0 = no cap); allocation still uses concurrency.
    max_runtime_slots: int = 0
    #: Steps the cap applies to (empty = all steps).
    target_steps: tuple[int, ...] = ()

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        if self.manual_recovery:
            data["manual_recovery"] = True
        if self.max_runtime_slots:
            data["max_runtime_slots"] = self.max_runtime_slots
        if self.target_steps:
            data["target_steps"] = list(self.target_steps)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | None) -> ExtraParams:
        """Parse stored extra params; unparsable JSON gives the defaults, as in DXF."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                manual_recovery=bool(data.get("manual_recovery", False)),
                max_runtime_slots=int(data.get("max_runtime_slots", 0)),
                target_steps=tuple(int(s) for s in data.get("target_steps", ())),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


class ModificationType(str, enum.Enum):
    """What a modification changes; the values are DXF's."""

    CONCURRENCY = "modify_concurrency"
    MAX_NODE_COUNT = "modify_max_node_count"
    BATCH_SIZE = "modify_batch_size"
    MAX_WRITE_SPEED = "modify_max_write_speed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Modification:
    """One change requested on a running task."""

    type: str
    to: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": str(self.type), "to": self.to}


@dataclass(frozen=True)
class ModifyParam:
    """A modification request: the state to return to and the changes to apply."""

    prev_state: TaskState
    modifications: tuple[Modification, ...]

    def to_json(self) -> str:
        return json.dumps(
            {"prev_state": self.prev_state.value, "modifications": [m.to_dict() for m in self.modifications]}
        )

    @classmethod
    def from_json(cls, text: str | None) -> ModifyParam | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(
                prev_state=TaskState(data["prev_state"]),
                modifications=tuple(Modification(str(m["type"]), int(m["to"])) for m in data["modifications"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class TaskBase:
    """The light columns of a task: enough to rank it and decide what to do with it."""

    id: int
    key: str
    type: str
    state: TaskState
    step: int
    priority: int = NORMAL_PRIORITY
    concurrency: int = 1
    create_time: datetime = field(default_factory=datetime.now)
    target_scope: str = ""
    max_node_count: int = 0
    extra_params: ExtraParams = field(default_factory=ExtraParams)

    def is_done(self) -> bool:
        return self.state in TASK_DONE_STATES

    def rank_key(self) -> tuple[int, datetime, int]:
        """Sort key of DXF's rank order: priority, then age, then id (smaller first)."""
        return (self.priority, self.create_time, self.id)

    def compare(self, other: TaskBase) -> int:
        """Negative when ``self`` ranks higher (runs first) than ``other``."""
        a, b = self.rank_key(), other.rank_key()
        return -1 if a < b else (1 if a > b else 0)

    def runtime_slots(self) -> int:
        """Slots the task uses at runtime, honouring ``max_runtime_slots`` for the current step."""
        cap = self.extra_params.max_runtime_slots
        if cap > 0 and (not self.extra_params.target_steps or self.step in self.extra_params.target_steps):
            return min(cap, self.concurrency)
        return self.concurrency

    def base(self) -> TaskBase:
        """A copy holding only the base fields."""
        return TaskBase(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TaskBase)})


@dataclass
class Task(TaskBase):
    """A task with its heavy columns (meta, error, times, pending modification)."""

    meta: bytes = EMPTY_META
    error: StoredError | None = None
    start_time: datetime | None = None
    state_update_time: datetime | None = None
    end_time: datetime | None = None
    modify_param: ModifyParam | None = None


@dataclass
class SubtaskBase:
    """The light columns of a subtask."""

    id: int
    task_id: int
    step: int
    type: str
    state: SubtaskState
    exec_id: str
    ordinal: int
    #: Slots of the task on the node; 0 when planning means "the task's concurrency".
    concurrency: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None

    def is_done(self) -> bool:
        return self.state in SUBTASK_DONE_STATES


@dataclass
class Subtask(SubtaskBase):
    """A subtask with its meta (which ``run_subtask`` may rewrite), summary and error."""

    meta: bytes = b""
    summary: str = "{}"
    error: StoredError | None = None
    update_time: datetime | None = None
    end_time: datetime | None = None


@dataclass
class SubtaskClaim:
    """A subtask a node just moved to ``running``, with its task's cheap fingerprint.

    The fingerprint lets the executor skip a task read per subtask: every task transition
    (a modification included) rewrites ``state_update_time``.
    """

    subtask: Subtask
    task_state: TaskState
    task_concurrency: int
    task_stamp: datetime | None


@dataclass
class SubtaskFinish:
    """A subtask that succeeded: its (possibly rewritten) meta and its final summary."""

    subtask_id: int
    meta: bytes
    summary: str | None = None


@dataclass
class TaskExecInfo:
    """A task that has runnable subtasks on some node, with the concurrency they ask for."""

    task: TaskBase
    subtask_concurrency: int


@dataclass(frozen=True)
class NodeLoad:
    """One task's live subtasks on one node, as the scheduler's aggregate reads them (no rows).

    ``first_running`` / ``first_pending`` are the lowest ids in each state (0: none), so the
    balancer can order nodes exactly as it orders the rows themselves (running first, by id).
    """

    pending: int = 0
    running: int = 0
    #: The largest concurrency among them: the slots the task holds on the node.
    concurrency: int = 0
    first_pending: int = 0
    first_running: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.running


#: Live load per task id, then per exec id (only pairs with a pending or running subtask).
LiveLoad: TypeAlias = dict[int, dict[str, NodeLoad]]


def used_slots(load: LiveLoad) -> dict[str, int]:
    """Per node: the sum over tasks of the largest concurrency of its live subtasks (DXF's
    ``GetUsedSlotsOnNodes``), from the aggregate."""
    out: dict[str, int] = {}
    for per_node in load.values():
        for exec_id, cell in per_node.items():
            out[exec_id] = out.get(exec_id, 0) + cell.concurrency
    return out


@dataclass(frozen=True)
class ManagedNode:
    """A row of the node table: a worker node that may run subtasks."""

    id: str
    role: str
    cpu_count: int
    heartbeat: datetime | None = None
    #: The task types its process registered (sorted); None when unknown (a node of an older version).
    task_types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StepResource:
    """What one step executor may use on this node: CPU slots and a memory budget in bytes."""

    cpu: int
    mem: int


@dataclass(frozen=True)
class NodeResource:
    """The resources of the local node; ``total_cpu`` is its number of slots."""

    total_cpu: int
    total_mem: int
    total_disk: int = 0

    def step_resource(self, task: TaskBase) -> StepResource:
        """A step gets its runtime slots and the matching share of the node's memory."""
        slots = task.runtime_slots()
        mem = slots * self.total_mem // self.total_cpu if self.total_cpu > 0 else 0
        return StepResource(cpu=slots, mem=mem)
