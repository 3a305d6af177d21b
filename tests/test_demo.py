"""`tokengraft demo` end to end on a tiny model, its phase timings, and how the CLI picks threads.

The demo runs twice with a shared answers cache: the second run must ask the base model
nothing (every base answer read back) and reach the same metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokengraft.cli.demo import recipe_path
from tokengraft.cli.main import main
from tokengraft.cli.report import phase_table
from tokengraft.config import load_recipe
from tokengraft.errors import TokengraftError
from tokengraft.threads import choose_threads, usable_cpus
from tokengraft.timing import note, phase, recording
from tiny import tiny_model, tiny_tokenizer


def test_phases_nest_and_record_only_when_asked():
    with phase("outside") as alone:
        pass
    assert alone.seconds is not None and alone.seconds >= 0
    with recording() as log:
        with phase("a"):
            with phase("b", kind="x"):
                note(prompts=3)
            note(steps=2)
        with phase("c"):
            pass
    assert [(p.name, p.depth) for p in log.phases] == [("a", 0), ("b", 1), ("c", 0)]
    assert log.phases[1].detail == {"kind": "x", "prompts": 3} and log.phases[0].detail == {"steps": 2}
    assert log.seconds >= log.top_level_seconds() >= log.phases[1].seconds
    table = phase_table(log.to_dict())
    assert "  b" in table and "other (between phases)" in table and table.splitlines()[-1].startswith("total")
    note(ignored=True)  # outside any phase: nothing to annotate, no error


def test_threads_come_from_the_environment_or_the_idle_cores(monkeypatch):
    monkeypatch.setenv("TOKENGRAFT_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads()[0] == 3
    monkeypatch.delenv("TOKENGRAFT_THREADS")
    assert choose_threads() == (1, "OMP_NUM_THREADS=1")
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, why = choose_threads()
    assert 1 <= threads <= len(usable_cpus()) and "TOKENGRAFT_THREADS" in why
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(len(usable_cpus()) + 1))
    assert choose_threads()[0] == 1  # processes of a launcher share the cores
    monkeypatch.setenv("TOKENGRAFT_THREADS", "two")
    with pytest.raises(TokengraftError, match="TOKENGRAFT_THREADS"):
        choose_threads()


def test_every_demo_has_one_packaged_recipe():
    assert all(recipe_path(task).is_file() for task in ("pass", "style", "lexicon"))
    assert load_recipe(recipe_path("pass")).train.group_by_length  # the demo's speed depends on it (docs/speed.md)
    with pytest.raises(TokengraftError, match="no packaged recipe"):
        recipe_path("classification")
    # --model picks the model's own packaged recipe when there is one, else the task's.
    gemma = load_recipe(recipe_path("pass", "gemma3-270m"))
    default = load_recipe(recipe_path("pass"))
    assert gemma.model.name == "gemma3-270m" and default.model.name == "smollm2-135m-instruct"
    assert gemma.data.generate_options["validation_templates"] == 2 and "validation_templates" not in default.data.generate_options
    assert recipe_path("pass", "/some/local/model") == recipe_path("pass")
    assert recipe_path("style", "gemma3-270m") == recipe_path("style")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_demo_times_its_phases_and_a_second_run_asks_the_base_model_nothing(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    small = [f"model.name={tiny_dir}", "model.device=cpu", "train.max_steps=2", "train.save_steps=0",
             "train.eval_steps=0", "train.batch_size=2", "data.generate_options.n_train=30",
             "data.generate_options.n_validation=10", "data.generate_options.n_test=10",
             "data.generate_options.read_rows=2", "eval.max_new_tokens=6"]
    runs = []
    for name in ("first", "second"):
        assert main(["demo", "pass", *small, "--output", str(tmp_path / name)]) == 0
        assert "where the time went" in capsys.readouterr().out
        phases = json.loads((tmp_path / name / "phases.json").read_text())
        runs.append((phases, json.loads((tmp_path / name / "metrics.json").read_text())))
    names = [p["name"] for p in runs[0][0]["phases"]]
    for expected in ("load the base model", "data", "base model answers the training questions", "training",
                     "save the run directory", "evaluation", "calibration (validation split)", "base model: test",
                     "READ probe", "plots", "before/after examples"):
        assert expected in names
    assert runs[0][0]["total_seconds"] >= sum(p["seconds"] for p in runs[0][0]["phases"] if p["depth"] == 0)

    def asked(phases):
        return [(p["name"], p["detail"]["generated"]) for p in phases["phases"] if "generated" in p.get("detail", {})]

    assert all(generated > 0 for _, generated in asked(runs[0][0]))
    assert [n for n, _ in asked(runs[1][0])] == [n for n, _ in asked(runs[0][0])]
    assert all(generated == 0 for _, generated in asked(runs[1][0]))  # every base answer came from the cache
    assert runs[0][1] == runs[1][1]
