"""BaseScheduler: the per-task state machine, one handler per task state.

The manager calls :meth:`BaseScheduler.schedule_task` once per pass. Each call re-reads the
task, runs the handler of its state, and writes at most a few compare-and-set updates, so a
second scheduler doing the same at the same time (two owners during a lease hand-over)
loses its writes silently instead of doubling them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dxf_celery.context import Context
from dxf_celery.errors import InvalidPlanError, TaskNotFoundError, UnstableSubtasksError
from dxf_celery.proto import (
    CANCELLED_BY_USER,
    STEP_DONE,
    STEP_INIT,
    ModificationType,
    StoredError,
    SubtaskState,
    Task,
    TaskBase,
    TaskState,
)
from dxf_celery.scheduler.interfaces import Extension, StorageTaskHandle, TaskHandle
from dxf_celery.scheduler.nodes import filter_by_scope
from dxf_celery.scheduler.param import Param
from dxf_celery.scheduler.planned import PlannedSubtasks
from dxf_celery.scheduler.planning import validate_plan

logger = logging.getLogger(__name__)


#: The error stored on a task the user cancelled.
CANCELLED_ERROR = StoredError("TaskCancelledError", CANCELLED_BY_USER)


class BaseScheduler:
    """Drives one task through its states with the hooks of its type's :class:`Extension`."""

    def __init__(self, ctx: Context, task: Task, param: Param, extension: Extension) -> None:
        self.ctx = ctx
        self.param = param
        self.extension = extension
        self.handle: TaskHandle = StorageTaskHandle(param.task_manager)
        self._task = task
        self._reload = False
        #: What the manager read for this pass in its batched reads (used once, then cleared).
        self._pre_base: TaskBase | None = None
        self._pre_counts: dict[SubtaskState, int] | None = None
        self._prefetched = False
        #: Set when planning found no eligible node: the scheduler then gives its slots back.
        self._no_eligible = False
        #: Set when this pass moved the task to a final state: the scheduler goes at once, so
        #: its slots go to a waiting task in the same pass instead of one pass later.
        self._ended = False
        #: Writes attempted so far (won or lost): the manager tells a pass that did work by it.
        self.writes = 0

    # ------------------------------------------------------------------ Scheduler protocol

    def init(self) -> None:
        """Nothing to prepare by default; a subclass raising here fails the task."""

    def close(self) -> None:
        self.ctx.cancel()

    def get_task(self) -> Task:
        return self._task

    def prefetch(self, base: TaskBase | None, counts: dict[SubtaskState, int] | None) -> None:
        """Hand over the manager's batched reads for the next :meth:`schedule_task` call.

        ``base`` None means the task is no longer live; ``counts`` are the subtask counts of
        ``base.step``, read after ``base``.
        """
        self._pre_base, self._pre_counts, self._prefetched = base, counts, True

    def schedule_task(self) -> bool:
        """Run the handler of the current state once; False once this scheduler should go."""
        try:
            return self._schedule_once()
        finally:
            self._pre_base, self._pre_counts, self._prefetched = None, None, False

    def _schedule_once(self) -> bool:
        if self.ctx.done():
            return False
        self._no_eligible = False
        self._ended = False
        try:
            self._refresh_task()
        except TaskNotFoundError:
            return False  # moved to history by another owner
        task = self._task
        state = task.state
        allocated = self.param.allocated_slots
        if state == TaskState.CANCELLING:
            self.on_cancelling()
        elif state == TaskState.PAUSING:
            self.on_pausing()
        elif state == TaskState.PAUSED:
            return False  # a paused task holds no slots; resume brings it back
        elif state == TaskState.RESUMING:
            if not allocated:
                return False
            self.on_resuming()
        elif state == TaskState.REVERTING:
            self.on_reverting()
            return not self._ended
        elif state == TaskState.PENDING:
            if not allocated:
                return False
            self.on_pending()
            return not self._no_eligible  # no node can run it: hold no slots while it waits
        elif state == TaskState.RUNNING:
            if not allocated:
                return False
            self.on_running()
            return not (self._no_eligible or self._ended)
        elif state == TaskState.MODIFYING:
            return self.on_modifying()
        else:
            # succeed / reverted / failed: done. awaiting-resolution: parked until an operator
            # resolves or cancels it; dropping the scheduler frees its slots meanwhile.
            return False
        return True

    # ------------------------------------------------------------------ helpers

    def _refresh_task(self) -> None:
        tm = self.param.task_manager
        if self._prefetched and self._pre_base is None:
            raise TaskNotFoundError()
        pre, self._pre_base = self._pre_base, None
        if not self._reload:
            base = pre if pre is not None else tm.get_task_base_by_id(self._task.id)
            if _same_base(base, self._task):
                return  # prefetched counts (read after ``pre``) describe this very copy
        # A full read is newer than the prefetched counts: they may describe an older state.
        self._pre_counts = None
        self._task = tm.get_task_by_id(self._task.id)
        self._reload = False

    def _wrote(self) -> None:
        """Read the whole task again on the next pass (after any write, won or lost)."""
        self._reload = True
        self.writes += 1

    def _active_count(self) -> tuple[dict[SubtaskState, int], int]:
        counts, self._pre_counts = self._pre_counts, None
        if counts is None:
            counts = self.param.task_manager.get_subtask_cnt_group_by_states(self._task.id, self._task.step)
            # Read after the pass's usage snapshot: re-read the usage before planning on it.
            self.param.slot_manager.mark_stale()
        return counts, counts.get(SubtaskState.PENDING, 0) + counts.get(SubtaskState.RUNNING, 0)

    def eligible_exec_ids(self, *, for_balance: bool = False) -> list[str]:
        """Nodes that may hold subtasks of this task.

        The type's ``get_eligible_instances`` overrides the scope filter; for planning the
        list is cut to ``max_node_count`` (the balancer makes its own cut, keeping the nodes
        that already hold the most subtasks).
        """
        task = self._task
        ids = list(self.extension.get_eligible_instances(self.ctx, task))
        if not ids:
            ids = [n.id for n in filter_by_scope(self.param.node_manager.get_nodes(), task.target_scope)]
        if not for_balance and task.max_node_count > 0:
            ids = ids[: task.max_node_count]
        return ids

    # ------------------------------------------------------------------ state handlers

    def on_cancelling(self) -> None:
        self._revert(CANCELLED_ERROR)

    def on_pausing(self) -> None:
        _, active = self._active_count()
        if active == 0:
            self.param.task_manager.finish_pausing(self._task.id)
            self._wrote()

    def on_resuming(self) -> None:
        tm = self.param.task_manager
        counts, _ = self._active_count()
        if counts.get(SubtaskState.PAUSED, 0) == 0:
            tm.finish_resuming(self._task.id)
        else:
            tm.resume_subtasks(self._task.id)
        self._wrote()

    def on_reverting(self) -> None:
        _, active = self._active_count()
        if active > 0:
            self.extension.on_tick(self.ctx, self._task)
            return
        try:
            self.extension.on_done(self.ctx, self.handle, self._task)
        except Exception:
            logger.exception("on_done of reverting task %d failed; retrying next pass", self._task.id)
            return
        self._ended = self.param.task_manager.finish_reverting(self._task.id)
        self._wrote()

    def on_pending(self) -> None:
        self.switch_to_next_step()

    def on_running(self) -> None:
        tm = self.param.task_manager
        counts, active = self._active_count()
        if counts.get(SubtaskState.FAILED, 0) or counts.get(SubtaskState.CANCELED, 0):
            errors = tm.get_subtask_errors(self._task.id)
            if errors:
                self._revert_or_await(errors[0])
                return
        if counts.get(SubtaskState.PAUSED, 0):
            # A pause that raced with a resume left paused rows behind: give them back.
            tm.resume_subtasks(self._task.id)
            return
        if active == 0:
            self.switch_to_next_step()
            return
        self.extension.on_tick(self.ctx, self._task)

    def on_modifying(self) -> bool:
        """Apply the modification; False when the scheduler must be recreated (slots changed)."""
        task = self._task
        param = task.modify_param
        if param is None:  # another owner applied it between our reads
            self._wrote()
            return True
        old_concurrency = task.concurrency
        meta_mods = []
        for mod in param.modifications:
            if mod.type == ModificationType.CONCURRENCY.value:
                task.concurrency = mod.to
            elif mod.type == ModificationType.MAX_NODE_COUNT.value:
                if mod.to >= 0:
                    task.max_node_count = mod.to  # 0: no limit, as at submit
                else:
                    logger.warning("task %d: ignoring max_node_count %d (must be >= 0)", task.id, mod.to)
            else:
                meta_mods.append(mod)
        if meta_mods:
            try:
                task.meta = self.extension.modify_meta(task.meta, meta_mods)
            except NotImplementedError:
                logger.warning("task %d: type %s cannot apply %s; ignored", task.id, task.type, meta_mods)
            except Exception:
                logger.exception("task %d: modify_meta failed; retrying next pass", task.id)
                self._wrote()
                return True
        self.param.task_manager.finish_modifying(task)
        self._wrote()
        return task.concurrency == old_concurrency

    # ------------------------------------------------------------------ transitions

    def _revert(self, err: BaseException | None) -> None:
        self.param.task_manager.start_reverting(self._task.id, self._task.state, err)
        self._wrote()

    def _revert_or_await(self, err: BaseException | None) -> None:
        tm = self.param.task_manager
        if self._task.extra_params.manual_recovery:
            tm.await_resolution(self._task.id, self._task.state, err)
            self._wrote()
        else:
            self._revert(err)

    def switch_to_next_step(self) -> None:
        """Plan the next step (or finish the task) from the pending or running state."""
        task = self._task
        tm = self.param.task_manager
        next_step = self.extension.get_next_step(task.base())
        if next_step == STEP_DONE:
            if task.state == TaskState.PENDING:
                # Nothing to run at all: enter running with no subtasks; the next pass finishes.
                tm.switch_task_step(task, TaskState.RUNNING, STEP_INIT, [])
                self._wrote()
                return
            try:
                self.extension.on_done(self.ctx, self.handle, task)
            except Exception:
                logger.exception("on_done of task %d failed; retrying next pass", task.id)
                return
            self._ended = tm.succeed(task.id)
            self._wrote()
            return
        exec_ids = self.eligible_exec_ids()
        if not exec_ids:
            logger.debug("task %d: no eligible node to plan step %d; waiting without slots", task.id, next_step)
            self._no_eligible = True
            return
        retries = self.param.planning
        if not retries.may_try(task.id, next_step):
            return  # backing off after a retryable planning error
        try:
            plan = self.extension.on_next_subtasks_batch(self.ctx, self.handle, task, exec_ids, next_step)
            metas = validate_plan(task, next_step, plan)
        except Exception as err:
            self._wrote()  # the hook may have changed task.meta: drop that copy
            if self._is_retryable(err) and retries.failed(task.id, next_step):
                logger.info(
                    "task %d: retryable planning error for step %d (%d of at most %d retries): %s",
                    task.id,
                    next_step,
                    retries.failures(task.id),
                    retries.max_retries,
                    err,
                )
                return
            logger.warning("task %d: planning step %d failed, reverting: %s", task.id, next_step, err)
            retries.forget(task.id)
            self._revert(err)
            return
        retries.forget(task.id)
        self._schedule_subtasks(next_step, metas, exec_ids)

    def _is_retryable(self, err: BaseException) -> bool:
        if isinstance(err, InvalidPlanError):
            return False
        try:
            return bool(self.extension.is_retryable_err(err))
        except Exception:
            logger.exception("task %d: is_retryable_err raised; treating the error as final", self._task.id)
            return False

    def _schedule_subtasks(self, next_step: int, metas: Sequence[bytes], exec_ids: Sequence[str]) -> None:
        task = self._task
        tm = self.param.task_manager
        slots = self.param.slot_manager
        # Usage read after this task's counts (DXF reads it per plan): an older snapshot can
        # predate the last subtasks of the step that just finished and make their nodes look
        # full. The manager reads it once per pass after its batched counts; a scheduler that
        # counted on its own marked it stale.
        slots.used_for_planning(tm.get_used_slots_on_nodes)
        nodes = slots.adjust_eligible_nodes(exec_ids, task.concurrency)
        subtasks = PlannedSubtasks(task, next_step, metas, nodes)
        total = sum(len(m) for m in metas)
        self._wrote()
        held = set(nodes[: len(subtasks)])

        def planned(switched: bool) -> None:
            if switched:
                logger.info(
                    "task %d: step %d planned with %d subtasks on %d nodes", task.id, next_step, len(metas), len(nodes)
                )

        queue = self.param.step_switches
        if queue is not None and total < self.param.intervals.batch_switch_bytes:
            # Written with the pass's other switches; its slots count for the rest of the pass
            # now (a switch that then loses only leaves the usage cautious until the next read).
            slots.account(held, task.concurrency)
            queue.add(task, TaskState.RUNNING, next_step, subtasks, planned)
            return
        try:
            if total >= self.param.intervals.batch_switch_bytes:
                switched = tm.switch_task_step_in_batch(task, TaskState.RUNNING, next_step, subtasks)
            else:
                switched = tm.switch_task_step(task, TaskState.RUNNING, next_step, subtasks)
        except UnstableSubtasksError as err:
            logger.error("task %d: %s; reverting", task.id, err)
            self._revert(err)
            return
        if switched:
            slots.account(held, task.concurrency)
        planned(switched)


def _same_base(base: TaskBase, task: Task) -> bool:
    return (
        base.state == task.state
        and base.step == task.step
        and base.concurrency == task.concurrency
        and base.max_node_count == task.max_node_count
        and base.priority == task.priority
        and base.extra_params == task.extra_params
    )
