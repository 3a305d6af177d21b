"""The training engine (train.py) end to end on tiny models: masking, the supervised-only head,
resume, atomic checkpoints, the non-finite stop, run directories, snapshots, optimiser options.

Every run here is a real ``train()`` on a tiny random model saved to a temporary
directory, with JSONL data written by the test; nothing is mocked. Extra behaviour
is observed through ordinary ``TrainerCallback`` objects passed to ``train``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import tokengraft
from tokengraft.api import train
from tokengraft.cli.main import main
from tokengraft.config import recipe_from_dict, validate_recipe
from tokengraft.constants import IGNORE_INDEX
from tokengraft.data import Collator, encode_examples
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.training.checkpoints import (COMPLETE_MARKER, complete_checkpoints, discard_incomplete_checkpoints,
                                             rotate_checkpoints)
from tokengraft.training.lm import full_logits, supervised_logits
from tokengraft.training.prepare import prepare_data
from tiny import tiny_model, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EOS = 2  # tiny tokenizer: </s> (also the chat template's end-of-turn)
TOKEN = "<PASS>"


# ----------------------------------------------------------------------------- helpers


def save_tiny(directory: Path, family: str = "llama", with_chat_template: bool = True) -> Path:
    """A tiny random model + tokenizer as a local HF directory (what recipes name in model.name)."""
    tiny_model(family).save_pretrained(directory)
    tiny_tokenizer(with_chat_template=with_chat_template).save_pretrained(directory)
    return directory


def example_rows(n: int = 16, token: str | None = TOKEN) -> list[dict[str, str]]:
    """Prompt/completion rows; every third completion is the new token."""
    rows = []
    for i in range(n):
        answer = token if (token and i % 3 == 0) else f"answer {i} is near"
        rows.append({"prompt": f"question {i} about the cats", "completion": answer})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_recipe(root: Path, model_dir: Path, *, rows: list[dict[str, str]] | None = None,
                methods: list[dict[str, Any]] | None = None, tokens: dict[str, Any] | None = None,
                data: dict[str, Any] | None = None, **train: Any):
    path = write_jsonl(root / "train.jsonl", rows if rows is not None else example_rows())
    settings = {"max_steps": 4, "batch_size": 4, "save_steps": 0, "logging_steps": 1, "eval_steps": 0,
                "warmup_ratio": 0.0, "save_total_limit": None}
    settings.update(train)
    raw = {"seed": 3, "task": "generic", "model": {"name": str(model_dir), "device": "cpu"},
           "tokens": tokens or {"add": [TOKEN]},
           "methods": methods if methods is not None else [],
           "data": {"train": str(path), "max_length": 64, "validation_fraction": 0.0, **(data or {})},
           "train": settings}
    recipe = recipe_from_dict(raw)
    validate_recipe(recipe)
    return recipe


LORA = {"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.1}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("llama"))


class HeadRows(TrainerCallback):
    """Records the input shape of every head call made while the model trains."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.handle = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        head = unwrap_peft(model).get_output_embeddings()

        def record(module, inputs, output):  # a forward hook sees the inputs the head actually ran on
            self.shapes.append(tuple(inputs[0].shape))

        self.handle = head.register_forward_hook(record)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None:
            self.handle.remove()


class StopAt(TrainerCallback):
    """Stops training after the optimiser step ``step`` (like a user pressing Ctrl-C after a save)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class FirstStep(TrainerCallback):
    """Records the global step of the first optimiser step this run executes."""

    def __init__(self) -> None:
        self.first: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.first is None:
            self.first = state.global_step


# ----------------------------------------------------------------------------- masking


def independent_ids(tokenizer, prompt: str, completion: str, chat: bool) -> tuple[list[int], list[int]]:
    """Prompt and completion ids computed without tokengraft.data: the template (or plain form) by hand."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:  # the documented plain format (data.py): "Question: ...\nAnswer: ..." + EOS, no space before "<"
        prompt_ids = tokenizer(f"Question: {prompt}\nAnswer:", add_special_tokens=True)["input_ids"]
        completion = completion if completion.startswith("<") else " " + completion
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [EOS]
    return list(prompt_ids), list(completion_ids)


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "plain"])
def test_prompt_masked_completion_and_end_of_turn_trained(tmp_path, chat):
    model_dir = save_tiny(tmp_path / "model", with_chat_template=chat)
    recipe = make_recipe(tmp_path, model_dir)
    model, tokenizer = tokengraft.load_model(str(model_dir), device="cpu")
    tokenizer.add_tokens([TOKEN], special_tokens=True)
    # The same calls train() makes: prepare_data -> encode_examples -> Collator.
    data = prepare_data(recipe, tmp_path / "run", tokenizer, model)
    items, stats = encode_examples(data.train, tokenizer, recipe.data.max_length, new_tokens=[TOKEN])
    batch = Collator(tokenizer)(items[:4])
    for i, row in enumerate(example_rows()[:4]):
        prompt_ids, completion_ids = independent_ids(tokenizer, row["prompt"], row["completion"], chat)
        n = len(prompt_ids) + len(completion_ids)
        assert batch["input_ids"][i, :n].tolist() == prompt_ids + completion_ids
        assert batch["labels"][i, :n].tolist() == [IGNORE_INDEX] * len(prompt_ids) + completion_ids
        assert batch["labels"][i, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][i, n:].eq(0).all()
    assert completion_ids[-1] == EOS  # the end-of-turn token is a training target: the model learns to stop
    expected = sum(len(independent_ids(tokenizer, r["prompt"], r["completion"], chat)[1]) for r in example_rows())
    assert stats.supervised_tokens == expected


def test_training_head_sees_only_completion_tokens(tmp_path, llama_dir):
    """In a real run the head is called on [n_supervised, hidden] rows: never on prompt positions."""
    rows = example_rows(12)
    recipe = make_recipe(tmp_path, llama_dir, rows=rows, max_steps=-1, epochs=1, batch_size=4)
    spy = HeadRows()
    result = train(recipe, tmp_path / "run", quiet=True, callbacks=[spy])
    tokenizer = result.graft.tokenizer
    expected = [len(independent_ids(tokenizer, r["prompt"], r["completion"], True)[1]) for r in rows]
    assert result.steps == 3 and len(spy.shapes) == 3
    assert all(len(shape) == 2 and shape[1] == 64 for shape in spy.shapes)  # [n, H], no sequence axis
    assert sum(shape[0] for shape in spy.shapes) == sum(expected)
    stats = json.loads((tmp_path / "run" / "dataset_stats.json").read_text())
    assert stats["train"]["supervised_tokens"] == sum(expected)


# ----------------------------------------------------------------------------- supervised-only head


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gemma3_text"])
def test_supervised_head_loss_equals_full_loss(family):
    """Same loss and gradients as the all-positions path, with the rows overlay (and LoRA on llama)."""
    model, tokenizer = tiny_model(family), tiny_tokenizer()
    methods = [dict(LORA, dropout=0.0)] if family == "llama" else []
    g = graft(model, tokenizer, TokenSettings(add=[TOKEN], special=True), methods, seed=0, verbose=False)
    rows = [{"prompt": "what is up", "completion": f"{TOKEN} sky"}, {"prompt": "a much longer question here",
                                                                    "completion": "no"}]
    items, _ = encode_examples(rows, tokenizer, 64, new_tokens=[TOKEN])
    batch = Collator(tokenizer)(items)  # right-padded, different lengths
    assert batch["attention_mask"].eq(0).any()
    n_supervised = int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum())
    head = g.hf_model.get_output_embeddings()
    seen: list[tuple[int, ...]] = []
    handle = head.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))

    def loss_and_grads(select):
        g.model.zero_grad()
        logits, targets = select(g.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in g.model.parameters() if p.requires_grad]

    sup_loss, sup_grads = loss_and_grads(supervised_logits)
    assert seen == [(n_supervised, len(tokenizer))]  # only supervised rows reached the head
    full_loss, full_grads = loss_and_grads(full_logits)
    handle.remove()
    g.model.zero_grad()
    plain = g.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert abs(sup_loss.item() - full_loss.item()) < 1e-5
    assert abs(sup_loss.item() - plain.item()) < 1e-5
    assert len(sup_grads) == len(full_grads) > 0
    for a, b in zip(sup_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- resume and checkpoints


def trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors = {f"rows.{k}": v for k, v in load_file(run / "rows.safetensors").items()}
    if (run / "methods.safetensors").exists():
        tensors.update({f"methods.{k}": v for k, v in load_file(run / "methods.safetensors").items()})
    return tensors


def test_resume_equals_uninterrupted(tmp_path, llama_dir):
    """Stop after step 2's checkpoint, resume: final rows and LoRA weights are bit-identical (CPU).

    LoRA dropout 0.1 makes the result depend on the restored RNG state, and 12 rows at
    batch 4 put the resume point inside the first epoch and the end in the second.
    """
    recipe = make_recipe(tmp_path, llama_dir, rows=example_rows(12), methods=[LORA], max_steps=4, save_steps=2)
    train(recipe, tmp_path / "A", quiet=True)
    train(recipe, tmp_path / "B", quiet=True, callbacks=[StopAt(2)])
    assert [p.name for p in complete_checkpoints(tmp_path / "B")] == ["checkpoint-2"]
    first = FirstStep()
    result = train(recipe, tmp_path / "B", resume=True, quiet=True, callbacks=[first])
    assert first.first == 3 and result.steps == 4
    a, b = trained_tensors(tmp_path / "A"), trained_tensors(tmp_path / "B")
    assert set(a) == set(b) and any(k.startswith("methods.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [h["step"] for h in result.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4]  # the resumed history continues the interrupted one


def test_resume_skips_an_incomplete_checkpoint(tmp_path, llama_dir):
    """A checkpoint without the marker (a kill mid-save) is discarded; resume uses the previous one.

    Row snapshots taken after the checkpoint are dropped too: those steps run again.
    """
    recipe = make_recipe(tmp_path, llama_dir, max_steps=4, save_steps=2, snapshot_steps=1)
    train(recipe, tmp_path / "run", quiet=True)
    (tmp_path / "run" / "graft.json").unlink()  # killed mid-save: the final run directory was never written
    last = tmp_path / "run" / "checkpoint-4"
    (last / COMPLETE_MARKER).unlink()
    rows_file = last / "rows.safetensors"
    rows_file.write_bytes(rows_file.read_bytes()[:40])  # a half-written file
    assert complete_checkpoints(tmp_path / "run") == [tmp_path / "run" / "checkpoint-2"]
    first = FirstStep()
    result = train(recipe, tmp_path / "run", resume=True, quiet=True, callbacks=[first])
    assert first.first == 3 and result.steps == 4
    assert (last / COMPLETE_MARKER).is_file()  # rewritten by the resumed run, whole this time
    assert torch.equal(load_file(rows_file)["input"], load_file(tmp_path / "run" / "rows.safetensors")["input"])
    drift = (tmp_path / "run" / "snapshots" / "drift.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in drift] == [1, 2, 3, 4]  # steps 3-4 once, from the resumed run


def test_resume_without_a_complete_checkpoint_is_refused(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir)
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(TokengraftError, match="no complete checkpoint"):
        train(recipe, tmp_path / "run", resume=True, quiet=True)
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_checkpoint_listing_discarding_and_rotation(tmp_path):
    for step, complete in [(2, True), (5, False), (10, True), (30, True)]:
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        if complete:
            (path / COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()  # not a step: never listed
    (tmp_path / "checkpoint-7").write_text("a file, not a checkpoint")
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-2", "checkpoint-10", "checkpoint-30"]  # numeric order
    assert names(rotate_checkpoints(tmp_path, 2)) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-5").is_dir()  # incomplete ones are not counted by rotation
    assert names(discard_incomplete_checkpoints(tmp_path)) == ["checkpoint-5"]
    assert (tmp_path / "checkpoint-x").is_dir() and (tmp_path / "checkpoint-7").is_file()  # not ours to delete
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-10", "checkpoint-30"]
    assert rotate_checkpoints(tmp_path, None) == []


# ----------------------------------------------------------------------------- non-finite stop


def all_finite(checkpoint: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(checkpoint / "rows.safetensors").values() if t.is_floating_point())


class ScaleLR(TrainerCallback):
    """Multiplies every learning rate once training starts: a divergence no recipe is allowed to ask for
    (validate refuses learning rates above config.MAX_LR), to reach the guards behind it."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lr_scheduler.base_lrs = [lr * self.factor for lr in lr_scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] *= self.factor


def test_huge_token_lr_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path, llama_dir):
    """token_lr x 1e27 (1e30): step 1's update is finite but huge, step 2's gradients overflow and are refused."""
    recipe = make_recipe(tmp_path, llama_dir, max_steps=6, save_steps=1)
    with pytest.raises(TokengraftError, match=r"gradient became non-finite at step 2;.*checkpoint-1") as info:
        train(recipe, tmp_path / "run", quiet=True, callbacks=[ScaleLR(1e27)])
    assert "\n" not in str(info.value)  # one line for the CLI
    done = complete_checkpoints(tmp_path / "run")
    assert [p.name for p in done] == ["checkpoint-1"]
    assert all_finite(done[-1])


class PoisonRows(TrainerCallback):
    """Writes NaN into the token rows after a given step (a corrupted value from outside the optimiser)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                unwrap_peft(model).get_input_embeddings().rows.fill_(float("nan"))


def test_nan_loss_stops_before_the_update(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir, max_steps=6, save_steps=2)
    with pytest.raises(TokengraftError, match=r"loss became nan at step 4.*checkpoint-2"):
        train(recipe, tmp_path / "run", quiet=True, callbacks=[PoisonRows(3)])
    done = complete_checkpoints(tmp_path / "run")
    assert [p.name for p in done] == ["checkpoint-2"] and all_finite(done[-1])
    assert not (tmp_path / "run" / "graft.json").exists()  # a failed run leaves no final artifacts behind


# ----------------------------------------------------------------------------- run directory


def test_run_directory_is_complete_and_loads(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir, methods=[dict(LORA, dropout=0.0)], max_steps=3, eval_steps=3,
                         data={"validation_fraction": 0.25})
    result = train(recipe, tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for name in ("graft.json", "rows.safetensors", "config.yaml", "tokenizer.json", "tokenizer_config.json",
                 "log_history.json", "loss.png", "dataset_stats.json", "methods.safetensors"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "graft.json").read_text())
    assert meta["steps"] == 3 and meta["world_size"] == 1 and meta["base_model"] == str(llama_dir)
    history = json.loads((run / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    evals = [h for h in history if "eval_loss" in h]  # evaluation runs through the same supervised-only loss
    assert [h["step"] for h in evals] == [3] and 0 < evals[0]["eval_loss"] < 20
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert recipe_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == recipe

    model, tokenizer = tokengraft.load(run, device="cpu")
    token_id = tokenizer.convert_tokens_to_ids(TOKEN)
    ids = torch.tensor([[5, 40, token_id, 41, 7]])
    with torch.no_grad():
        expected = result.graft.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert got.shape[-1] == len(tokenizer)
    torch.testing.assert_close(got, expected)
    initial = result.graft.report.init_input
    assert not torch.equal(load_file(run / "rows.safetensors")["input"], initial.float())  # the rows trained


def test_guard_refuses_a_new_token_absent_from_the_data(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir, rows=example_rows(token=None))
    with pytest.raises(TokengraftError, match="never occur in the training data"):
        train(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "graft.json").exists()


# ----------------------------------------------------------------------------- snapshots


def test_snapshots_drift_and_checkpoint_limit(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir, max_steps=4, snapshot_steps=2, save_steps=2, save_total_limit=1)
    train(recipe, tmp_path / "run", quiet=True)
    checkpoints = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]  # save_total_limit keeps the newest complete checkpoint
    snaps = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snaps.glob("*.safetensors")) == ["step-2.safetensors", "step-4.safetensors"]
    lines = [json.loads(x) for x in (snaps / "drift.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    for line in lines:
        stats = line["tokens"][TOKEN]
        assert stats["norm"] > 0 and -1.0 <= stats["cos_to_init"] < 1.0
        assert len(stats["nearest"]) == 3 and all(isinstance(t, str) for t in stats["nearest"])
    final = load_file(tmp_path / "run" / "rows.safetensors")
    step4 = load_file(snaps / "step-4.safetensors")
    assert torch.equal(step4["input"], final["input"]) and torch.equal(step4["ids"], final["ids"])
    assert not torch.equal(load_file(snaps / "step-2.safetensors")["input"], final["input"])
    assert (tmp_path / "run" / "row_drift.png").is_file()


# ----------------------------------------------------------------------------- optimiser options


def checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def test_gradient_checkpointing_matches_plain_training_and_linear_schedule(tmp_path, llama_dir):
    """Recomputing activations changes memory, not the math: same rows as without it."""
    settings = dict(methods=[dict(LORA, dropout=0.0)], max_steps=3, scheduler="linear", token_lr=1e-3)
    plain = make_recipe(tmp_path, llama_dir, **settings)
    checkpointed = make_recipe(tmp_path, llama_dir, gradient_checkpointing=True, **settings)
    a = train(plain, tmp_path / "plain", quiet=True)
    b = train(checkpointed, tmp_path / "gc", quiet=True)
    lrs = [h["learning_rate"] for h in a.log_history if "learning_rate" in h]
    assert lrs == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])  # linear (cosine would give 7.5e-4, 2.5e-4)
    assert checkpointing(b.graft.hf_model) and not checkpointing(a.graft.hf_model)
    for key, value in trained_tensors(tmp_path / "plain").items():
        torch.testing.assert_close(trained_tensors(tmp_path / "gc")[key], value, rtol=1e-5, atol=1e-7)


def test_adafactor_trains_with_factored_state(tmp_path, llama_dir):
    recipe = make_recipe(tmp_path, llama_dir, methods=[dict(LORA, dropout=0.0)], max_steps=2, save_steps=2,
                         optimizer="adafactor")
    result = train(recipe, tmp_path / "run", quiet=True)
    assert result.steps == 2
    state = torch.load(tmp_path / "run" / "checkpoint-2" / "optimizer.pt", weights_only=True)["state"]
    keys = set().union(*(s.keys() for s in state.values()))
    assert {"exp_avg_sq_row", "exp_avg_sq_col"} <= keys and "exp_avg" not in keys  # Adafactor, not AdamW
    rows = load_file(tmp_path / "run" / "rows.safetensors")["input"]
    assert torch.isfinite(rows).all() and not torch.equal(rows, result.graft.report.init_input.float())


class PaddingShare(TrainerCallback):
    """Counts the positions the model computes while it trains, and how many of them are padding."""

    def __init__(self) -> None:
        self.positions = self.padding = self.batches = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, args, kwargs):
            mask = kwargs["attention_mask"]
            self.batches += 1
            self.positions += mask.numel()
            self.padding += int((mask == 0).sum())

        model.register_forward_pre_hook(record, with_kwargs=True)


def test_group_by_length_pads_less_than_the_plain_shuffle(tmp_path, llama_dir):
    """Grouped batches hold examples of similar length, so a smaller share of the computed positions is padding.
    (transformers groups within mega-batches of up to 50 batches, and only with >= 4 batches' rows per group.)"""
    rows = [{"prompt": "question about the cats" + " and the dogs" * (i % 8), "completion": TOKEN if i % 3 == 0
             else f"answer {i}"} for i in range(64)]
    share = {}
    for grouped in (False, True):
        recipe = make_recipe(tmp_path, llama_dir, rows=rows, data={"max_length": 512}, max_steps=4, batch_size=4,
                             group_by_length=grouped)
        counts = PaddingShare()
        train(recipe, tmp_path / f"run-{grouped}", quiet=True, callbacks=[counts])
        assert counts.batches == 4
        share[grouped] = counts.padding / counts.positions
    assert share[True] < 0.75 * share[False]  # measured: 0.10 against 0.19
