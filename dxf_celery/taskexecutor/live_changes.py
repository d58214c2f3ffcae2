"""Concurrency and meta changes applied to a step executor while its subtask runs.

The executor's watcher reads the task while a subtask runs; a change the step executor can
take live (its ``resource_modified`` / ``task_meta_modified`` hooks) is applied here, and one
it refuses waits for the next subtask boundary, where the step executor is rebuilt.
"""

from __future__ import annotations

import dataclasses
import logging

from dxf_celery.context import Context
from dxf_celery.proto import NodeResource, Task
from dxf_celery.taskexecutor.execute import StepExecutor
from dxf_celery.taskexecutor.slots import SlotManager

logger = logging.getLogger(__name__)


def apply_live_changes(
    step_exec: StepExecutor, ctx: Context, old: Task, new: Task, slots: SlotManager, resources: NodeResource
) -> Task:
    """Apply what changed from ``old`` to ``new``; returns ``old`` with the applied fields updated."""
    applied = old
    if new.concurrency != old.concurrency and (new.concurrency < old.concurrency or slots.exchange(new)):
        try:
            step_exec.resource_modified(ctx, resources.step_resource(new))
        except Exception as err:
            logger.info("task %d: cannot change live to %d slots: %s", new.id, new.concurrency, err)
            if new.concurrency > old.concurrency:
                slots.exchange(old)  # give back the slots taken for the refused growth
        else:
            if new.concurrency < old.concurrency:
                slots.exchange(new)
            step_exec.resource = resources.step_resource(new)
            applied = dataclasses.replace(applied, concurrency=new.concurrency)
    if new.meta != old.meta:
        try:
            step_exec.task_meta_modified(ctx, new.meta)
        except Exception as err:
            logger.info("task %d: cannot apply the new meta live: %s", new.id, err)
        else:
            applied = dataclasses.replace(applied, meta=new.meta)
    return applied
