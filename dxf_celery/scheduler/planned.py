"""A planned step as a sequence of subtasks made on demand from the planner's metas.

The scheduler places subtask *i* on ``nodes[i % len(nodes)]``; holding a 100,000-subtask plan
as 100,000 ``Subtask`` objects (plus their row dicts) was most of the scheduler process's
peak memory at a big step switch. The storage layer slices this sequence, so only a slice's
subtasks exist at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from dxf_celery.proto import Subtask, SubtaskState, TaskBase


class PlannedSubtasks(Sequence[Subtask]):
    """The subtasks of ``step`` for ``metas``, round-robin over ``nodes``, ordinals 1..n."""

    def __init__(self, task: TaskBase, step: int, metas: Sequence[bytes], nodes: Sequence[str]) -> None:
        if metas and not nodes:
            raise ValueError("a plan with subtasks needs at least one node")
        self._task = task
        self._step = step
        self._metas = metas
        self._nodes = tuple(nodes)

    def __len__(self) -> int:
        return len(self._metas)

    @overload
    def __getitem__(self, index: int) -> Subtask: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Subtask]: ...

    def __getitem__(self, index: int | slice) -> Subtask | Sequence[Subtask]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self._metas)))]
        if index < 0:
            index += len(self._metas)
        if not 0 <= index < len(self._metas):
            raise IndexError(index)
        return self._make(index)

    def _make(self, i: int) -> Subtask:
        task = self._task
        return Subtask(
            id=0,
            task_id=task.id,
            step=self._step,
            type=task.type,
            state=SubtaskState.PENDING,
            exec_id=self._nodes[i % len(self._nodes)],
            ordinal=i + 1,
            concurrency=task.concurrency,
            meta=self._metas[i],
        )


__all__ = ["PlannedSubtasks"]
