"""One client API: DXF, LocalCluster and DXFFlask get every client method from TaskClient.

The signature tests catch a client that redefines a method (its parameters, annotations or
defaults drifting from the others) and a ``dxf_celery.handle`` function that drifts from
the method wrapping it; the behaviour test drives each client for real (extra params,
manual recovery, listing) and checks that DXF and DXFFlask wake the scheduler after writes.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator

import pytest
from celery import Celery
from helpers.cluster_types import TASK_TYPE, TIMEOUT, cluster_url, demo_meta
from helpers.waiting import wait_until
from kombu import Connection

from dxf_celery import handle
from dxf_celery.app import DXF
from dxf_celery.client import CLIENT_METHODS, TaskClient
from dxf_celery.handle import DEFAULT_LIST_LIMIT
from dxf_celery.proto import ExtraParams, TaskState
from dxf_celery.testing import LocalCluster

flask = pytest.importorskip("flask")
from dxf_celery.contrib.flask import DXFFlask  # noqa: E402  (needs flask)

__all__ = ["cluster_url"]  # the fixture

CLIENTS: tuple[type[TaskClient], ...] = (DXF, LocalCluster, DXFFlask)


def _public_methods(cls: type) -> set[str]:
    return {n for n, v in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.__name__)
def test_every_client_method_comes_from_task_client(client: type[TaskClient]) -> None:
    assert set(CLIENT_METHODS) == _public_methods(TaskClient)
    for name in CLIENT_METHODS:
        method, base = getattr(client, name), getattr(TaskClient, name)
        assert inspect.signature(method) == inspect.signature(base), f"{client.__name__}.{name}"
        assert method is base, f"{client.__name__}.{name} is redefined instead of inherited from TaskClient"


def test_the_clients_agree_parameter_by_parameter() -> None:
    """Names, kinds, annotations and defaults are the same everywhere (not only equal objects)."""
    for name in CLIENT_METHODS:
        shapes = {
            cls.__name__: [
                (p.name, p.kind, str(p.annotation), repr(p.default))
                for p in inspect.signature(getattr(cls, name)).parameters.values()
            ]
            for cls in (TaskClient, *CLIENTS)
        }
        assert len({repr(s) for s in shapes.values()}) == 1, (name, shapes)


def test_handle_functions_match_the_client_methods() -> None:
    """``handle.f(tm, ...)`` and ``client.f(...)`` take the same arguments with the same defaults."""
    for name in CLIENT_METHODS:
        if name == "wake":  # a client matter: there is no scheduler to wake from a bare TaskManager
            continue
        function = inspect.signature(getattr(handle, name))
        method = inspect.signature(getattr(TaskClient, name))
        tm, *function_params = function.parameters.values()
        _, *method_params = method.parameters.values()
        assert tm.name == "tm" and str(tm.annotation) == "TaskManager"
        assert function_params == method_params, name
        assert function.return_annotation == method.return_annotation, name
    assert inspect.signature(handle.list_tasks).parameters["limit"].default == DEFAULT_LIST_LIMIT


# ---------------------------------------------------------------------- behaviour


@pytest.fixture
def celery_app(cluster_url: str) -> Iterator[Celery]:
    app = Celery("client_test", broker="memory://", set_as_current=False)
    app.conf.dxf_database_url = cluster_url
    app.conf.dxf_scheduler_queue = f"dxf.scheduler.{uuid.uuid4().hex}"  # this test's wake-ups only
    yield app
    state = getattr(app, "dxf_state", None)
    if state is not None:
        state.dispose()


def _wakeups(app: Celery) -> list[str]:
    """The reasons of the scheduler wake-ups DXF sent so far (drained from the memory broker)."""
    reasons = []
    with Connection(app.conf.broker_url) as conn:
        queue = conn.SimpleQueue(app.conf.dxf_scheduler_queue)
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            assert message.headers["task"] == "dxf.schedule"
            reasons.append(message.payload[1]["reason"])
            message.ack()
        queue.close()
    return reasons


def _dxf(app: Celery, cluster: LocalCluster) -> TaskClient:
    return DXF(app)


def _flask(app: Celery, cluster: LocalCluster) -> TaskClient:
    web = flask.Flask("client_web")
    web.extensions["celery"] = app
    return DXFFlask(web)


def _cluster(app: Celery, cluster: LocalCluster) -> TaskClient:
    return cluster


MAKERS: dict[str, Callable[[Celery, LocalCluster], TaskClient]] = {
    "DXF": _dxf,
    "DXFFlask": _flask,
    "LocalCluster": _cluster,
}


@pytest.mark.parametrize("which", sorted(MAKERS))
def test_each_client_submits_resolves_and_lists(which: str, celery_app: Celery, cluster_url: str) -> None:
    with LocalCluster(cluster_url, nodes=2) as cluster:
        client = MAKERS[which](celery_app, cluster)
        key = f"{which}-recover"
        task = client.submit_task(
            key,
            TASK_TYPE,
            meta=demo_meta(steps=2, subtasks=3, fail=[1, 2], fail_times=1),
            concurrency=2,
            extra_params=ExtraParams(manual_recovery=True),
        )
        assert task.extra_params.manual_recovery and task.concurrency == 2
        wait_until(lambda: client.get_task(key).state == TaskState.AWAITING_RESOLUTION, what="awaiting resolution")
        assert [t.key for t in client.list_tasks(states=[TaskState.AWAITING_RESOLUTION])] == [key]
        assert not client.resume_task(key)  # not paused: refused, and nothing is woken
        assert client.resolve_task(key)
        done = client.wait_task(task.id, timeout=TIMEOUT)
        assert done.state == TaskState.SUCCEED and done.extra_params.manual_recovery
        other = client.submit_task(f"{which}-plain", TASK_TYPE, meta=demo_meta(steps=1, subtasks=1))
        client.wait_task(other.id, timeout=TIMEOUT)
        listed = client.list_tasks()
        assert {t.key for t in listed} == {key, f"{which}-plain"}
        assert len(client.list_tasks(limit=1)) == 1
        assert [t.key for t in client.list_tasks(states=["succeed"]) if t.key == key] == [key]
        assert {s.step for s in client.get_subtasks(task.id)} == {1, 2}
        counts = client.get_task_progress(task.id).steps[1].counts
        assert {state.value: n for state, n in counts.items()} == {"succeed": 3}
    reasons = _wakeups(celery_app)
    if which == "LocalCluster":
        assert reasons == []  # its scheduler threads poll; nothing goes to a broker
    else:
        assert reasons == ["submit", "resolve", "submit"]
