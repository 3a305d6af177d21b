"""`tokengraft demo pass|style|lexicon`: the field tasks end to end on the built-in model.

Fetch the model (first run only), generate the task's seeded data (the base model
answers the training questions it needs), train the packaged recipe, evaluate on the
held-out test split against the base model, and print the metrics, a few
before/after generations (the task's ``demo_prompts`` in the task registry) and a
table of where the time went (``phases.json`` in the run directory). The run directory
is left in place for `tokengraft export RUN_DIR --merged OUT`.

A task has a demo when the package ships a recipe for it (``configs/<task>.yaml``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task, task_names


def _packaged(name: str) -> Path:
    return Path(str(resources.files("tokengraft") / "configs" / f"{name}.yaml"))


def demo_tasks() -> list[str]:
    """Registered tasks with a packaged recipe: the choices of `tokengraft demo`."""
    return [task for task in task_names() if _packaged(task).is_file()]


def recipe_path(task: str, model: str | None = None) -> Path:
    """The packaged recipe of a demo: the model's own (``configs/<task>-<model>.yaml``, e.g. pass-gemma3-270m.yaml)
    when the package ships one for ``model``, else the task's."""
    if model:
        own = _packaged(f"{task}-{model}")
        if own.is_file():
            return own
    path = _packaged(task)
    if not path.is_file():
        raise TokengraftError(f"no packaged recipe for demo {task!r}")
    return path


def run_demo(task: str, output: str, overrides: list[str] | None = None, *, model: str | None = None,
             resume: bool = False, overwrite: bool = False, threads: str = "") -> int:
    # Imported here, not at the top: `tokengraft --help` reads demo_tasks() and must not load torch.
    from tokengraft.answer_cache import base_answers
    from tokengraft.api import evaluate, load, train
    from tokengraft.cli.report import metrics_table, phase_table
    from tokengraft.config import load_recipe
    from tokengraft.generation import generate_batch
    from tokengraft.rundir import PHASES_FILE, load_base, read_graft_meta, write_phases
    from tokengraft.timing import phase, recording

    path = recipe_path(task, model)
    overrides = ([f"model.name={model}"] if model else []) + list(overrides or [])
    recipe = load_recipe(path, overrides)
    print(f"tokengraft demo {task}: recipe {path} -> {output}" + (f"   (torch threads: {threads})" if threads else ""))
    with recording() as log:
        result = train(recipe, output, resume=resume, overwrite=overwrite)
        metrics = evaluate(output)
        print()
        print(metrics_table(metrics))
        prompts = list(get_task(task).demo_prompts)
        if prompts:
            with phase("before/after examples"):
                base, base_tok = load_base(read_graft_meta(output))  # as the run loaded it (quantized too)
                tuned, tok = load(output)
                before = base_answers(base, base_tok, prompts, max_new_tokens=40, system=recipe.data.system)
                after = generate_batch(tuned, tok, prompts, max_new_tokens=40, system=recipe.data.system)
            print("\nbefore -> after:")
            for prompt, b, a in zip(prompts, before, after):
                print(f"  {prompt!r}\n    base : {b['text'][:120]!r}\n    tuned: {a['text'][:120]!r}")
    phases = {"command": f"tokengraft demo {task}", "recipe": str(path),
              "overrides": list(overrides or []), "threads": threads, "steps": result.steps, **log.to_dict()}
    write_phases(output, phases)
    print(f"\nwhere the time went ({PHASES_FILE} in the run directory):")
    print(phase_table(phases))
    print(f"\ntrained {result.steps} steps in {result.train_seconds / 60:.1f} min; "
          f"whole demo {(log.seconds or 0.0) / 60:.1f} min")
    if any(spec.type == "alora" for spec in recipe.methods):  # an activated LoRA cannot be merged (PEFT cannot either)
        print(f"run directory: {output}   (activated LoRA: serve it from here, e.g. tokengraft generate {output} $"
              "'<STYLE_TERSE>\\nWhat is the capital of Italy?'; docs/tasks.md, \"Exporting an aLoRA run\")")
    else:
        print(f"run directory: {output}   (export: tokengraft export {output} --merged {output}-merged)")
    return 0
