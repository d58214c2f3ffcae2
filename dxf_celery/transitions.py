"""Every legal move of a task's state, as data: verb -> from-states -> to-state.

Storage's compare-and-set reads this table (one guarded ``UPDATE ... WHERE state IN
(from-states)`` per verb), so a move that is not listed here cannot happen, and the docs
draw the state diagram from it (:func:`state_diagram`; ``python -m dxf_celery.transitions``
prints the generated part of ``docs/task-states.md``).
Verbs come in pairs whose names say who moves and which half of the move it is
(``request_pause`` by a user, ``finish_pausing`` by the scheduler), so the two cannot be
mistaken for each other. Pure data: no I/O and no SQLAlchemy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dxf_celery.proto import UNFINISHED_TASK_STATES, TaskState


class Verb(str, enum.Enum):
    """The name of one task-state move; each is a ``TaskManager`` method of the same name
    except ``request_modify`` (``modify_task_by_id``) and ``switch_step``
    (``switch_task_step`` / ``switch_task_step_in_batch``)."""

    REQUEST_CANCEL = "request_cancel"
    REQUEST_PAUSE = "request_pause"
    FINISH_PAUSING = "finish_pausing"
    REQUEST_RESUME = "request_resume"
    FINISH_RESUMING = "finish_resuming"
    REQUEST_MODIFY = "request_modify"
    FINISH_MODIFYING = "finish_modifying"
    SWITCH_STEP = "switch_step"
    SUCCEED = "succeed"
    START_REVERTING = "start_reverting"
    FINISH_REVERTING = "finish_reverting"
    AWAIT_RESOLUTION = "await_resolution"
    RESOLVE = "resolve"
    FAIL = "fail"

    def __str__(self) -> str:
        return self.value


class Actor(str, enum.Enum):
    """Who makes a move: a user through the client API, or the task's scheduler."""

    USER = "user"
    SCHEDULER = "scheduler"


@dataclass(frozen=True)
class Transition:
    """One verb: the states it may start from and the state it lands in.

    ``to_state`` is None for the one move whose target is stored on the row:
    ``finish_modifying`` returns to the state the task had before ``request_modify``, which
    is one of ``returns_to``.
    """

    verb: Verb
    from_states: frozenset[TaskState]
    to_state: TaskState | None
    actor: Actor
    why: str
    returns_to: frozenset[TaskState] = frozenset()

    def targets(self) -> frozenset[TaskState]:
        """Every state this move can land in."""
        return frozenset({self.to_state}) if self.to_state is not None else self.returns_to

    def allows(self, state: TaskState, to_state: TaskState | None = None) -> bool:
        """True when a task in ``state`` may make this move (to ``to_state``, if given)."""
        return state in self.from_states and (to_state is None or to_state in self.targets())


def _t(
    verb: Verb,
    from_states: tuple[TaskState, ...],
    to_state: TaskState | None,
    actor: Actor,
    why: str,
    returns_to: tuple[TaskState, ...] = (),
) -> Transition:
    return Transition(verb, frozenset(from_states), to_state, actor, why, frozenset(returns_to))


S = TaskState
_MODIFIABLE = (S.PENDING, S.RUNNING, S.PAUSED)

#: The table. Order is the order of the docs page.
TRANSITIONS: dict[Verb, Transition] = {
    t.verb: t
    for t in (
        _t(
            Verb.REQUEST_CANCEL,
            (S.PENDING, S.RUNNING, S.AWAITING_RESOLUTION),
            S.CANCELLING,
            Actor.USER,
            "the user cancels; the scheduler then reverts the task",
        ),
        _t(
            Verb.REQUEST_PAUSE,
            (S.PENDING, S.RUNNING),
            S.PAUSING,
            Actor.USER,
            "the user pauses; nodes pause their subtasks",
        ),
        _t(Verb.FINISH_PAUSING, (S.PAUSING,), S.PAUSED, Actor.SCHEDULER, "no subtask of the task is active any more"),
        _t(Verb.REQUEST_RESUME, (S.PAUSED,), S.RESUMING, Actor.USER, "the user resumes a paused task"),
        _t(Verb.FINISH_RESUMING, (S.RESUMING,), S.RUNNING, Actor.SCHEDULER, "every paused subtask is pending again"),
        _t(
            Verb.REQUEST_MODIFY,
            _MODIFIABLE,
            S.MODIFYING,
            Actor.USER,
            "the user changes concurrency, node count or meta (raises TaskChangedError on a race)",
        ),
        _t(
            Verb.FINISH_MODIFYING,
            (S.MODIFYING,),
            None,
            Actor.SCHEDULER,
            "the change is applied; back to the state before the request",
            _MODIFIABLE,
        ),
        _t(
            Verb.SWITCH_STEP,
            (S.PENDING, S.RUNNING),
            S.RUNNING,
            Actor.SCHEDULER,
            "the next step is planned (guarded by the step too) with its subtasks",
        ),
        _t(Verb.SUCCEED, (S.RUNNING,), S.SUCCEED, Actor.SCHEDULER, "every step is done; the step becomes STEP_DONE"),
        _t(
            Verb.START_REVERTING,
            (S.PENDING, S.RUNNING, S.CANCELLING),
            S.REVERTING,
            Actor.SCHEDULER,
            "a subtask or the planning failed, or the task was cancelled; the error is stored",
        ),
        _t(
            Verb.FINISH_REVERTING,
            (S.REVERTING,),
            S.REVERTED,
            Actor.SCHEDULER,
            "no subtask is active any more and on_done ran",
        ),
        _t(
            Verb.AWAIT_RESOLUTION,
            (S.RUNNING,),
            S.AWAITING_RESOLUTION,
            Actor.SCHEDULER,
            "a subtask failed and the task asked for manual recovery; the error is stored",
        ),
        _t(
            Verb.RESOLVE,
            (S.AWAITING_RESOLUTION,),
            S.RUNNING,
            Actor.USER,
            "an operator fixed the cause; failed/canceled subtasks of the step are pending again",
        ),
        _t(
            Verb.FAIL,
            tuple(UNFINISHED_TASK_STATES),
            S.FAILED,
            Actor.SCHEDULER,
            "the task can never run (unknown type, scheduler init error); the error is stored",
        ),
    )
}


def _ordered(states: frozenset[TaskState]) -> tuple[TaskState, ...]:
    return tuple(s for s in TaskState if s in states)


#: States from which a user may cancel a task.
CANCELLABLE_TASK_STATES = _ordered(TRANSITIONS[Verb.REQUEST_CANCEL].from_states)
#: States from which a user may pause a task.
PAUSABLE_TASK_STATES = _ordered(TRANSITIONS[Verb.REQUEST_PAUSE].from_states)
#: States from which a task may move to ``modifying``.
MODIFIABLE_TASK_STATES = _ordered(TRANSITIONS[Verb.REQUEST_MODIFY].from_states)


def state_diagram() -> str:
    """The table as a Mermaid ``stateDiagram-v2``: one arrow per (from-state, to-state, verb)."""
    lines = ["stateDiagram-v2"]
    lines += [f'    state "{s.value}" as {_node(s)}' for s in TaskState if _node(s) != s.value]
    lines.append(f"    [*] --> {_node(TaskState.PENDING)}")
    for t in TRANSITIONS.values():
        for src in _ordered(t.from_states):
            for dst in _ordered(t.targets()):
                lines.append(f"    {_node(src)} --> {_node(dst)}: {t.verb.value}")
    for done in (TaskState.SUCCEED, TaskState.REVERTED, TaskState.FAILED):
        lines.append(f"    {_node(done)} --> [*]")
    return "\n".join(lines) + "\n"


def transition_table_markdown() -> str:
    """The table as a Markdown table (verb, who, from, to, why) for the docs page."""
    rows = ["| verb | who | from | to | why |", "|---|---|---|---|---|"]
    for t in TRANSITIONS.values():
        froms = ", ".join(s.value for s in _ordered(t.from_states))
        to = (
            t.to_state.value
            if t.to_state is not None
            else "previous (" + ", ".join(s.value for s in _ordered(t.returns_to)) + ")"
        )
        rows.append(f"| `{t.verb.value}` | {t.actor.value} | {froms} | {to} | {t.why} |")
    return "\n".join(rows) + "\n"


#: The markers around the generated part of ``docs/task-states.md``.
DOC_BEGIN = "<!-- generated by `python -m dxf_celery.transitions`: do not edit by hand -->"
DOC_END = "<!-- end of generated part -->"


def docs_block() -> str:
    """The generated part of ``docs/task-states.md``: the diagram, then the table."""
    return f"{DOC_BEGIN}\n\n```mermaid\n{state_diagram()}```\n\n{transition_table_markdown()}\n{DOC_END}\n"


def _node(state: TaskState) -> str:
    """Mermaid state ids cannot hold '-'; ``awaiting-resolution`` becomes ``awaiting_resolution``."""
    return state.value.replace("-", "_")


if __name__ == "__main__":
    print(docs_block(), end="")
