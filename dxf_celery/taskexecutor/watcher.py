"""One watcher thread per task executor: the periodic checks of the running subtasks, and their cancel deadlines.

A thread started and joined per subtask cost more than a no-op subtask itself; this one
lives as long as the executor. The executor hands it each subtask with :meth:`Watcher.begin`
and takes it back with :meth:`Watcher.end`; the watcher sleeps until the next check is due
or until it is kicked (the step's context was cancelled), so a short subtask costs it
nothing. Checks run under a lock that :meth:`Watcher.end` takes too: once ``end`` returned,
no check of that subtask is running or will run.

With parallel subtasks several subtasks are watched at once: the per-subtask checks run for
each, the task-level ones (``TASK_CHECKS``) once per period, and each cancelled subtask gets
its own enforcement thread, so one stubborn subtask does not delay another's deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dxf_celery.context import Context
from dxf_celery.proto import Subtask
from dxf_celery.taskexecutor.execute import StepExecutor
from dxf_celery.taskexecutor.param import Intervals

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Watch:
    """The subtask being watched: what the checks need, and whether its step code returned."""

    step_exec: StepExecutor
    subtask: Subtask
    subtask_ctx: Context
    #: Ident of the thread running the step code (the one an interruption targets).
    runner: int
    returned: threading.Event = field(default_factory=threading.Event)
    #: Checks that asked not to run again for this subtask (they returned False).
    stopped_checks: set[str] = field(default_factory=set)
    enforced: bool = False
    #: The self-fencing check of this subtask (:class:`~dxf_celery.taskexecutor.fencing.FenceCheck`).
    fence: Callable[[], bool] | None = None

    def live(self) -> bool:
        return not self.returned.is_set()


#: ``check(watch) -> keep``: False stops that check for the rest of this subtask.
Check = Callable[[Watch], bool]

#: Checks about the task, not one subtask: run once per period (with the oldest live subtask).
TASK_CHECKS = frozenset({"watch", "modify"})


class Watcher:
    """Runs ``checks`` (name -> (period, check)) on the current subtask, and ``enforce`` on a
    cancelled one whose step code keeps running."""

    def __init__(self, name: str, checks: dict[str, tuple[float, Check]], enforce: Callable[[Watch], None]) -> None:
        self._name = name
        self._checks = checks
        self._enforce = enforce
        self._cv = threading.Condition()
        self._check_lock = threading.Lock()
        self._watches: list[Watch] = []
        self._stopped = False
        self._thread: threading.Thread | None = None
        now = time.monotonic()
        self._due = {check: now + period for check, (period, _) in checks.items()}

    @classmethod
    def for_intervals(
        cls,
        name: str,
        iv: Intervals,
        *,
        watch: Check,
        balance: Check,
        summary: Check,
        modify: Check,
        fence: Check,
        enforce: Callable[[Watch], None],
    ) -> Watcher:
        checks = {
            "fence": (iv.watch_task, fence),
            "watch": (iv.watch_task, watch),
            "balance": (iv.check_balance, balance),
            "summary": (iv.update_summary, summary),
            "modify": (iv.detect_modify, modify),
        }
        return cls(name, checks, enforce)

    # ------------------------------------------------------------------ executor side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def begin(self, step_exec: StepExecutor, subtask: Subtask, subtask_ctx: Context) -> Watch:
        """Watch ``subtask`` from now on (called by the thread that runs its step code)."""
        watch = Watch(step_exec, subtask, subtask_ctx, threading.get_ident())
        with self._cv:
            self._watches.append(watch)
            if subtask_ctx.done():
                self._cv.notify_all()
        return watch

    def end(self, watch: Watch) -> None:
        """The step code returned: stop watching; no check of ``watch`` runs after this returns."""
        watch.returned.set()
        with self._check_lock, self._cv:
            if watch in self._watches:
                self._watches.remove(watch)

    def live(self) -> list[Watch]:
        """The subtasks watched now whose step code runs (oldest first)."""
        with self._cv:
            return [w for w in self._watches if w.live()]

    def kick(self) -> None:
        """Look at the watched subtasks now (a context may just have been cancelled)."""
        with self._cv:
            self._cv.notify_all()

    # ------------------------------------------------------------------ watcher thread

    def _next_action(self) -> tuple[str, Watch | None]:
        """Block until stopped, a cancelled subtask needs its deadline, or a check is due."""
        with self._cv:
            while True:
                if self._stopped:
                    return "stop", None
                for w in self._watches:
                    if w.live() and w.subtask_ctx.done() and not w.enforced:
                        w.enforced = True
                        return "enforce", w
                timeout = min(self._due.values()) - time.monotonic()
                if timeout <= 0:
                    return "checks", None
                self._cv.wait(timeout)

    def _loop(self) -> None:
        while True:
            action, watch = self._next_action()
            if action == "stop":
                return
            if action == "enforce" and watch is not None:
                # Its own thread: enforcing waits for the step code to return, and other
                # subtasks (parallel lanes) may need their checks or deadlines meanwhile.
                threading.Thread(
                    target=self._enforce_one, args=(watch,), name=f"{self._name}-enforce", daemon=True
                ).start()
                continue
            self._run_due_checks()

    def _enforce_one(self, watch: Watch) -> None:
        try:
            self._enforce(watch)
        except Exception:
            logger.exception("%s: enforcing a cancellation failed", self._name)

    def _run_due_checks(self) -> None:
        now = time.monotonic()
        for name, (period, check) in self._checks.items():
            if now < self._due[name]:
                continue
            self._due[name] = now + period
            watches = self.live()
            for watch in watches[:1] if name in TASK_CHECKS else watches:
                if name in watch.stopped_checks:
                    continue
                with self._check_lock:
                    if watch not in self._watches or not watch.live() or watch.subtask_ctx.done():
                        continue
                    try:
                        keep = check(watch)
                    except Exception:
                        logger.exception("%s: %s check failed", self._name, name)
                        keep = True
                if not keep:
                    watch.stopped_checks.add(name)


__all__ = ["TASK_CHECKS", "Check", "Watch", "Watcher"]
