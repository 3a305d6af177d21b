"""config.py: recipe loading, overrides, validation errors (each names its field), round trip, defaults, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tokengraft.cli.main import main
from tokengraft.config import (Recipe, TokenInit, default_recipe, load_recipe, parse_override, recipe_from_dict, schema_docs, validate_recipe)
from tokengraft.core.guard import check_recipe_on_model
from tokengraft.errors import TokengraftError
from tiny import tiny_config, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPE = """\
# tokengraft train recipe.yaml
seed: 7
task: generic
tokens:
  add: ["<A>", "<B>"]
  init: {input: text, output: mean}
  init_text: {"<A>": "alpha", "<B>": "beta"}
methods:
  - {type: lora, targets: attention_mlp, r: 16, alpha: 32}
data:
  train: data/train.jsonl
  max_length: 128
train:
  lr: 2.0e-4
  epochs: 2
"""


@pytest.fixture
def recipe_path(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c <A> <B>"}) + "\n")
    (tmp_path / "data" / "other.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_load_recipe_values_and_relative_paths(recipe_path, tmp_path, monkeypatch):
    monkeypatch.chdir(Path("/"))  # relative data paths follow the YAML file, not the cwd
    r = load_recipe(recipe_path)
    assert r.seed == 7 and r.train.lr == 2e-4 and r.train.epochs == 2 and r.data.max_length == 128
    assert r.data.train == str(tmp_path / "data" / "train.jsonl")
    assert r.tokens.init == TokenInit(input="text", output="mean")
    assert r.methods[0].type == "lora" and r.methods[0].r == 16 and r.methods[0].alpha == 32
    assert r.train.batch_size == 8  # untouched sections keep their defaults


def test_overrides(recipe_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "data")  # override paths are relative to where the user typed them
    r = load_recipe(recipe_path, ["train.lr=1e-4", "tokens.add=[<A>,<B>,<C>]", "methods.0.r=8", "data.train=other.jsonl",
                                  "tokens.init=mean", "data.system=", "eval.pass_bias=-1.5"])
    assert r.train.lr == pytest.approx(1e-4) and isinstance(r.train.lr, float)  # YAML reads 1e-4 as a string
    assert r.tokens.add == ["<A>", "<B>", "<C>"]
    assert r.methods[0].r == 8 and r.methods[0].alpha == 32
    assert r.data.train == str(tmp_path / "data" / "other.jsonl")
    assert r.tokens.init == TokenInit("mean", "mean") and r.data.system is None and r.eval.pass_bias == -1.5
    # a nested key under a one-string init expands it to both sides first
    r2 = load_recipe(recipe_path, ["tokens.init=mean", "tokens.init.output=spherical"])
    assert r2.tokens.init == TokenInit("mean", "spherical")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_round_trip(recipe_path, tmp_path):
    r = load_recipe(recipe_path, ["methods=[{type: adapter, bottleneck: 16}, {type: freeze, mode: top_k_blocks, top_k: 2}]"])
    saved = r.save(tmp_path / "run" / "config.yaml")
    assert saved.read_text().startswith("# tokengraft train")
    again = load_recipe(saved)
    assert again == r and again.to_dict() == r.to_dict()
    assert [m.type for m in again.methods] == ["adapter", "freeze"]


def _fails(recipe_path, overrides, *needles):
    with pytest.raises(TokengraftError) as info:
        load_recipe(recipe_path, overrides)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("overrides, needles", [
    (["train.lr=fast"], ["train.lr must be a number, got 'fast'"]),
    (["train.batch_size=2.5"], ["train.batch_size must be an integer"]),
    (["train.batch_size=0"], ["train.batch_size must be >= 1"]),
    (["train.gradient_checkpointing=maybe"], ["train.gradient_checkpointing must be true or false"]),
    (["train.scheduler=cosin"], ["train.scheduler must be one of cosine, linear, constant", "did you mean 'cosine'"]),
    (["model.quantization=2bit"], ["model.quantization must be one of none, 4bit, 8bit"]),
    (["tokens.sides=left"], ["tokens.sides must be one of both, input, output"]),
    (["data.on_overflow=cut"], ["data.on_overflow must be one of drop, error, truncate_prompt"]),
    (["data.validation_fraction=1"], ["data.validation_fraction must be < 1"]),
    (["eval.target_false_pass=0"], ["eval.target_false_pass must be > 0"]),
    (["train.max_steps=0"], ["train.max_steps must be -1"]),
    (["model.device=gpu"], ["model.device must be auto, cpu"]),
    (["tokens.add=notalist"], ["tokens.add must be a list of strings"]),
    (["tokens.add=[<A>, <A>]", "tokens.init=mean", "tokens.init_text={}"], ["tokens.add lists '<A>' more than once"]),
    (["tokens.add=['', <B>]"], ["tokens.add[0] is empty"]),
    (["tokens.init.input=magic"], ["tokens.init.input for '<A>' is 'magic'", "mean, hewitt, text"]),
    (["tokens.init.output={<Q>: mean}"], ["tokens.init.output names '<Q>'"]),
    (["tokens.init_text={<A>: x}"], ["tokens.init_text has no entry for '<B>'"]),
    (["tokens.init_text={<A>: x, <B>: y, <C>: z}"], ["tokens.init_text has '<C>', which is not in tokens.add"]),
    (["tokens.train_existing=[-3]"], ["tokens.train_existing[0] is a negative id"]),
    (["tokens.single_word=true"], ["tokens.single_word / word_start apply to normal added tokens"]),
    (["tokens.special=false", "tokens.single_word=true", "tokens.word_start=true"], ["exclude each other"]),
    (["data.know_check=true"], ["it needs task: pass"]),
    (["data.self_answers=true"], ["task generic has no such rows"]),
    (["tokens.add_file=missing.txt"], ["tokens.add_file", "does not exist"]),
    (["train.objective=idk"], ["train.objective: idk needs task: pass"]),
    (["task=pass", "tokens.add=[]", "tokens.init=mean", "tokens.init_text={}"], ["task pass needs its tokens in tokens.add"]),
    (["task=translate"], ["task must be one of pass, style"]),
    (["data.train=nope.jsonl"], ["data.train: file", "nope.jsonl does not exist"]),
    (["data.validation=nope.jsonl"], ["data.validation: file"]),
    (["data.train=null"], ["data.train is required"]),
    (["data.generate=true"], ["task generic has no data generator"]),
    (["task=style", "data.generate=true"], ["data.generate is true and data.train/validation are set"]),
    (["methods=[{type: lora}, {type: lora}]"], ["methods lists 'lora' 2 times"]),
    (["methods=[{type: lora}, {type: prefix}]"], ["both wrap the model with PEFT"]),
    (["methods=[{type: lroa}]"], ["methods[0].type must be one of", "did you mean 'lora'"]),
    (["methods=[{type: lora, rank: 4}]"], ["unknown key 'methods[0].rank'", "did you mean 'r'"]),
    (["methods.0.dropout=1.5"], ["methods[0]:", "dropout"]),
    (["methods=[{type: freeze, mode: pattern}]"], ["methods[0]:", "pattern"]),
    (["methods=lora"], ["methods must be a list"]),
    (["methods.4.r=2"], ["methods has 1 entries"]),
    (["train.lr.x=1"], ["train.lr is not a section"]),
    (["model=3"], ["model must be a mapping"]),
    (["trian.lr=1"], ["unknown key 'trian'", "did you mean 'train'"]),
    (["train.learning_rate=1e-4"], ["unknown key 'train.learning_rate'", "did you mean 'lr'"]),
    (["train.lerning_rate=1e-4"], ["did you mean 'lr'"]),
    (["tokens.init={input: mean, outptu: mean}"], ["unknown key 'tokens.init.outptu'", "did you mean 'output'"]),
    (["nokey"], ["override 'nokey' must look like key=value"]),
    (["train.lr=[unclosed"], ["not valid YAML"]),
])
def test_validation_errors_name_the_field(recipe_path, overrides, needles):
    message = _fails(recipe_path, overrides, *needles)
    assert message.startswith(str(recipe_path))  # the file is named too


def test_unknown_key_in_yaml_and_bad_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("task: generic\ndata: {train: x.jsonl, max_lenght: 64}\n")
    with pytest.raises(TokengraftError, match=r"unknown key 'data.max_lenght'; did you mean 'max_length'"):
        load_recipe(path)
    path.write_text("task: [generic\n")
    with pytest.raises(TokengraftError, match="invalid YAML at line"):
        load_recipe(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(TokengraftError, match="must be a YAML mapping"):
        load_recipe(path)
    with pytest.raises(TokengraftError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_notes_for_ignored_settings(recipe_path):
    r = load_recipe(recipe_path, ["task=classification", "eval.pass_bias=1.0"])
    notes = validate_recipe(r)
    assert any("supervised_head_only is ignored" in n for n in notes)
    assert any("pass_bias is ignored" in n for n in notes)


def test_token_file(recipe_path, tmp_path):
    (tmp_path / "words.txt").write_text("riverrun\n\n  commodius \n<A>\n")
    r = load_recipe(recipe_path, [f"tokens.add_file={tmp_path / 'words.txt'}", "tokens.init=subwords", "tokens.init_text={}"])
    assert r.tokens.all_tokens() == ["<A>", "<B>", "riverrun", "commodius"]


@pytest.mark.parametrize("task", ["pass", "style", "lexicon"])
def test_default_recipes_validate(task, tmp_path):
    r = default_recipe(task)
    assert r.task == task and r.data.generate
    validate_recipe(r)
    path = r.save(tmp_path / f"{task}.yaml")
    assert load_recipe(path) == r


def test_default_recipe_unknown_task():
    with pytest.raises(TokengraftError, match="did you mean 'style'"):
        default_recipe("styel")
    assert default_recipe("pass").tokens.add == ["<PASS>"]
    assert default_recipe("lexicon").methods == []


def test_schema_docs_cover_every_field():
    rows = schema_docs()
    keys = {k for k, _, _ in rows}
    assert {"train.lr", "tokens.init.input", "data.on_overflow", "methods"} <= keys
    assert all(doc for _, _, doc in rows), [k for k, _, d in rows if not d]
    assert dict((k, t) for k, t, _ in rows)["train.optimizer"] == "one of adamw, adafactor, paged_adamw_8bit"


def test_recipe_from_dict_empty_uses_defaults():
    r = recipe_from_dict({})
    assert r == Recipe()


# ----------------------------------------------------------------------------- model-dependent checks (meta device)


def _model_dir(tmp_path: Path, family: str, tokenizer: bool = True) -> Path:
    d = tmp_path / family
    tiny_config(family).save_pretrained(d)  # config (+ tokenizer) only: the checks never read weights
    if tokenizer:
        tiny_tokenizer().save_pretrained(d)
    return d


def test_check_model_bitfit_without_biases(recipe_path, tmp_path):
    llama = _model_dir(tmp_path, "llama")
    r = load_recipe(recipe_path, [f"model.name={llama}", "methods=[{type: freeze, mode: bitfit, top_k: 2}]"])
    with pytest.raises(TokengraftError, match=r"methods\[0\] \(freeze\).*BitFit selects nothing"):
        validate_recipe(r) + check_recipe_on_model(r)
    qwen = _model_dir(tmp_path, "qwen2")  # qwen2 has q/k/v biases
    r = load_recipe(recipe_path, [f"model.name={qwen}", "methods=[{type: freeze, mode: bitfit, top_k: 2}]"])
    assert validate_recipe(r) + check_recipe_on_model(r) == []


def test_check_model_depth_and_targets(recipe_path, tmp_path):
    llama = _model_dir(tmp_path, "llama")
    r = load_recipe(recipe_path, [f"model.name={llama}", "methods.0.top_k_blocks=5"])
    with pytest.raises(TokengraftError, match="only 2 blocks"):
        validate_recipe(r) + check_recipe_on_model(r)
    r = load_recipe(recipe_path, [f"model.name={llama}", "methods.0.targets=[nonexistent_proj]"])
    with pytest.raises(TokengraftError, match="nonexistent_proj"):
        validate_recipe(r) + check_recipe_on_model(r)


def test_check_model_tokens(recipe_path, tmp_path):
    llama = _model_dir(tmp_path, "llama")
    r = load_recipe(recipe_path, [f"model.name={llama}", "tokens.train_existing=[<s>, 3, <nope>]"])
    with pytest.raises(TokengraftError, match=r"tokens.train_existing\[2\] '<nope>' is not a token"):
        validate_recipe(r) + check_recipe_on_model(r)
    r = load_recipe(recipe_path, [f"model.name={llama}", "tokens.train_existing=[999]"])
    with pytest.raises(TokengraftError, match=r"tokens.train_existing\[0\] is id 999, past the tokenizer's 256 tokens"):
        validate_recipe(r) + check_recipe_on_model(r)
    r = load_recipe(recipe_path, [f"model.name={llama}", "tokens.add=[<A>, </s>]", "tokens.init=mean", "tokens.init_text={}"])
    assert any("already exist in the vocabulary" in n and "</s>" in n for n in validate_recipe(r) + check_recipe_on_model(r))
    bare = _model_dir(tmp_path / "bare", "llama", tokenizer=False)
    r = load_recipe(recipe_path, [f"model.name={bare}"])
    assert any("tokenizer checks skipped" in n for n in validate_recipe(r) + check_recipe_on_model(r))


# ----------------------------------------------------------------------------- CLI


def test_cli_validate(recipe_path, capsys):
    assert main(["validate", str(recipe_path), "train.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: task generic") and "lr 0.0001" in out
    assert main(["validate", str(recipe_path), "train.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("train.lr must be a number, got 'fast'") and err.count("\n") == 1
