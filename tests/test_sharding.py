"""Sharded training, the fast parts: the recipe's distributed section, the DeepSpeed config tokengraft builds,
the planner's per-device arithmetic, and the row modules' behaviour that DeepSpeed and DDP rely on.

The runs themselves (two processes under ZeRO-2/3 and FSDP2) are the slow tests in
tests/test_deepspeed.py and tests/test_fsdp.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import HIDDEN, tiny_model, tiny_tokenizer
from tokengraft.cli.main import main
from tokengraft.config import apply_overrides, load_recipe, recipe_from_dict, zero_stage
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.errors import TokengraftError
from tokengraft.planner import plan
from tokengraft.training.sharding import deepspeed_config, full_trained_tensors, load_full, training_engine_arguments

# ----------------------------------------------------------------------------- the recipe


@pytest.fixture()
def recipe_file(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "<PASS>"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text("model: {name: m, device: cpu}\ntokens: {add: ['<PASS>']}\ndata: {train: train.jsonl}\n")
    return path


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_distributed_section_defaults_to_ddp_and_reads_zero_settings(recipe_file: Path, tmp_path: Path) -> None:
    assert load_recipe(recipe_file).distributed.engine == "ddp"
    assert training_engine_arguments(load_recipe(recipe_file)) == {}
    recipe = load_recipe(recipe_file, ["distributed.engine=deepspeed"])
    assert zero_stage(recipe.distributed) == 2  # no stage anywhere: 2
    ds = write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": 3, "overlap_comm": False}})
    recipe = load_recipe(recipe_file, ["distributed.engine=deepspeed", f"distributed.deepspeed_config={ds}"])
    assert zero_stage(recipe.distributed) == 3  # the file's stage
    config = training_engine_arguments(recipe)["deepspeed"]
    assert config["zero_optimization"]["stage"] == 3 and config["zero_optimization"]["overlap_comm"] is False
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"  # the Trainer fills them from train.*
    assert "optimizer" not in config and "scheduler" not in config  # tokengraft's optimiser is handed over


def test_distributed_mistakes_are_one_line_each(recipe_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TokengraftError, match="distributed.zero_stage is set but distributed.engine is ddp"):
        load_recipe(recipe_file, ["distributed.zero_stage=3"])
    with pytest.raises(TokengraftError, match="distributed.zero_stage must be <= 3"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", "distributed.zero_stage=4"])
    with pytest.raises(TokengraftError, match="distributed.engine must be one of ddp, deepspeed, fsdp"):
        load_recipe(recipe_file, ["distributed.engine=zero"])
    with pytest.raises(TokengraftError, match="deepspeed_config: file .*missing.json does not exist"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", "distributed.deepspeed_config=missing.json"])
    with_optimizer = write_json(tmp_path / "opt.json", {"optimizer": {"type": "AdamW"}})
    with pytest.raises(TokengraftError, match="has a 'optimizer' section; remove it"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", f"distributed.deepspeed_config={with_optimizer}"])
    (tmp_path / "bad.json").write_text("{stage: 3")
    with pytest.raises(TokengraftError, match="is not valid JSON"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", f"distributed.deepspeed_config={tmp_path / 'bad.json'}"])
    two = write_json(tmp_path / "two.json", {"zero_optimization": {"stage": 2}})
    with pytest.raises(TokengraftError, match="zero_stage is 3 but .* sets zero_optimization.stage 2"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", "distributed.zero_stage=3",
                                  f"distributed.deepspeed_config={two}"])
    with pytest.raises(TokengraftError, match="tokens.backend peft .* use tokens.backend: rows"):
        load_recipe(recipe_file, ["distributed.engine=deepspeed", "distributed.zero_stage=3", "tokens.backend=peft"])
    load_recipe(recipe_file, ["distributed.engine=deepspeed", "distributed.zero_stage=2", "tokens.backend=peft"])


def test_train_deepspeed_flag_is_the_recipe_field(recipe_file: Path, capsys) -> None:
    """`tokengraft train --deepspeed FILE` sets distributed.engine and deepspeed_config (checked before loading)."""
    assert main(["train", str(recipe_file), "--deepspeed", "nowhere.json"]) == 2
    assert "distributed.deepspeed_config: file" in capsys.readouterr().err


def test_sharding_engines_refuse_to_start_without_a_launcher(recipe_file: Path, tmp_path: Path, monkeypatch) -> None:
    """Without a launcher DeepSpeed would look for MPI and fail deep inside; one line instead, before any load."""
    from tokengraft.api import train

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    recipe = load_recipe(recipe_file, ["distributed.engine=deepspeed"])
    with pytest.raises(TokengraftError, match="distributed.engine: deepspeed runs under a launcher: accelerate launch"):
        train(recipe, tmp_path / "run", quiet=True)


def test_deepspeed_config_keeps_the_users_settings(tmp_path: Path, recipe_file: Path) -> None:
    ds = write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                                           "gradient_clipping": 0.5})
    recipe = load_recipe(recipe_file, ["distributed.engine=deepspeed", f"distributed.deepspeed_config={ds}"])
    config = deepspeed_config(recipe.distributed)
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert config["zero_optimization"]["stage3_prefetch_bucket_size"] == "auto"


# ----------------------------------------------------------------------------- the planner


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    """An untied tiny qwen2 (256 x 64 embedding and head) with the tiny tokenizer, for the meta-device planner."""
    directory = tmp_path / "tiny-qwen2"
    tiny_model("qwen2").save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_per_device_memory_under_each_sharding(tiny_dir: Path) -> None:
    base = recipe_from_dict({"model": {"name": str(tiny_dir), "device": "cpu"},
                             "tokens": {"add": ["<A>", "<B>"], "special": True},
                             "methods": [{"type": "lora", "targets": "attention", "r": 8}],
                             "data": {"generate": False}, "train": {"batch_size": 4}})
    args = dict(device="cpu", seq_len=64, supervised_tokens=100)
    one = plan(base, **args)
    ddp = plan(base, devices=2, **args)  # replicas: every device holds everything
    assert ddp.item("weights") == one.item("weights") and ddp.item("optimizer_state") == one.item("optimizer_state")
    z1, z2, z3 = (plan(base, devices=2, sharding=f"zero{s}", **args) for s in (1, 2, 3))
    half = lambda x: -(-x // 2)  # noqa: E731
    assert z1.item("optimizer_state") == half(one.item("optimizer_state"))
    assert z1.item("grads") == one.item("grads") and z2.item("grads") == half(one.item("grads"))
    assert z2.item("weights") == one.item("weights") and z3.item("weights") == half(one.item("weights"))
    assert z3.item("method_params") == half(one.item("method_params"))
    assert z3.item("zero_master") == half((2 * 2 * HIDDEN + one.item("method_params") // 4) * 4)  # fp32 copy
    assert z3.item("gathered_head") == 256 * HIDDEN * 4  # the untied head matrix, whole around the loss
    fsdp = plan(base, devices=2, sharding="fsdp", **args)
    assert fsdp.item("weights") == half(one.item("weights")) and fsdp.item("zero_master") == 0
    assert fsdp.item("gathered_root") == 2 * 256 * HIDDEN * 4  # embedding + head stay whole through the step
    recipe_says = apply_overrides(base, ["distributed.engine=deepspeed", "distributed.zero_stage=3"])
    assert plan(recipe_says, devices=2, **args).assumptions["sharding"] == "zero3"
    assert any("start-up" in note for note in z3.notes)
    with pytest.raises(TokengraftError, match="sharding 'zero4'"):
        plan(base, devices=2, sharding="zero4", **args)


def test_plan_cli_devices_and_zero(tmp_path: Path, tiny_dir: Path, capsys) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text(f"model: {{name: {tiny_dir}, device: cpu}}\ntokens: {{add: ['<A>']}}\n"
                      "methods: []\ndata: {max_length: 32}\n")
    assert main(["plan", str(config), "--devices", "2", "--zero", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["assumptions"]["devices"] == 2 and report["assumptions"]["sharding"] == "zero3"
    assert main(["plan", str(config), "--devices", "2", "--zero", "3"]) == 0
    assert "per device of 2, DeepSpeed zero3" in capsys.readouterr().out
    # Over budget on 4 GPUs: sharding the base is advised (on CPU, DeepSpeed's own ~20 MiB outweighs a tiny base).
    assert main(["plan", str(config), "--devices", "4", "--device", "cuda", "--budget", "1KB"]) == 1
    assert "distributed.engine: deepspeed, zero_stage: 3" in capsys.readouterr().out


# ----------------------------------------------------------------------------- what the row modules guarantee


def test_input_rows_get_a_gradient_even_in_a_batch_without_their_tokens() -> None:
    """Every rank then reduces the same parameters (ZeRO-3's reduce-scatter, DDP without find_unused_parameters)."""
    g = graft(tiny_model("qwen2"), tiny_tokenizer(), TokenSettings(add=["<A>"], special=True), [], verbose=False)
    ids = g.tokenizer("no new token here", return_tensors="pt")["input_ids"]
    g.model(input_ids=ids, labels=ids).loss.backward()
    assert g.rows.input_rows.grad is not None and torch.count_nonzero(g.rows.input_rows.grad) == 0
    assert g.rows.output_rows.grad is not None and torch.count_nonzero(g.rows.output_rows.grad) > 0


def test_gathering_and_loading_are_plain_reads_without_shards() -> None:
    g = graft(tiny_model("llama"), tiny_tokenizer(), TokenSettings(add=["<A>"], special=True),
              [{"type": "lora", "targets": "attention", "r": 4}], verbose=False)
    with full_trained_tensors(g):
        rows = {k: v.clone() for k, v in g.token_rows().items()}
    assert torch.equal(rows["input"], g.rows.input_rows.detach())
    load_full(g.rows.input_rows, torch.ones_like(rows["input"]))
    assert torch.equal(g.rows.input_rows.detach(), torch.ones_like(rows["input"]))
