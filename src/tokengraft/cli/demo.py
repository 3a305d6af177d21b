"""`tokengraft demo pass|style|lexicon`: the field tasks end to end on the built-in model.

Fetch the model (first run only), generate the task's seeded data, train the
packaged recipe, evaluate on the held-out test split against the base model,
and print the metrics and a few before/after generations (the task's
``demo_prompts`` in the task registry). The run directory is left in place for
`tokengraft export RUN_DIR --merged OUT`.

A task has a demo when the package ships a recipe for it (``configs/<task>.yaml``).
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task, task_names


def _packaged(task: str) -> Path:
    return Path(str(resources.files("tokengraft") / "configs" / f"{task}.yaml"))


def demo_tasks() -> list[str]:
    """Registered tasks with a packaged recipe: the choices of `tokengraft demo`."""
    return [task for task in task_names() if _packaged(task).is_file()]


def recipe_path(task: str) -> Path:
    path = _packaged(task)
    if not path.is_file():
        raise TokengraftError(f"no packaged recipe for demo {task!r}")
    return path


def run_demo(task: str, output: str, overrides: list[str] | None = None, *, resume: bool = False,
             overwrite: bool = False) -> int:
    # Imported here, not at the top: `tokengraft --help` reads demo_tasks() and must not load torch.
    from tokengraft.api import evaluate, load, train
    from tokengraft.cli.report import metrics_table
    from tokengraft.config import load_recipe
    from tokengraft.generation import generate_batch
    from tokengraft.rundir import load_base, read_graft_meta

    recipe = load_recipe(recipe_path(task), overrides or [])
    started = time.perf_counter()
    print(f"tokengraft demo {task}: recipe {recipe_path(task)} -> {output}")
    result = train(recipe, output, resume=resume, overwrite=overwrite)
    metrics = evaluate(output)
    print()
    print(metrics_table(metrics))
    prompts = list(get_task(task).demo_prompts)
    if prompts:
        base, base_tok = load_base(read_graft_meta(output))  # as the run loaded it (quantized too)
        tuned, tok = load(output)
        before = generate_batch(base, base_tok, prompts, max_new_tokens=40, system=recipe.data.system)
        after = generate_batch(tuned, tok, prompts, max_new_tokens=40, system=recipe.data.system)
        print("\nbefore -> after:")
        for prompt, b, a in zip(prompts, before, after):
            print(f"  {prompt!r}\n    base : {b['text'][:120]!r}\n    tuned: {a['text'][:120]!r}")
    minutes = (time.perf_counter() - started) / 60
    print(f"\ntrained {result.steps} steps in {result.train_seconds / 60:.1f} min; whole demo {minutes:.1f} min")
    print(f"run directory: {output}   (export: tokengraft export {output} --merged {output}-merged)")
    return 0
