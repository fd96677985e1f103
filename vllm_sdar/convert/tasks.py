"""The registry of toy tasks, by the name a task records in eval.json.

The shared pieces (tokenizer, chat template, `Problem`, `Task`, splits,
scoring) are in task_base.py, which the tasks (addition.py, sorting.py)
import; this module imports the tasks, so the imports only go one way.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from vllm_sdar.convert.addition import Addition
from vllm_sdar.convert.sorting import Sorting
from vllm_sdar.convert.task_base import Task
from vllm_sdar.convert.tools import ToolCalling


def registry() -> dict[str, type[Task]]:
    return {cls.name: cls for cls in (Addition, Sorting, ToolCalling)}


def task_from_json(data: dict[str, Any]) -> Task:
    """The task an eval.json recorded (`Task.to_json`)."""
    cls = registry()[data["name"]]
    return cls(**{f.name: data[f.name] for f in fields(cls)})
