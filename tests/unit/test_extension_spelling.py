"""The retry hook has two pinned spellings: defining the other side's one warns at class definition."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pytest

from dxf_celery.context import Context
from dxf_celery.proto import STEP_DONE, Task, TaskBase
from dxf_celery.scheduler import Extension as SchedulerExtension
from dxf_celery.scheduler import TaskHandle
from dxf_celery.taskexecutor import Extension as ExecutorExtension
from dxf_celery.taskexecutor import StepExecutor


class _Plan(SchedulerExtension):
    def get_next_step(self, task: TaskBase) -> int:
        return STEP_DONE

    def on_next_subtasks_batch(
        self, ctx: Context, handle: TaskHandle, task: Task, exec_ids: Sequence[str], next_step: int
    ) -> list[bytes]:
        return []


def test_scheduler_extension_with_the_executor_spelling_warns() -> None:
    with pytest.warns(UserWarning, match=r"defines is_retryable_error\(\).*spelt is_retryable_err\(\)"):

        class Misspelt(_Plan):
            def is_retryable_error(self, err: BaseException) -> bool:
                return True

    # The warning is right: the scheduler asks the pinned name, which still says no.
    assert Misspelt().is_retryable_err(RuntimeError()) is False


def test_executor_extension_with_the_scheduler_spelling_warns() -> None:
    with pytest.warns(UserWarning, match=r"defines is_retryable_err\(\).*spelt is_retryable_error\(\)"):

        class Misspelt(ExecutorExtension):
            def get_step_executor(self, task: Task) -> StepExecutor:
                raise NotImplementedError

            def is_retryable_err(self, err: BaseException) -> bool:
                return True

    assert Misspelt().is_retryable_error(RuntimeError()) is False


def test_right_spellings_and_a_class_that_is_both_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Plan(_Plan):
            def is_retryable_err(self, err: BaseException) -> bool:
                return True

        class Run(ExecutorExtension):
            def get_step_executor(self, task: Task) -> StepExecutor:
                raise NotImplementedError

            def is_retryable_error(self, err: BaseException) -> bool:
                return True

        class Both(_Plan, ExecutorExtension):
            def get_step_executor(self, task: Task) -> StepExecutor:
                raise NotImplementedError

            def is_retryable_err(self, err: BaseException) -> bool:
                return True

            def is_retryable_error(self, err: BaseException) -> bool:
                return True

    assert Plan().is_retryable_err(RuntimeError()) and Run().is_retryable_error(RuntimeError())
    assert Both().is_retryable_err(RuntimeError()) and Both().is_retryable_error(RuntimeError())
