"""Context: a cancellation tree with a cause, thread-safe, waitable, with no thread per context."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from dxf_celery.context import Context, ContextCancelledError, background
from dxf_celery.errors import CancelSubtaskError


def test_live_context() -> None:
    ctx = background()
    assert not ctx.done() and ctx.cause is None
    ctx.check()  # does not raise
    assert ctx.wait(0.01) is False
    assert "live" in repr(ctx)


def test_cancel_without_cause_uses_default() -> None:
    ctx = Context.background()
    assert ctx.cancel() is True
    assert ctx.done() and isinstance(ctx.cause, ContextCancelledError)
    with pytest.raises(ContextCancelledError):
        ctx.check()
    assert "cancelled" in repr(ctx)


def test_parent_cancel_reaches_every_descendant_with_its_cause() -> None:
    root = background()
    child = root.child()
    grandchild = child.child()
    sibling = root.child()
    cause = CancelSubtaskError()
    assert root.cancel(cause) is True
    for ctx in (root, child, grandchild, sibling):
        assert ctx.done() and ctx.cause is cause
    with pytest.raises(CancelSubtaskError):
        grandchild.check()


def test_child_cancel_leaves_parent_and_siblings_alone() -> None:
    root = background()
    child, sibling = root.child(), root.child()
    grandchild = child.child()
    child.cancel(RuntimeError("only me"))
    assert grandchild.done() and str(grandchild.cause) == "only me"
    assert not root.done() and not sibling.done()


def test_first_cause_wins() -> None:
    ctx = background()
    first, second = RuntimeError("first"), RuntimeError("second")
    assert ctx.cancel(first) is True
    assert ctx.cancel(second) is False
    assert ctx.cause is first
    child_first = ctx.child()
    assert child_first.cause is first
    # A child cancelled on its own keeps its cause when the parent follows.
    parent = background()
    child = parent.child()
    child.cancel(ValueError("child's"))
    parent.cancel(RuntimeError("parent's"))
    assert str(child.cause) == "child's"


def test_child_of_cancelled_parent_is_born_cancelled() -> None:
    parent = background()
    cause = RuntimeError("gone")
    parent.cancel(cause)
    child = parent.child()
    assert child.done() and child.cause is cause
    assert child.wait(0) is True


def test_cancel_from_another_thread_wakes_wait() -> None:
    root = background()
    leaf = root.child().child()
    woke = threading.Event()
    results: list[bool] = []

    def waiter() -> None:
        results.append(leaf.wait(60))
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not woke.wait(0.05)  # still blocked: nothing cancelled yet
    threading.Thread(target=root.cancel, args=(RuntimeError("stop"),)).start()
    assert woke.wait(30)
    t.join(30)
    assert results == [True]


def _cancel_race(ctx: Context, racers: int) -> list[bool]:
    barrier = threading.Barrier(racers)
    wins: list[bool] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        barrier.wait()
        won = ctx.cancel(RuntimeError(str(i)))
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return wins


def test_concurrent_cancels_have_one_winner() -> None:
    for _ in range(50):
        ctx = background()
        child = ctx.child()
        assert sorted(_cancel_race(ctx, 4)) == [False, False, False, True]
        assert ctx.cause is not None and child.cause is ctx.cause


def test_on_cancel_callbacks() -> None:
    ctx = background()
    child = ctx.child()
    seen: list[tuple[str, str]] = []
    ctx.on_cancel(lambda cause: seen.append(("parent", str(cause))))
    child.on_cancel(lambda cause: seen.append(("child", str(cause))))

    def broken(cause: BaseException) -> None:
        raise RuntimeError("callback bug")

    child.on_cancel(broken)  # must not stop the others nor reach cancel()'s caller
    child.on_cancel(lambda cause: seen.append(("child-2", str(cause))))
    assert seen == []
    ctx.cancel(RuntimeError("bye"))
    assert sorted(seen) == [("child", "bye"), ("child-2", "bye"), ("parent", "bye")]
    ctx.cancel(RuntimeError("again"))  # callbacks run once
    assert len(seen) == 3
    late: list[str] = []
    ctx.on_cancel(lambda cause: late.append(str(cause)))  # already cancelled: at once
    assert late == ["bye"]


def test_no_thread_per_context() -> None:
    before = threading.active_count()
    root = background()
    contexts = [root.child() for _ in range(10_000)]
    contexts += [c.child() for c in contexts[:1000]]
    assert threading.active_count() == before
    root.cancel()
    assert all(c.done() for c in contexts)
    assert threading.active_count() == before


def test_abandoned_children_are_garbage_collected() -> None:
    root = background()
    refs = []
    for _ in range(100):
        child = root.child()
        child.child()  # a grandchild nobody holds either
        refs.append(weakref.ref(child))
    del child
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(root._children) == 0  # the parent does not keep them alive
    # A cancelled child is dropped by its parent at once.
    kept = root.child()
    kept.cancel()
    assert kept not in root._children
    # Still-held children stay reachable and are cancelled with the parent.
    held = root.child()
    root.cancel()
    assert held.done()


def test_callbacks_survive_abandoned_contexts() -> None:
    root = background()
    fired: list[str] = []
    root.child().on_cancel(lambda cause: fired.append("child"))  # nobody holds the child
    root.child().child().on_cancel(lambda cause: fired.append("grandchild"))  # nor its parent
    plain = weakref.ref(root.child())
    gc.collect()
    assert plain() is None  # contexts without callbacks are still collected
    root.cancel(RuntimeError("stop"))
    assert sorted(fired) == ["child", "grandchild"]
    assert len(root._pinned) == 0


def test_cancelled_child_is_unpinned() -> None:
    root = background()
    child = root.child()
    child.on_cancel(lambda cause: None)
    assert child in root._pinned
    child.cancel()
    assert child not in root._pinned and child not in root._children
    ref = weakref.ref(child)
    del child
    gc.collect()
    assert ref() is None
