"""Data parallelism: `accelerate launch` two CPU processes (gloo) through the real CLI.

The design: run the recipe with 2 processes x batch 2 and, in this process, the same
recipe with 1 process x batch 4. With the same seed, accelerate hands the two ranks
consecutive halves of the batch the single process would draw, so if the gradients
are all-reduced and the loss is normalised over all ranks' tokens, the trained rows
and LoRA weights match (up to float summation order) and so do the logged losses. An
unsynchronised or mis-scaled run cannot match. Ranks agreeing with each other is
checked inside `train` (it compares checksums of every trained tensor across ranks
and refuses to write the run directory otherwise; graft.json records world_size).

The tiny model is Qwen2 (untied embeddings) with gradient checkpointing, and the new
token occurs in only some rows: batches without it leave the input rows unused, the
case DDP refuses unless told to expect unused parameters.

Slow: three launches of two processes, each ~30-90 s on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokengraft.config import load_recipe
from tokengraft.api import train
from tokengraft.training.checkpoints import COMPLETE_MARKER
from tiny import tiny_model, tiny_tokenizer

RECIPE = """\
# tokengraft train recipe.yaml
seed: 5
task: generic
model: {{name: {model}, device: cpu}}
tokens: {{add: ["<PASS>"]}}
methods: [{{type: lora, targets: attention, r: 4, alpha: 8, dropout: 0.0}}]
data: {{train: {data}, max_length: 64, validation_fraction: 0.0}}
train: {{max_steps: 4, batch_size: 2, save_steps: 2, logging_steps: 1, eval_steps: 0, warmup_ratio: 0.0,
         save_total_limit: null, gradient_checkpointing: true}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, cwd: Path, program: tuple[str, ...] = ("-m", "tokengraft", "train")) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m tokengraft train ...` with no GPU visible.

    (`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is
    configured; `--multi_gpu` goes through torch.distributed.run, which on a machine
    without GPUs runs the processes on CPU with the gloo backend.) ``program`` may name
    a script instead of the CLI.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), *program, *args, "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def trained(run: Path) -> dict[str, torch.Tensor]:
    out = {f"rows.{k}": v for k, v in load_file(run / "rows.safetensors").items()}
    out.update({f"lora.{k}": v for k, v in load_file(run / "methods.safetensors").items()})
    return out


def losses(run: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    tiny_model("qwen2").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    rows = [{"prompt": f"question {i} about the cats", "completion": "<PASS>" if i % 5 == 0 else f"answer {i}"}
            for i in range(16)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "recipe.yaml").write_text(RECIPE.format(model=root / "model", data=root / "train.jsonl"))
    return root


@pytest.fixture(scope="module")
def ddp_run(workspace) -> Path:
    done = launch(str(workspace / "recipe.yaml"), "--output", str(workspace / "ddp"), cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    return workspace / "ddp"


def test_two_processes_write_one_complete_run_directory(ddp_run):
    meta = json.loads((ddp_run / "graft.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 4
    for name in ("rows.safetensors", "methods.safetensors", "config.yaml", "tokenizer.json", "log_history.json",
                 "loss.png", "dataset_stats.json"):
        assert (ddp_run / name).is_file(), name
    assert not list(ddp_run.glob(".saving-*"))  # no half-finished save left behind
    history = json.loads((ddp_run / "log_history.json").read_text())
    assert history[-1]["epoch"] == 1.0  # 16 rows in 4 steps: each step consumed 2 x 2 rows
    for step in (2, 4):
        checkpoint = ddp_run / f"checkpoint-{step}"
        assert (checkpoint / COMPLETE_MARKER).is_file()
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()


def test_two_processes_equal_one_process_with_the_global_batch(workspace, ddp_run):
    recipe = load_recipe(workspace / "recipe.yaml", ["train.batch_size=4"])
    train(recipe, workspace / "single", quiet=True)
    assert losses(ddp_run) == pytest.approx(losses(workspace / "single"), rel=1e-5)
    single, ddp = trained(workspace / "single"), trained(ddp_run)
    assert set(single) == set(ddp)
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
    initial = load_file(ddp_run / "checkpoint-2" / "rows.safetensors")["input"]
    assert not torch.allclose(initial, ddp["rows.input"])  # the rows moved between step 2 and 4


@pytest.mark.slow
def test_data_parallel_resume_after_a_kill_mid_save(workspace, ddp_run):
    """Unmark the last checkpoint (a kill mid-save): both ranks resume from step 2 and end bit-identical."""
    resumed = workspace / "resumed"
    shutil.copytree(ddp_run / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(ddp_run / "checkpoint-4", resumed / "checkpoint-4")
    (resumed / "checkpoint-4" / COMPLETE_MARKER).unlink()
    done = launch(str(workspace / "recipe.yaml"), "--output", str(resumed), "--resume", cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((resumed / "graft.json").read_text())["world_size"] == 2
    original, again = trained(ddp_run), trained(resumed)
    for key in original:
        assert torch.equal(original[key], again[key]), key
    assert [h["step"] for h in json.loads((resumed / "log_history.json").read_text()) if "loss" in h] == [1, 2, 3, 4]


# Training with every learning rate multiplied by 1e27 once it starts (token_lr 1e30): a divergence no recipe may
# ask for (validate refuses learning rates above 10), to reach the gradient guard behind it.
SCALED_LR = """\
import sys
from transformers import TrainerCallback
from tokengraft.api import train
from tokengraft.config import load_recipe
from tokengraft.errors import TokengraftError


class ScaleLR(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lr_scheduler.base_lrs = [lr * 1e27 for lr in lr_scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] *= 1e27


try:
    train(load_recipe(sys.argv[1], sys.argv[3:-1]), sys.argv[2], quiet=True, callbacks=[ScaleLR()])
except TokengraftError as exc:
    print(f"tokengraft: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow
def test_non_finite_gradients_stop_every_rank_at_the_same_step(workspace):
    """token_lr x 1e27: both ranks stop with the same one-line error; no rank is left waiting."""
    run = workspace / "nan"
    script = workspace / "scaled_lr.py"
    script.write_text(SCALED_LR)
    done = launch(str(workspace / "recipe.yaml"), str(run), "train.save_steps=1", cwd=workspace, program=(str(script),))
    # The two ranks write to one stderr concurrently, so their lines may run together.
    steps = re.findall(r"tokengraft: error: the gradient became non-finite at step (\d+); .*?last good checkpoint",
                       done.stderr)
    assert done.returncode != 0 and len(steps) == 2 and steps[0] == steps[1], done.stderr[-3000:]
    last = sorted((p for p in run.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))[-1]
    assert all(torch.isfinite(t).all() for t in load_file(last / "rows.safetensors").values() if t.is_floating_point())
    assert not (run / "graft.json").exists()
