"""A cancellation tree with a cause: Go's ``context.Context`` for threads.

DXF nests lifetimes (node manager > task executor > step > subtask > helper loops) and
cancels a level with a *cause* that decides what happens to the subtask row. Each context
is an event plus a weak set of children: cancelling walks the subtree once, so no thread is
ever needed per context, and an abandoned child is garbage collected. A context with
``on_cancel`` callbacks is the exception: its ancestors hold it until it is cancelled, so a
callback is never lost because nobody kept a reference to the context.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)


class ContextCancelledError(Exception):
    """Default cause of a context cancelled without a cause."""

    def __init__(self, message: str = "context canceled") -> None:
        super().__init__(message)


class Context:
    """A node of the cancellation tree. Thread-safe; cancelling is idempotent."""

    __slots__ = ("__weakref__", "_callbacks", "_cause", "_children", "_event", "_lock", "_parent", "_pinned")

    def __init__(self, parent: Context | None = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._cause: BaseException | None = None
        self._children: weakref.WeakSet[Context] = weakref.WeakSet()
        self._callbacks: list[Callable[[BaseException], None]] = []
        # Children with callbacks (or with such descendants), held strongly until cancelled.
        self._pinned: set[Context] = set()
        self._parent = parent
        if parent is not None:
            parent._adopt(self)

    @classmethod
    def background(cls) -> Context:
        """A root context that is cancelled only explicitly."""
        return cls()

    def child(self) -> Context:
        """A context cancelled with this one (with the parent's cause) or on its own."""
        return Context(self)

    def _adopt(self, child: Context) -> None:
        with self._lock:
            cancelled = self._event.is_set()
            if not cancelled:
                self._children.add(child)
            cause = self._cause
        if cancelled:
            child.cancel(cause)

    def cancel(self, cause: BaseException | None = None) -> bool:
        """Cancel this context and all its descendants; the first cause wins.

        Returns True when this call did the cancelling, False when it was already cancelled.
        """
        with self._lock:
            if self._event.is_set():
                return False
            self._cause = cause if cause is not None else ContextCancelledError()
            self._event.set()
            children = list(self._children)
            self._children.clear()
            self._pinned.clear()
            callbacks, self._callbacks = self._callbacks, []
            parent = self._parent
            self._parent = None
        if parent is not None:
            parent._forget(self)
        for child in children:
            child.cancel(self._cause)
        for callback in callbacks:
            _run_callback(callback, self._cause)
        return True

    def _forget(self, child: Context) -> None:
        with self._lock:
            self._children.discard(child)
            self._pinned.discard(child)

    def _pin(self) -> None:
        """Make every ancestor hold this context strongly (it has callbacks to run)."""
        child, parent = self, self._parent
        while parent is not None:
            with parent._lock:
                # A cancelled child is (being) forgotten by its parent: never pin it back.
                if parent._event.is_set() or child._event.is_set() or child in parent._pinned:
                    return
                parent._pinned.add(child)
            child, parent = parent, parent._parent

    def on_cancel(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(cause)`` once when cancelled (at once if it already is)."""
        with self._lock:
            live = not self._event.is_set()
            if live:
                self._callbacks.append(callback)
            cause = self._cause
        if live:
            self._pin()
            return
        assert cause is not None
        _run_callback(callback, cause)

    def done(self) -> bool:
        """True once cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` seconds passed; True when cancelled."""
        return self._event.wait(timeout)

    @property
    def cause(self) -> BaseException | None:
        """Why it was cancelled, or None while it is live."""
        return self._cause

    def check(self) -> None:
        """Raise the cause if cancelled: the cheap check long loops call between units of work."""
        if self._event.is_set():
            assert self._cause is not None
            raise self._cause

    def __repr__(self) -> str:
        state = f"cancelled: {self._cause!r}" if self.done() else "live"
        return f"<Context {state}>"


def _run_callback(callback: Callable[[BaseException], None], cause: BaseException) -> None:
    """A failing callback must not stop the others nor surface in whoever called cancel()."""
    try:
        callback(cause)
    except Exception:
        logger.exception("on_cancel callback %r failed", callback)


def background() -> Context:
    """A fresh root context."""
    return Context.background()
