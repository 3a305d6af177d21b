"""Bad input ends in one clear line and exit code 2 (issue 21), through the real CLI in-process.

Each case was a traceback (or a success on wrong data) before: non-UTF-8 recipes and
data, truncated weight files (a run's method weights, a base model, the built-in cache
whose completion marker was trusted, a GGUF), ``export --merged`` onto a file, an
unwritable or too-long ``--output`` (the long one trained, then crashed at the first
save), a prompt longer than a GPT-2 context, a hub id without network (half a minute of
retry lines). ``validate`` checks the data files as ``train`` does, without weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from tokengraft import builtin, models
from tokengraft.cli.main import main
from tokengraft.constants import BUILTIN_ALIAS
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.errors import TokengraftError
from tokengraft.files import gguf_problem, safetensors_problem
from tokengraft.generation import generate_batch
from tokengraft.rundir import save_graft
from test_train import LORA, TOKEN, example_rows, make_recipe, save_tiny
from tiny import tiny_model


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit code and the ``tokengraft: error:`` lines (exactly one is expected) of an in-process CLI call."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("tokengraft: error:")]


def one_error(capsys, *argv: str) -> str:
    code, errors = cli(capsys, *argv)
    assert code == 2 and len(errors) == 1, errors
    return errors[0]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("llama"))


def saved_run(root: Path, base: Path, methods: list | None = None) -> Path:
    """A run directory as training leaves it (graft + save_graft), without training: loading is what is tested."""
    model, tokenizer = models.load_model(str(base), device="cpu")
    g = graft(model, tokenizer, TokenSettings(add=[TOKEN], special=True), methods or [], verbose=False)
    return save_graft(g, root / "run", base_spec=str(base))


# ----------------------------------------------------------------------------- text that is not UTF-8


def test_a_recipe_that_is_not_utf8(tmp_path, llama_dir, capsys):
    recipe = make_recipe(tmp_path, llama_dir).save(tmp_path / "recipe.yaml")
    recipe.write_bytes(recipe.read_bytes() + "# caf\xe9\n".encode("latin-1"))
    for command in ("validate", "train"):
        error = one_error(capsys, command, str(recipe), *(["--output", str(tmp_path / "run")] if command == "train" else []))
        assert "is not UTF-8 text (byte 0xe9 on line" in error


def test_a_data_file_that_is_not_utf8_stops_train_before_the_model_loads(tmp_path, capsys):
    """The model directory has no weights: had the model loaded first, that would be the error."""
    config_only = tmp_path / "config-only"
    tiny_model("llama").config.save_pretrained(config_only)
    recipe = make_recipe(tmp_path, config_only).save(tmp_path / "recipe.yaml")
    data = tmp_path / "train.jsonl"
    data.write_bytes(data.read_bytes() + '{"prompt": "caf\xe9", "completion": "<PASS>"}\n'.encode("latin-1"))
    for command in ("validate", "train"):
        error = one_error(capsys, command, str(recipe), *(["--output", str(tmp_path / "run")] if command == "train" else []))
        assert f"{data}:17: not UTF-8 text (byte 0xe9" in error


# ----------------------------------------------------------------------------- validate reads the data


@pytest.mark.parametrize("case, message", [
    ("bad_json", "train.jsonl:3: invalid JSON"),
    ("no_completion", "train.jsonl:2: has 'prompt' but no 'completion'"),
    ("empty", "holds no examples"),
    ("token_absent", "new token(s) '<PASS>' never occur in the training data"),
    ("empty_validation", "validation.jsonl holds no examples"),
])
def test_validate_checks_the_data_files_like_train(tmp_path, llama_dir, capsys, case, message):
    recipe = make_recipe(tmp_path, llama_dir).save(tmp_path / "recipe.yaml")
    rows = [json.dumps(r) for r in example_rows()]
    overrides = []
    if case == "bad_json":
        rows[2] = '{"prompt": "q", "completion": '
    elif case == "no_completion":
        rows[1] = json.dumps({"prompt": "q"})
    elif case == "empty":
        rows = []
    elif case == "token_absent":
        rows = [json.dumps(r) for r in example_rows(token=None)]
    else:
        (tmp_path / "validation.jsonl").write_text("\n\n")
        overrides = [f"data.validation={tmp_path / 'validation.jsonl'}"]
    (tmp_path / "train.jsonl").write_text("".join(r + "\n" for r in rows))
    assert message in one_error(capsys, "validate", str(recipe), *overrides)


def test_validate_counts_a_token_held_out_by_the_validation_split_as_absent(tmp_path, llama_dir, capsys):
    """Train only sees the rows left after data.validation_fraction; validate splits the same way (same seed)."""
    rows = example_rows(12, token=None)
    rows[5]["completion"] = TOKEN
    recipe = make_recipe(tmp_path, llama_dir, rows=rows, data={"validation_fraction": 0.5}).save(tmp_path / "r.yaml")
    answers = {seed: cli(capsys, "validate", str(recipe), f"seed={seed}")[0] for seed in range(6)}
    assert set(answers.values()) == {0, 2}  # some seeds keep the one row with the token, some hold it out


# ----------------------------------------------------------------------------- truncated weights


def test_truncated_method_weights_in_a_run(tmp_path, llama_dir, capsys):
    run = saved_run(tmp_path, llama_dir, [dict(LORA, dropout=0.0)])
    truncate(run / "methods.safetensors")
    assert "methods.safetensors is damaged" in one_error(capsys, "generate", str(run), "hello")
    assert "methods.safetensors is damaged" in one_error(capsys, "export", str(run), "--merged", str(tmp_path / "m"))


def test_truncated_base_weights(tmp_path, llama_dir, capsys):
    base = tmp_path / "base"
    shutil.copytree(llama_dir, base)
    run = saved_run(tmp_path, base)
    truncate(base / "model.safetensors")
    assert "model.safetensors is truncated" in one_error(capsys, "generate", str(run), "hello")
    recipe = make_recipe(tmp_path, base).save(tmp_path / "recipe.yaml")
    error = one_error(capsys, "train", str(recipe), "--output", str(tmp_path / "new"))
    assert "model.safetensors is truncated" in error and "copy or download the model again" in error


def fake_builtin_cache(cache: Path) -> Path:
    """A converted built-in model directory as a finished fetch leaves it (tiny weights, completion marker)."""
    target = cache / "models" / BUILTIN_ALIAS
    save_tiny(target)
    (target / builtin.BUILTIN_COMPLETE_MARKER).write_text("ok\n")
    return target


def test_a_truncated_builtin_cache_is_not_trusted(tmp_path, monkeypatch, capsys):
    """The marker says complete but model.safetensors was cut: the cache is removed and fetched again (here
    pip has no index, so the fetch fails with one line) instead of a SafetensorError traceback."""
    monkeypatch.setenv("TOKENGRAFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = tmp_path / "cache" / "models" / BUILTIN_ALIAS
    save_tiny(target)
    (target / builtin.BUILTIN_COMPLETE_MARKER).write_text("ok\n")
    model, _ = models.load_model(BUILTIN_ALIAS, device="cpu")  # whole: used as it is, nothing fetched
    assert model.get_input_embeddings().weight.shape[0] == 256
    truncate(target / "model.safetensors", 0.9)
    code = main(["inspect", BUILTIN_ALIAS])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tokengraft: error:")]
    assert code == 2 and len(errors) == 1 and "could not download" in errors[0] and "Traceback" not in err, err
    assert f"removing the cached built-in model {target} (model.safetensors is truncated" in err
    assert not target.exists()  # the damaged copy is gone; the next fetch starts clean


def tiny_gguf(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(16, 4))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("keep", [0.97, 0.5, 0.05])
def test_a_truncated_gguf_says_truncated(tmp_path, capsys, keep):
    whole = tiny_gguf(tmp_path / "whole.gguf")
    assert gguf_problem(whole) is None
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    error = one_error(capsys, "inspect", str(cut))
    assert "cut.gguf is truncated" in error and "download or export it again" in error


def test_safetensors_problem_reads_only_the_header(tmp_path, llama_dir):
    whole = llama_dir / "model.safetensors"
    assert safetensors_problem(whole) is None
    cut = tmp_path / "cut.safetensors"
    for keep in (len(whole.read_bytes()) - 1, 100, 4):
        cut.write_bytes(whole.read_bytes()[:keep])
        assert "is truncated" in safetensors_problem(cut)


# ----------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("kind", ["--merged", "--lora-adapter"])
def test_export_onto_an_existing_file(tmp_path, llama_dir, capsys, kind):
    run = saved_run(tmp_path, llama_dir, [dict(LORA, dropout=0.0)])
    (tmp_path / "taken").write_text("mine")
    assert "is an existing file" in one_error(capsys, "export", str(run), kind, str(tmp_path / "taken"))
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_unwritable_output_fails_before_anything_loads(tmp_path, llama_dir, capsys):
    recipe = make_recipe(tmp_path, llama_dir).save(tmp_path / "recipe.yaml")
    (tmp_path / "a-file").write_text("x")
    error = one_error(capsys, "train", str(recipe), "--output", str(tmp_path / "a-file" / "run"))
    assert error.startswith(f"tokengraft: error: cannot write the run directory {tmp_path / 'a-file' / 'run'}")


def test_a_too_long_output_fails_before_training(tmp_path, llama_dir, capsys):
    """A 4,060-character --output can be created, but a checkpoint's files below it cannot (PATH_MAX 4,096).

    Before: the data was prepared and two steps trained, then the first checkpoint crashed with OSError.
    """
    recipe = make_recipe(tmp_path, llama_dir, save_steps=2).save(tmp_path / "recipe.yaml")
    deep = tmp_path
    while len(str(deep)) < 4060 - 210:
        deep = deep / ("d" * 200)
    run = deep / ("r" * (4060 - len(str(deep)) - 1))
    assert len(str(run)) == 4060
    error = one_error(capsys, "train", str(recipe), "--output", str(run))
    assert "cannot write files below the run directory" in error and "choose a shorter --output" in error
    assert not (run / "dataset_stats.json").exists() and not list(run.glob("checkpoint-*"))


# ----------------------------------------------------------------------------- prompts and hub ids


def test_a_prompt_longer_than_a_gpt2_context(tmp_path, capsys):
    """GPT-2 learns 256 positions here (1,024 in the real one); past them its lookup was an IndexError."""
    base = save_tiny(tmp_path / "gpt2", "gpt2")
    model, tokenizer = models.load_model(str(base), device="cpu")
    long, fits = "x " * 150, "x " * 110  # one token per character: 300 and 220 tokens plus the template
    with pytest.raises(TokengraftError, match="prompt 2 is 3.. tokens, but gpt2 reads at most 256 positions"):
        generate_batch(model, tokenizer, ["short", long], max_new_tokens=4)
    with pytest.raises(TokengraftError, match=r"lower max_new_tokens \(--max-new-tokens / eval.max_new_tokens\) to"):
        generate_batch(model, tokenizer, [fits], max_new_tokens=64)
    assert len(generate_batch(model, tokenizer, [fits], max_new_tokens=4)) == 1
    run = saved_run(tmp_path, base)
    assert "reads at most 256 positions" in one_error(capsys, "generate", str(run), long)


@pytest.fixture
def unreachable_hub(monkeypatch):
    """The hub endpoint on a closed local port, offline mode off: what a machine without network sees."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    models.hub_unreachable.cache_clear()
    yield
    models.hub_unreachable.cache_clear()


def test_a_hub_id_without_network_is_one_line_at_once(unreachable_hub, capsys):
    """Before: ten retry lines over ~27 s, then the error."""
    code = main(["inspect", "someorg/somemodel"])
    err = capsys.readouterr().err
    assert code == 2 and "Retry" not in err and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "the Hugging Face hub cannot be reached" in lines[0], lines
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the rest of the suite stays offline
