"""Tasks: what a recipe's ``task`` means, and the data and metrics behind each one.

- ``registry``: the `Task` record and ``register_task`` / ``get_task`` / ``task_names``
  (torch-free; config reads it to validate recipes);
- ``splits``: split names, JSONL rows on disk, the train/held-out leak check;
- ``bank``: the question bank the field tasks share, and the lenient answer matcher;
- ``unanswerable`` / ``heldout_relations`` / ``replay_relations``: `<PASS>` questions with no
  answer that are not corrupted, answerable relations the training never uses, and answerable
  relations it may replay in training only (all used by ``pass_data``);
- the generators, each registering its task on import: ``pass_data`` (`<PASS>`),
  ``style_data`` (style tokens), ``lexicon_data`` (vocabulary expansion),
  ``classify_data`` (sequence classification);
- ``metrics``: the task metrics (imports torch; not imported here).

Importing this package registers the built-in tasks, so ``get_task`` always knows them.
"""

from __future__ import annotations

# Registration order is the order `task_names()` lists them in.
from tokengraft.tasks import pass_data, style_data, lexicon_data, classify_data  # noqa: F401, I001  (register the tasks)
from tokengraft.tasks.registry import (Generated, Generator, Task, get_task, register_task, task_names,
                                       unregister_task)
from tokengraft.tasks.splits import SPLITS, check_disjoint, read_jsonl, write_jsonl, write_splits

__all__ = ["SPLITS", "Generated", "Generator", "Task", "check_disjoint", "get_task", "read_jsonl", "register_task",
           "task_names", "unregister_task", "write_jsonl", "write_splits"]
