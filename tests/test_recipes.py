"""The example recipes in configs/: each validates, is headed by the command that runs it,
and trains end to end (two steps) when pointed at a tiny model instead of the built-in one."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tokengraft.cli.main import main
from tokengraft.config import load_recipe
from tokengraft.data import load_examples
from tiny import tiny_model, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
EXPECTED = {"ref000_pass_lora.yaml", "ref003_style.yaml", "ref004_lexicon.yaml", "quickstart_generic.yaml"}


def test_the_reference_recipes_are_shipped():
    assert EXPECTED <= {p.name for p in RECIPES}


def recipe_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_recipe_validates_and_names_its_command(path, capsys):
    """Every shipped recipe validates and is headed by the command that runs it."""
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = " ".join(line for line in lines[:next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    assert lines[0].startswith("# tokengraft ")
    assert f"tokengraft train configs/{recipe_id(path)} --output runs/" in header, header[:200]


def test_reference_settings_survive_loading():
    """The settings each reference is about, as the engine will read them."""
    r0 = load_recipe(CONFIGS / "ref000_pass_lora.yaml")
    assert (r0.tokens.add, r0.tokens.special, r0.tokens.sides, r0.tokens.backend) == (["<PASS>"], True, "both", "rows")
    lora = r0.methods[0]
    assert (lora.type, lora.targets, lora.r, lora.alpha, lora.dropout) == ("lora", "attention_mlp", 16, 32, 0.05)
    r3 = load_recipe(CONFIGS / "ref003_style.yaml")
    assert r3.tokens.special is False and r3.methods[0].targets == "all_linear"
    assert (r3.train.scheduler, r3.train.warmup_ratio, r3.train.gradient_checkpointing) == ("cosine", 0.03, True)
    assert r3.train.batch_size * r3.train.grad_accum == 16 and r3.data.generate and r3.task == "style"
    r4 = load_recipe(CONFIGS / "ref004_lexicon.yaml")
    assert (r4.task, r4.data.generate, r4.methods, r4.tokens.backend) == ("lexicon", True, [], "rows")
    assert r4.tokens.init.input == "spherical" and r4.train.optimizer == "adafactor" and r4.train.snapshot_steps == 50
    r3q = load_recipe(CONFIGS / "ref003_style_qlora.yaml")  # reference 003 as it ran: QLoRA
    assert (r3q.model.quantization, r3q.model.quant_type, r3q.model.double_quant) == ("4bit", "nf4", True)
    assert (r3q.methods[0].targets, r3q.methods[0].r, r3q.train.scheduler, r3q.train.warmup_ratio) == \
        ("all_linear", 16, "cosine", 0.03)
    assert r3q.train.gradient_checkpointing and r3q.train.grad_accum > 1 and r3q.tokens.add == r3.tokens.add
    r4q = load_recipe(CONFIGS / "ref004_lexicon_4bit.yaml")  # reference 004's shape on a 4-bit body
    assert (r4q.model.quantization, r4q.methods, r4q.train.optimizer, r4q.data.max_length) == ("4bit", [], "adafactor", 128)
    q = load_recipe(CONFIGS / "quickstart_generic.yaml")
    assert Path(q.data.train) == CONFIGS / "data" / "example.jsonl"


def test_example_data_uses_the_quickstart_token():
    recipe = load_recipe(CONFIGS / "quickstart_generic.yaml")
    examples = load_examples(recipe.data.train)
    assert len(examples) >= 10 and {e.kind for e in examples} == {"prompt", "chat"}
    for token in recipe.tokens.add:
        assert all(token in e.completion for e in examples)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


SMALL_PASS_DATA = ["data.generate_options.n_train=40", "data.generate_options.n_validation=10",
                   "data.generate_options.n_test=10"]
# Less generated data, so the test stays fast; the tiny tokenizer is character-level, so
# the style task's verbose answers need a longer max_length than the real model's 192.
SHRINK = {"ref000_pass_lora.yaml": SMALL_PASS_DATA,
          "ref003_style.yaml": SMALL_PASS_DATA + ["data.max_length=1024"],
          "ref004_lexicon.yaml": ["data.generate_options.max_words=50"],
          "quickstart_generic.yaml": []}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_trains_on_a_tiny_model(name, tiny_dir, tmp_path, capsys):
    """The same recipe file through `tokengraft train`, only the model swapped and the run cut short."""
    run = tmp_path / "run"
    code = main(["train", str(CONFIGS / name), f"model.name={tiny_dir}", "model.device=cpu", "train.max_steps=2",
                 "train.save_steps=0", "train.eval_steps=0", "train.batch_size=2", "train.grad_accum=1",
                 *SHRINK[name], "--output", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((run / "graft.json").read_text())
    assert meta["steps"] == 2 and meta["tokens"] and all(t["new"] for t in meta["tokens"])
    assert (run / "rows.safetensors").is_file() and (run / "config.yaml").is_file()
    recipe = load_recipe(CONFIGS / name)
    if recipe.data.generate:  # the generated rows stay beside the run
        assert (run / "data" / "train.jsonl").is_file() and (run / "data" / "test.jsonl").is_file()
    if recipe.task == "lexicon":
        mined = (run / "data" / "lexicon.txt").read_text().split("\n")
        assert {t["token"].strip() for t in meta["tokens"]} <= {line.strip() for line in mined}  # word_start: " word"


QUANTIZED = {"ref003_style_qlora.yaml": SHRINK["ref003_style.yaml"], "ref004_lexicon_4bit.yaml": SHRINK["ref004_lexicon.yaml"]}


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason='bitsandbytes is not installed (pip install -e ".[quant]"; the test extra has it)')
@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_quantized_recipe_trains_on_a_tiny_model(name, tiny_dir, tmp_path, capsys):
    """The QLoRA recipes through `tokengraft train` on a tiny model: the run records its 4-bit NF4 base."""
    run = tmp_path / "run"
    code = main(["train", str(CONFIGS / name), f"model.name={tiny_dir}", "model.device=cpu", "train.max_steps=2",
                 "train.save_steps=0", "train.eval_steps=0", "train.batch_size=2", "train.grad_accum=1",
                 *QUANTIZED[name], "--output", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((run / "graft.json").read_text())
    assert meta["steps"] == 2 and meta["tokens"]
    assert meta["quantization"]["kind"] == "4bit" and meta["quantization"]["quant_type"] == "nf4"
    assert meta["quantization"]["double_quant"] is True and meta["quantization"]["compute_dtype"] == "float32"
    recipe = load_recipe(CONFIGS / name)
    assert recipe.train.gradient_checkpointing and recipe.tokens.backend == "rows"


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_quantized_recipe_plans_on_the_builtin_model(name, capsys):
    """`tokengraft plan` prices the built-in model's 30 blocks in NF4: the weights line is about a third of fp32's."""
    from tokengraft.config import apply_overrides
    from tokengraft.planner import plan

    recipe = load_recipe(CONFIGS / name)
    quantized = plan(recipe, device="cpu", new_tokens=400)
    full = plan(apply_overrides(recipe, ["model.quantization=none"]), device="cpu", new_tokens=400)
    assert quantized.assumptions["quantization"] == "4bit"
    assert quantized.item("weights") < 0.4 * full.item("weights")
    assert quantized.item("token_rows") == full.item("token_rows")  # fp32 rows either way


@pytest.mark.network
@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_recipe_passes_model_checks_on_the_builtin_model(path, capsys):
    """`validate --check-model` resolves methods and tokens against the built-in model (meta device)."""
    assert main(["validate", "--check-model", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
