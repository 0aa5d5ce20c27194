"""The trainer's tasks, one module each behind one interface (`base.BertTask`).

The module of a task is its config name in snake_case (`tokenClassification` →
`token_classification`) and defines its class as `TASK_CLASS`: adding a task is one module
and its config block. The runner, the step, the export and the checkpoint importers ask the
task instead of naming one.

    >>> sorted(module_name(t) for t in Task)[:3]
    ['classification', 'multiple_choice', 'pretraining']
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import TYPE_CHECKING

from berth_trainer.config import Task, TrainerConfig

if TYPE_CHECKING:
    from berth_trainer.data import ExampleEncoder
    from berth_trainer.tasks.base import BertTask, Head


def module_name(task: str) -> str:
    """The module of `task`: `questionAnswering` → `question_answering`."""
    return re.sub(r"([A-Z])", r"_\1", str(task)).lower()


def task_class(task: str) -> type[BertTask]:
    """The `BertTask` subclass of `task`."""
    module = importlib.import_module(f"berth_trainer.tasks.{module_name(Task(task))}")
    return module.TASK_CLASS


def for_task(cfg: TrainerConfig, encoder: ExampleEncoder) -> BertTask:
    """The task `cfg.task`, ready to `prepare` its data."""
    return task_class(cfg.task)(cfg, encoder)


@functools.cache
def all_heads() -> tuple[Head, ...]:
    """Every task's heads (a checkpoint may hold heads of another task, which are skipped)."""
    seen: dict[str, Head] = {}
    for task in Task:
        for head in task_class(task).heads:
            seen.setdefault(head.layer, head)
    return tuple(seen.values())
