"""Parallel subtasks (opt-in): one executor runs up to ``concurrency`` subtasks of its step at once.

DXF runs one subtask of a task per node at a time; a type whose
:meth:`~dxf_celery.taskexecutor.interfaces.Extension.allows_parallel_subtasks` says yes gets
one *lane* per slot the task holds (``task.runtime_slots()``: no extra slots). Each lane has
its own step executor, its own claim connection and runs its subtasks back to back on the
same protocol as the one-at-a-time path (``_run_subtask``, ``_finish_and_claim``). Lane 0 is
the executor's own thread with the executor's step executor (on prefork, the main thread,
which the SIGUSR1 path interrupts); the others are threads (interrupted with an asynchronous
exception). Every lane's subtask context is a child of the one step context, so
``cancel()``, ``cancel_running_subtask()``, the SQL watch and a drain's grace reach them all.

The block ends when every lane has stopped: a lane stops when nothing is pending, when its
subtask did not succeed (then no lane claims again: a failure fails the step, and the
slow path decides what a left-over row means), on a drain, a cancel, or when a claim shows
the task changed (the claimed subtask is given back; the slow path applies the change and
starts the lanes again). :class:`~dxf_celery.taskexecutor.ownership.RunningHere` tells the
balance check which running rows are siblings, so only real leftovers meet DXF's rule.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from dxf_celery.context import Context
from dxf_celery.errors import ExecutorCancelledError
from dxf_celery.proto import StepResource, Subtask, SubtaskClaim, SubtaskFinish, Task
from dxf_celery.taskexecutor.drain import Drain
from dxf_celery.taskexecutor.execute import StepExecFrameworkInfo, StepExecutor
from dxf_celery.taskexecutor.interfaces import Extension, SubtaskClaims
from dxf_celery.taskexecutor.ownership import RunningHere
from dxf_celery.taskexecutor.param import Param
from dxf_celery.taskexecutor.watcher import Watch

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LaneHost(Protocol):
    """What the lanes use of :class:`~dxf_celery.taskexecutor.task_executor.BaseTaskExecutor`."""

    ctx: Context
    param: Param
    extension: Extension
    drain_state: Drain
    _lock: threading.RLock
    _task: Task
    _here: RunningHere | None

    @property
    def _exec_id(self) -> str: ...

    @property
    def _task_id(self) -> int: ...

    def _sql(self, fn: Callable[[], T], what: str) -> T: ...

    def _run_subtask(self, step_exec: StepExecutor, step_ctx: Context, subtask: Subtask) -> SubtaskFinish | None: ...

    def _finish_and_claim(
        self,
        finish: SubtaskFinish | None,
        step: int | None,
        *,
        finished_step: int = 0,
        claims: SubtaskClaims | None = None,
    ) -> SubtaskClaim | None: ...

    def _fingerprint_matches(self, claim: SubtaskClaim) -> bool: ...


def lane_count(extension: Extension, task: Task) -> int:
    """How many subtasks of ``task`` this node runs at once: 1 unless the type opts in."""
    try:
        allowed = extension.allows_parallel_subtasks(task)
    except Exception:
        logger.exception("task %d: allows_parallel_subtasks failed; running one subtask at a time", task.id)
        return 1
    return max(1, task.runtime_slots()) if allowed else 1


def lane_resource(full: StepResource, lanes: int) -> StepResource:
    """Each lane's share of the step's slots and memory."""
    return StepResource(cpu=max(1, full.cpu // lanes), mem=full.mem // lanes)


class _Lane:
    def __init__(self, index: int, step_exec: StepExecutor | None, claims: SubtaskClaims | None) -> None:
        self.index = index
        self.step_exec = step_exec
        self.claims = claims  # None: the executor's own connection (lane 0)


class ParallelBlock:
    """One parallel run of a step: lanes started, run, joined."""

    def __init__(self, ex: LaneHost, step_ctx: Context, task: Task, lanes: int) -> None:
        self.ex = ex
        self.step_ctx = step_ctx
        self.task = task
        self.step = task.step
        self.lanes = lanes
        self.resource = lane_resource(ex.param.node_resource.step_resource(task), lanes)
        self.here = RunningHere()
        self.stopping = threading.Event()
        self.clean = True  # every lane's subtasks succeeded
        self.changed = False  # a claim showed the task changed
        self.crash: BaseException | None = None

    # ------------------------------------------------------------------ the block

    def run(self, step_exec: StepExecutor, first: Subtask) -> bool:
        """Run ``first`` and everything claimable; True to look again at once (as ``_run_subtasks``)."""
        ex = self.ex
        self.here = RunningHere((first.id,))
        ex._here = self.here
        old_resource = step_exec.resource
        step_exec.resource = self.resource
        threads = [
            threading.Thread(target=self._extra_lane, args=(i,), name=f"dxf-lane-{ex._task_id}-{i}", daemon=True)
            for i in range(1, self.lanes)
        ]
        try:
            for t in threads:
                t.start()
            self._run_lane(_Lane(0, step_exec, None), first)
        finally:
            self.stopping.set()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # a timed join keeps the main thread's signal handlers running
            ex._here = None
            step_exec.resource = old_resource
        if self.crash is not None:
            raise self.crash
        return self.changed or self.clean

    def _extra_lane(self, index: int) -> None:
        ex = self.ex
        claims: SubtaskClaims | None = None
        lane = _Lane(index, None, None)
        try:
            lane.step_exec = self._new_step_executor()
            if lane.step_exec is None:
                return
            claims = ex.param.task_table.subtask_claims(ex._exec_id, ex._task_id)
            lane.claims = claims
            self._run_lane(lane, self._next(lane, None, None))
        except ExecutorCancelledError as err:
            logger.info("task %d: lane %d interrupted: %s", ex._task_id, index, err)
        except Exception as err:
            logger.exception("task %d: lane %d crashed", ex._task_id, index)
            self.crash = err
            self.stopping.set()
        finally:
            if lane.step_exec is not None:
                try:
                    lane.step_exec.cleanup(ex.ctx)
                except Exception:
                    logger.exception("task %d: lane %d: step executor cleanup failed", ex._task_id, index)
            if claims is not None:
                try:
                    claims.close()
                except Exception:  # a dead connection cannot be closed cleanly
                    pass

    def _new_step_executor(self) -> StepExecutor | None:
        """A lane's own step executor; None (the lane does not run) when the type cannot make one now."""
        ex = self.ex
        try:
            step_exec = ex.extension.get_step_executor(self.task)
            step_exec.step = self.step
            step_exec.resource = self.resource
            if isinstance(step_exec, StepExecFrameworkInfo):
                step_exec.set_checkpoint_store(ex.param.task_table)
            step_exec.init(ex.ctx)
        except Exception as err:
            logger.warning("task %d: cannot start another lane (running fewer at once): %s", ex._task_id, err)
            return None
        return step_exec

    # ------------------------------------------------------------------ one lane

    def _run_lane(self, lane: _Lane, subtask: Subtask | None) -> None:
        assert lane.step_exec is not None
        while subtask is not None:
            finish = self.ex._run_subtask(lane.step_exec, self.step_ctx, subtask)
            if finish is None:
                # Failed, cancelled, moved or left for a re-run: no lane claims again.
                self.here.discard(subtask.id)
                self.clean = False
                self.stopping.set()
                return
            subtask = self._next(lane, finish, subtask)

    def _may_claim(self) -> bool:
        ex = self.ex
        return not (ex.ctx.done() or self.step_ctx.done() or ex.drain_state.requested or self.stopping.is_set())

    def _next(self, lane: _Lane, finish: SubtaskFinish | None, done: Subtask | None) -> Subtask | None:
        """Finish ``done`` and claim this lane's next subtask (None: the lane stops)."""
        ex = self.ex
        step = self.step if self._may_claim() else None
        if finish is None and step is None:
            return None
        with self.here.claiming() as swap:
            claim = ex._finish_and_claim(finish, step, finished_step=self.step, claims=lane.claims)
            swap(done.id if done is not None else None, claim.subtask.id if claim is not None else None)
        if claim is None:
            return None
        if not ex._fingerprint_matches(claim):
            self._give_back(claim.subtask)
            self.changed = True
            self.stopping.set()
            return None
        return claim.subtask

    def _give_back(self, subtask: Subtask) -> None:
        """The task changed: the claimed subtask goes back to pending for the slow path."""
        ex = self.ex
        table = ex.param.task_table
        try:
            ex._sql(lambda: table.running_subtasks_back_to_pending([subtask]), "give a subtask back")
        except Exception as err:
            logger.warning("task %d: cannot give subtask %d back: %s", ex._task_id, subtask.id, err)
        finally:
            self.here.discard(subtask.id)


def live_meta_to_lanes(ex: LaneHost, watches: list[Watch]) -> bool:
    """The watcher's modify check with parallel lanes: a new meta goes to every running lane.

    A concurrency change waits for the subtask boundary (the next claim's fingerprint ends
    the block and the lanes restart with the new count).
    """
    try:
        new = ex.param.task_table.get_task_by_id(ex._task_id)
    except Exception as err:
        logger.debug("task %d: cannot read task for modification: %s", ex._task_id, err)
        return True
    with ex._lock:
        old = ex._task
    if new.meta == old.meta:
        return True
    took = True
    for w in watches:
        try:
            w.step_exec.task_meta_modified(w.subtask_ctx, new.meta)
        except Exception as err:
            logger.info("task %d: a lane cannot apply the new meta live: %s", ex._task_id, err)
            took = False
    if took:
        with ex._lock:
            if ex._task is old:
                ex._task = dataclasses.replace(old, meta=new.meta)
    return True


__all__ = ["LaneHost", "ParallelBlock", "lane_count", "lane_resource", "live_meta_to_lanes"]
