"""docs/task-states.md shows what the transition table says (regenerated and compared)."""

from __future__ import annotations

import subprocess
import sys

from helpers.paths import REPO_ROOT

from dxf_celery.proto import TaskState
from dxf_celery.transitions import DOC_BEGIN, DOC_END, TRANSITIONS, docs_block, state_diagram

DOC = REPO_ROOT / "docs" / "task-states.md"


def test_doc_holds_the_generated_block() -> None:
    text = DOC.read_text()
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END) + 1
    assert text[start:end] == docs_block(), "docs/task-states.md is stale: paste `python -m dxf_celery.transitions`"


def test_generator_command_prints_the_block() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dxf_celery.transitions"], check=True, capture_output=True, text=True
    ).stdout
    assert out == docs_block()


def test_diagram_has_one_arrow_per_move_and_every_state() -> None:
    arrows = {line.strip() for line in state_diagram().splitlines() if "-->" in line and "[*]" not in line}
    expected = {
        f"{src.value.replace('-', '_')} --> {dst.value.replace('-', '_')}: {t.verb.value}"
        for t in TRANSITIONS.values()
        for src in t.from_states
        for dst in t.targets()
    }
    assert arrows == expected
    drawn = state_diagram()
    for state in TaskState:
        assert state.value.replace("-", "_") in drawn, state
