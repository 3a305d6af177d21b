"""Quantized bases (bitsandbytes 4-bit NF4 and 8-bit) on tiny models, on CPU.

Every run is a real ``tokengraft.api.train`` of a tiny random model saved to a temporary
directory and re-loaded quantized by bitsandbytes' CPU backend; nothing is mocked. What is
checked: token rows + LoRA (and rows alone, and hook adapters) train while the quantized
weights stay bit-identical; the run directory records the quantization and loading
re-quantizes the base identically; the merged export is a de-quantised float32 checkpoint
whose logits match the quantized model (NF4: rounding; LLM.int8: its activation
quantization); the guards; and the planner's price of the quantized weights against the
loaded tensors. GPU-only parts (bf16 compute, the paged optimizer) are skipped without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tiny import tiny_model, tiny_tokenizer
from tokengraft.api import export_merged, load_graft, train
from tokengraft.cli.main import main
from tokengraft.config import apply_overrides, recipe_from_dict, validate_recipe
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import load_model
from tokengraft.planner import plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason='bitsandbytes is not installed (pip install -e ".[quant]"; the test extra has it)')
GPU = pytest.mark.skipif(not torch.cuda.is_available(),
                         reason="needs a CUDA GPU: bf16 compute and paged optimizers are GPU-only (never claimed tested on CPU)")

TOKEN = "<PASS>"
LORA = {"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}
# llama: tied embeddings; qwen2: untied; gpt_neox: untied with fused qkv; gpt2: tied, Conv1D layers.
RUNS = [("llama", "4bit"), ("qwen2", "4bit"), ("gpt_neox", "4bit"), ("gpt2", "4bit"), ("llama", "8bit"),
        ("qwen2", "8bit")]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model per family, shared by the module (quantization happens on load)."""
    out = {}
    for family in sorted({f for f, _ in RUNS}):
        directory = tmp_path_factory.mktemp(family)
        tiny_model(family).save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
        out[family] = directory
    return out


def write_data(root: Path) -> Path:
    rows = [{"prompt": f"question {i} about the cats", "completion": TOKEN if i % 3 == 0 else f"answer {i} is near"}
            for i in range(16)]
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def quant_recipe(root: Path, model_dir: Path, kind: str, methods: list[dict[str, Any]] | None = None, **model: Any):
    raw = {"seed": 3, "task": "generic",
           "model": {"name": str(model_dir), "device": "cpu", "quantization": kind, **model},
           "tokens": {"add": [TOKEN]}, "methods": [LORA] if methods is None else methods,
           "data": {"train": str(write_data(root)), "max_length": 64, "validation_fraction": 0.25},
           "train": {"max_steps": 3, "batch_size": 4, "save_steps": 0, "logging_steps": 1, "eval_steps": 2,
                     "warmup_ratio": 0.0, "lr": 1e-2, "token_lr": 1e-2, "save_total_limit": None}}
    recipe = recipe_from_dict(raw)
    validate_recipe(recipe)
    return recipe


def quantized_state(model: Any) -> dict[str, torch.Tensor]:
    """Every tensor that makes up the quantized weights: codes, absmax, nested constants, int8 row scales."""
    import bitsandbytes as bnb

    out: dict[str, torch.Tensor] = {}
    for name, module in unwrap_peft(model).named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            out[f"{name}.weight"] = module.weight.data.clone()
            out[f"{name}.absmax"] = state.absmax.clone()
            if state.nested:
                out[f"{name}.nested_absmax"] = state.state2.absmax.clone()
                out[f"{name}.offset"] = state.offset.clone()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            out[f"{name}.weight"] = module.weight.data.clone()
            scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            out[f"{name}.SCB"] = scb.clone()
    return out


class Watch(TrainerCallback):
    """Snapshots what must stay (quantized weights) and what must move (rows, LoRA B, adapters) around training."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.trainable_before: dict[str, torch.Tensor] = {}
        self.trainable_after: dict[str, torch.Tensor] = {}
        self.flag_during_training: bool | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = quantized_state(model)
        self.trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.flag_during_training = "_hf_peft_config_loaded" in unwrap_peft(model).__dict__

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = quantized_state(model)
        self.trainable_after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


_RUN_CACHE: dict[tuple[str, str], dict[str, Any]] = {}


@pytest.fixture
def trained(model_dirs, tmp_path_factory):
    """Train each (family, kind) of RUNS once per session (rows + LoRA, an evaluation in between)."""

    def get(family: str, kind: str) -> dict[str, Any]:
        if (family, kind) not in _RUN_CACHE:
            root = tmp_path_factory.mktemp(f"{family}-{kind}")
            methods = [{**LORA, "targets": "all_linear"}] if family == "gpt2" else None
            recipe = quant_recipe(root, model_dirs[family], kind, methods)
            watch = Watch()
            result = train(recipe, root / "run", quiet=True, callbacks=[watch])
            _RUN_CACHE[family, kind] = {"root": root, "run": root / "run", "result": result, "watch": watch}
        return _RUN_CACHE[family, kind]

    return get


def probe_ids() -> torch.Tensor:
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [TOKEN]})
    text = f"<s>user\nquestion 7 about the cats</s>\n<s>assistant\n{TOKEN} answer 3</s>"
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(input_ids=ids).logits.float()


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family,kind", [("llama", "4bit"), ("qwen2", "8bit")])
def test_load_quantizes_the_block_linears_only_and_freezes(model_dirs, family: str, kind: str) -> None:
    import bitsandbytes as bnb

    from tokengraft.quantization import QuantSpec, is_quantized, spec_of

    spec = QuantSpec(kind)
    model, _ = load_model(str(model_dirs[family]), device="cpu", quantization=spec)
    layer = bnb.nn.Linear4bit if kind == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(model.model.layers[0].self_attn.q_proj, layer)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # the head is never quantized (we pass no skip list)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == (family == "llama")
    assert not any(p.requires_grad for p in model.parameters())  # from_pretrained left embed/norms/head trainable
    assert is_quantized(model) and spec_of(model) == spec


def test_an_eval_forward_leaves_4bit_weights_alone_and_matches_train_mode(model_dirs) -> None:
    """bitsandbytes 0.50.2 repacks 4-bit weights in place on the first no-grad forward on AVX512-BF16 CPUs
    (bf16 compute, no autograd afterwards); the loader turns that off, so eval = train and nothing moves."""
    from tokengraft.quantization import QuantSpec

    model, _ = load_model(str(model_dirs["qwen2"]), device="cpu", quantization=QuantSpec("4bit"))
    before = quantized_state(model)
    ids = probe_ids().clamp(max=255)
    evaluated = logits(model, ids)
    model.train()
    trained_mode = model(input_ids=ids).logits.detach()
    after = quantized_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
                   for m in model.modules() if hasattr(getattr(m, "weight", None), "quant_state"))
    assert torch.equal(evaluated, trained_mode)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("family,kind", RUNS)
def test_rows_and_lora_train_while_quantized_weights_stay_bit_identical(trained, family: str, kind: str) -> None:
    run = trained(family, kind)
    watch, result = run["watch"], run["result"]
    assert watch.before and set(watch.before) == set(watch.after)
    changed = [k for k in watch.before if not torch.equal(watch.before[k], watch.after[k])]
    assert not changed, changed[:3]
    rows = [n for n in watch.trainable_before if n.endswith(".rows")]
    lora_b = [n for n in watch.trainable_before if "lora_B" in n]
    assert rows and lora_b
    assert all(not torch.equal(watch.trainable_before[n], watch.trainable_after[n]) for n in rows + lora_b)
    assert all(p.dtype == torch.float32 for p in result.graft.rows.parameters())  # rows stay fp32 on the quantized base
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any("eval_loss" in h for h in result.log_history)  # an evaluation (no-grad, eval mode) ran in between


@pytest.mark.parametrize("methods", [[], [{"type": "adapter", "bottleneck": 8}]], ids=["rows-only", "hook-adapters"])
def test_rows_alone_and_hook_adapters_train_on_a_4bit_base(model_dirs, tmp_path, methods) -> None:
    """Without PEFT the Trainer would refuse a "purely quantized model": our rows / adapters are declared as the
    trainable adapters for its constructor only (the flag is gone by the time training starts)."""
    watch = Watch()
    result = train(quant_recipe(tmp_path, model_dirs["llama"], "4bit", methods), tmp_path / "run", quiet=True,
                   callbacks=[watch])
    assert watch.flag_during_training is False
    assert all(torch.equal(watch.before[k], watch.after[k]) for k in watch.before)
    moved = [n for n in watch.trainable_before if not torch.equal(watch.trainable_before[n], watch.trainable_after[n])]
    assert any(n.endswith(".rows") for n in moved)
    if methods:
        assert any("tokengraft_adapters" in n and n.endswith("up.weight") for n in moved)
    assert result.steps == 3


# ----------------------------------------------------------------------------- run directory and export


@pytest.mark.parametrize("family,kind", RUNS)
def test_the_run_records_its_quantization_and_loads_requantized(trained, family: str, kind: str) -> None:
    run = trained(family, kind)
    meta = json.loads((run["run"] / "graft.json").read_text())
    record = meta["quantization"]
    assert record["kind"] == kind and record["library"] == "bitsandbytes"
    if kind == "4bit":
        assert (record["quant_type"], record["double_quant"], record["compute_dtype"]) == ("nf4", True, "float32")
    g = load_graft(run["run"], device="cpu")  # the fingerprint check passes only if it re-quantized identically
    assert getattr(unwrap_peft(g.model), f"is_loaded_in_{kind}")
    ids = probe_ids()
    assert torch.equal(logits(g.model, ids), logits(run["result"].graft.model, ids))


@pytest.mark.parametrize("family,kind", RUNS)
def test_merged_export_is_a_dequantized_fp32_checkpoint_close_to_the_quantized_model(trained, family: str,
                                                                                     kind: str) -> None:
    run = trained(family, kind)
    out = run["root"] / "merged"
    export_merged(run["run"], out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    plain = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no tokengraft, no bitsandbytes layers
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    ids = probe_ids()
    quantized = logits(run["result"].graft.model, ids)
    diff = (logits(plain, ids) - quantized).abs().max().item()
    report = json.loads((out / "tokengraft_dequantization.json").read_text())
    assert report["merged_dtype"] == "float32" and report["positions"] > 0
    if kind == "4bit":  # NF4 de-quantises exactly in fp32: only summation order differs
        assert diff < 1e-4 and report["max_abs_logit_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    else:  # LLM.int8 also quantizes activations at inference; training on CPU used de-quantised weights
        assert diff < 5e-2 and report["max_abs_logit_diff"] < 5e-2


def test_export_cli_prints_the_measured_distance(trained, capsys) -> None:
    run = trained("llama", "4bit")
    out = run["root"] / "merged-cli"
    assert main(["export", str(run["run"]), "--merged", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "de-quantised base (4bit nf4 + double quant, float32 compute) written as float32" in printed
    assert "max |diff|" in printed and "greedy top-1 agreement 100.0 %" in printed


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lora_adapter_export_writes_a_dequantized_base(trained, family: str) -> None:
    """export --lora-adapter: the base is written de-quantised (float32) and the plain LoRA adapter on it gives
    the quantized run's logits (PEFT on plain transformers, no bitsandbytes layers)."""
    from peft import PeftModel

    from tokengraft.export.lora_adapter import export_lora_adapter

    run = trained(family, "4bit")
    done = export_lora_adapter(run["run"], run["root"] / "served", visible_tokens=[])
    config = json.loads((done.base / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    base = AutoModelForCausalLM.from_pretrained(done.base)
    assert all(type(m).__name__ != "Linear4bit" for m in base.modules())
    served = PeftModel.from_pretrained(base, str(done.adapter))
    ids = probe_ids()
    assert (logits(served, ids) - logits(run["result"].graft.model, ids)).abs().max() < 1e-4


def test_gguf_export_from_a_quantized_run(model_dirs, tmp_path) -> None:
    """--gguf goes through the same de-quantised merge: transformers' GGUF reader gets the merged model back."""
    from test_gguf_export import byte_level_tokenizer

    from tokengraft.core.graft import TokenSettings, graft
    from tokengraft.export.gguf import export_gguf
    from tokengraft.export.merged import merge_graft
    from tokengraft.quantization import QuantSpec
    from tokengraft.rundir import save_graft

    base = tmp_path / "base"
    tiny_model("llama", vocab_size=270).save_pretrained(base)
    byte_level_tokenizer().save_pretrained(base)
    model, tokenizer = load_model(str(base), device="cpu", quantization=QuantSpec("4bit"))
    g = graft(model, tokenizer, TokenSettings(add=[TOKEN], special=True), [LORA], verbose=False)
    with torch.no_grad():
        for name, p in g.model.named_parameters():
            if "lora_B" in name or name.endswith(".rows"):
                p.add_(0.05 * torch.randn_like(p))
    save_graft(g, tmp_path / "run", base_spec=str(base))
    out = export_gguf(tmp_path / "run", tmp_path / "model.gguf", tensor_type="f32")
    merged = merge_graft(load_graft(tmp_path / "run", device="cpu", dtype="float32"))
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32)
    ids = tokenizer(f"the tin {TOKEN}", return_tensors="pt")["input_ids"]
    assert torch.allclose(logits(merged, ids), logits(loaded, ids), atol=1e-4)


# ----------------------------------------------------------------------------- guards


def test_a_quantized_base_split_over_cpu_and_disk_is_refused(model_dirs, tmp_path) -> None:
    from tokengraft.core.graft import TokenSettings, graft
    from tokengraft.core.guard import preflight
    from tokengraft.quantization import QuantSpec

    config = QuantSpec("4bit").bnb_config()
    config.llm_int8_enable_fp32_cpu_offload = True
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"], quantization_config=config, device_map=device_map,
                                                 offload_folder=str(tmp_path / "offload"), dtype=torch.float32)
    g = graft(model, tiny_tokenizer(), TokenSettings(add=["<A>"], special=True), [], verbose=False)
    with pytest.raises(TokengraftError, match="split across cpu, disk: training a 4-bit/8-bit model with CPU or disk "
                                              "offload is not supported"):
        preflight(g)


@pytest.mark.parametrize("change,message", [
    ({"task": "classification"}, "not supported for task classification"),
    ({"model": {"name": "/nowhere/base.gguf"}}, "needs a Hugging Face model directory or hub id, not a GGUF file"),
    ({"model": {"device": "mps"}}, "needs model.device cpu or cuda"),
    ({"methods": [{"type": "freeze", "mode": "attention_only", "top_k": 1}]},
     "stores as integers that cannot train; use lora"),
    ({"train": {"optimizer": "paged_adamw_8bit"}}, "paged_adamw_8bit needs a CUDA GPU"),
])
def test_recipes_that_cannot_train_on_a_quantized_base_are_refused(model_dirs, tmp_path, change, message) -> None:
    recipe = quant_recipe(tmp_path, model_dirs["llama"], "4bit")
    raw = recipe.to_dict()
    for section, value in change.items():
        raw[section] = {**raw[section], **value} if isinstance(value, dict) else value
    if raw["task"] == "classification":
        raw["tokens"] = {"add": []}
    with pytest.raises(TokengraftError, match=message):
        validate_recipe(recipe_from_dict(raw))


def test_freeze_never_unfreezes_quantized_weights(model_dirs) -> None:
    from tokengraft.core.arch import describe
    from tokengraft.methods import apply_methods
    from tokengraft.quantization import QuantSpec

    model, _ = load_model(str(model_dirs["qwen2"]), device="cpu", quantization=QuantSpec("4bit"))
    with pytest.raises(TokengraftError, match="includes quantized base weights"):
        apply_methods(model, describe(model), [{"type": "freeze", "mode": "top_k_blocks", "top_k": 1}])
    _, state = apply_methods(model, describe(model), [{"type": "freeze", "mode": "bitfit", "top_k": 1}])
    assert state.num_trainable > 0  # qwen2's q/k/v biases stay float beside the 4-bit weights


def test_ignored_and_aliased_settings(model_dirs, tmp_path) -> None:
    recipe = quant_recipe(tmp_path, model_dirs["llama"], "8bit", quant_type="fp4")
    assert any("model.quant_type applies to 4bit only" in n for n in validate_recipe(recipe))
    plain = apply_overrides(recipe, ["model.quantization=none"])
    assert any("model.quant_type is ignored" in n for n in validate_recipe(plain))
    with pytest.raises(TokengraftError, match="did you mean 'quant_type'"):
        recipe_from_dict({"model": {"bnb_4bit_quant_type": "nf4"}})
    assert "(4bit nf4+dq)" in quant_recipe(tmp_path, model_dirs["llama"], "4bit").summary()


def test_missing_bitsandbytes_is_one_line_naming_the_extra(model_dirs, tmp_path, monkeypatch, capsys) -> None:
    recipe_path = tmp_path / "recipe.yaml"
    quant_recipe(tmp_path, model_dirs["llama"], "4bit").save(recipe_path)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    assert main(["train", str(recipe_path), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ('tokengraft: error: model.quantization: 4bit needs bitsandbytes, which is not installed: '
                   'pip install -e ".[quant]"')
    assert not (tmp_path / "run" / "graft.json").exists()


# ----------------------------------------------------------------------------- planner


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
@pytest.mark.parametrize("kind,double_quant", [("4bit", True), ("4bit", False), ("8bit", True)])
def test_planner_prices_quantized_weights_as_loaded(model_dirs, tmp_path, family, kind, double_quant) -> None:
    """The plan's weights line equals the bytes of the loaded model's tensors: packed codes, absmax (uint8 +
    nested constants with double quantisation), code books, int8 row scales, and the float rest."""
    from tokengraft.quantization import QuantSpec, storage_bytes

    recipe = quant_recipe(tmp_path, model_dirs[family], kind, double_quant=double_quant)
    planned = plan(recipe, device="cpu", seq_len=16, supervised_tokens=8)
    model, _ = load_model(str(model_dirs[family]), device="cpu",
                          quantization=QuantSpec(kind, double_quant=double_quant))
    measured = storage_bytes(model)
    assert planned.item("weights") == measured["quantized"] + measured["plain"]
    assert planned.loaded_weights == planned.item("weights")


def test_planner_moves_with_quantization(model_dirs, tmp_path) -> None:
    recipe = quant_recipe(tmp_path, model_dirs["qwen2"], "8bit", methods=[])  # LoRA would keep the same inputs itself
    args = dict(device="cpu", seq_len=32, supervised_tokens=16)
    p8 = plan(recipe, **args)
    p4 = plan(apply_overrides(recipe, ["model.quantization=4bit"]), **args)
    p0 = plan(apply_overrides(recipe, ["model.quantization=none"]), **args)
    assert p4.item("weights") < p8.item("weights") < p0.item("weights")
    # LLM.int8 keeps each linear's input for backward: more activations than NF4 (which keeps none of them)
    assert p8.item("activations") > p4.item("activations") == p0.item("activations")
    assert p4.item("dequantized_weight") == 64 * 128 * 4 and p0.item("dequantized_weight") == 0
    assert p4.item("token_rows") == p0.item("token_rows")  # the rows are fp32 whatever the base
    # 200 rows x 64 = 12,800 weights: past bitsandbytes' min_8bit_size (4096), so its moments are 8-bit
    gpu = dict(device="cuda", seq_len=32, supervised_tokens=16, new_tokens=200)
    paged = plan(apply_overrides(recipe, ["model.quantization=4bit", "train.optimizer=paged_adamw_8bit"]), **gpu)
    adamw = plan(apply_overrides(recipe, ["model.quantization=4bit"]), **gpu)
    assert paged.item("optimizer_state") == 2 * (200 * 64 + 4 * 50) * 2  # two sides, one byte + absmax/256 per moment
    assert adamw.item("optimizer_state") == 2 * 200 * 64 * 4 * 2


# ----------------------------------------------------------------------------- GPU only


@GPU
def test_auto_compute_dtype_is_bf16_on_a_capable_gpu_and_trains(model_dirs, tmp_path) -> None:
    from tokengraft.quantization import resolve_compute_dtype

    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert resolve_compute_dtype("auto", torch.device("cuda")) == expected
    recipe = apply_overrides(quant_recipe(tmp_path, model_dirs["llama"], "4bit"), ["model.device=cuda"])
    result = train(recipe, tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / "graft.json").read_text())["quantization"]["compute_dtype"] == expected
    assert result.steps == 3


@GPU
def test_paged_adamw_8bit_trains_on_a_gpu(model_dirs, tmp_path) -> None:
    recipe = apply_overrides(quant_recipe(tmp_path, model_dirs["llama"], "4bit"),
                             ["model.device=cuda", "train.optimizer=paged_adamw_8bit"])
    watch = Watch()
    train(recipe, tmp_path / "run", quiet=True, callbacks=[watch])
    assert any(not torch.equal(watch.trainable_before[n], watch.trainable_after[n]) for n in watch.trainable_before)


def test_cpu_resolves_auto_compute_to_fp32_and_refuses_paged_optimizers() -> None:
    from tokengraft.quantization import check_optimizer_device, resolve_compute_dtype

    assert resolve_compute_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_compute_dtype("bf16", torch.device("cpu")) == "bfloat16"
    with pytest.raises(TokengraftError, match="needs a CUDA GPU"):
        check_optimizer_device("paged_adamw_8bit", torch.device("cpu"))
