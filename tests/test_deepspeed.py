"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (gloo), through the real CLI under `accelerate launch`.

The design follows tests/test_distributed.py: the recipe runs with 2 processes x batch 2
under ZeRO and, in this process, with 1 process x batch 4 and no DeepSpeed. The trained
rows and LoRA weights and the logged losses must match to float summation order.

The ZeRO-3 config sets ``stage3_param_persistence_threshold: 0``, so every parameter,
the token rows and LoRA included, lives in partitions between forwards: the saved run
directory is right only if saving gathered them (the run directory holds the same small
files as a single-process run: rows by id, LoRA, graft.json; no model.safetensors).
A ZeRO-3 run killed with SIGKILL after its first complete checkpoint and resumed with
``--resume`` must end exactly where the uninterrupted run ends, and its run directory
loads with `tokengraft.load`.

The model is Qwen2 (untied: separate input and output rows) with gradient checkpointing,
and the new token occurs in only some rows, so a rank's half-batch may lack it.

Slow: six launches of two processes (~40-90 s each on a busy 2-core machine).
Needs DeepSpeed (``pip install 'tokengraft[distributed]'``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

import tokengraft
from tokengraft.api import train
from tokengraft.config import load_recipe
from tokengraft.training.checkpoints import COMPLETE_MARKER
from test_distributed import SCALED_LR, free_port, losses, trained
from test_distributed import launch as ddp_launch
from tiny import tiny_model, tiny_tokenizer

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

RECIPE = """\
# tokengraft train recipe.yaml
seed: 5
task: generic
model: {{name: {model}, device: cpu}}
tokens: {{add: ["<PASS>"]}}
methods: [{{type: lora, targets: attention, r: 4, alpha: 8, dropout: 0.0}}]
data: {{train: {data}, max_length: 64, validation_fraction: 0.0}}
train: {{max_steps: 8, batch_size: 2, save_steps: 2, logging_steps: 1, eval_steps: 0, warmup_ratio: 0.0,
         save_total_limit: null, gradient_checkpointing: true}}
"""
ZERO3 = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}


def launch_command(*args: str) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "tokengraft", "train", *args, "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return cmd, env


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd, env = launch_command(*args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zero")
    tiny_model("qwen2").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    rows = [{"prompt": f"question {i} about the cats", "completion": "<PASS>" if i % 5 == 0 else f"answer {i}"}
            for i in range(16)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "recipe.yaml").write_text(RECIPE.format(model=root / "model", data=root / "train.jsonl"))
    (root / "zero3.json").write_text(json.dumps(ZERO3))
    return root


@pytest.fixture(scope="module")
def single_run(workspace) -> Path:
    train(load_recipe(workspace / "recipe.yaml", ["train.batch_size=4"]), workspace / "single", quiet=True)
    return workspace / "single"


@pytest.fixture(scope="module")
def zero3_run(workspace) -> Path:
    done = launch(str(workspace / "recipe.yaml"), "--deepspeed", str(workspace / "zero3.json"),
                  "--output", str(workspace / "zero3"), cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    return workspace / "zero3"


def assert_matches(run: Path, reference: Path) -> None:
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    ours, theirs = trained(run), trained(reference)
    assert set(ours) == set(theirs) and len(ours) > 3
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_zero2_equals_one_process_with_the_global_batch(workspace, single_run):
    run = workspace / "zero2"
    done = launch(str(workspace / "recipe.yaml"), "distributed.engine=deepspeed", "distributed.zero_stage=2",
                  "--output", str(run), cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((run / "graft.json").read_text())
    assert (meta["world_size"], meta["engine"], meta["steps"]) == (2, "deepspeed-zero2", 8)
    assert_matches(run, single_run)


def test_zero3_equals_one_process_and_saves_only_the_small_artifacts(zero3_run, single_run):
    meta = json.loads((zero3_run / "graft.json").read_text())
    assert (meta["world_size"], meta["engine"], meta["steps"]) == (2, "deepspeed-zero3", 8)
    assert_matches(zero3_run, single_run)
    single_files = {p.name for p in single_run.iterdir() if p.is_file()}
    assert {p.name for p in zero3_run.iterdir() if p.is_file()} == single_files  # no model.safetensors
    for step in (2, 4, 6, 8):
        checkpoint = zero3_run / f"checkpoint-{step}"
        assert (checkpoint / COMPLETE_MARKER).is_file()
        assert (checkpoint / f"global_step{step}").is_dir()  # DeepSpeed's own partitioned state, for --resume
        rows = load_file(checkpoint / "rows.safetensors")
        assert rows["input"].shape == rows["output"].shape == (1, 64)  # gathered, not one rank's empty partition


def test_zero3_resume_after_kill_ends_where_the_uninterrupted_run_ends(workspace, zero3_run):
    """SIGKILL every process after the first complete checkpoint, then `--resume`: the same end, bit for bit."""
    run = workspace / "killed"
    args = (str(workspace / "recipe.yaml"), "--deepspeed", str(workspace / "zero3.json"), "--output", str(run))
    cmd, env = launch_command(*args)
    launcher = subprocess.Popen(cmd, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (run / "checkpoint-2" / COMPLETE_MARKER).is_file():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        processes = psutil.Process(launcher.pid).children(recursive=True) + [psutil.Process(launcher.pid)]
        for process in processes:  # the workers run in sessions of their own: each is killed by its id
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=60)
    assert not (run / "graft.json").exists(), "the kill came too late to interrupt the run"

    done = launch(*args, "--resume", cwd=workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    original, again = trained(zero3_run), trained(run)
    assert set(original) == set(again)
    for key in original:
        assert torch.equal(original[key], again[key]), key
    assert losses(run) == losses(zero3_run)

    model, tokenizer = tokengraft.load(run, device="cpu")
    rows = load_file(run / "rows.safetensors")
    new_id = tokenizer.convert_tokens_to_ids("<PASS>")
    assert int(rows["ids"][0]) == new_id
    with torch.no_grad():
        embedded = model.get_input_embeddings()(torch.tensor([[new_id]]))[0, 0]
        logits = model(input_ids=torch.tensor([tokenizer("question 3 about the cats")["input_ids"]])).logits
    assert torch.equal(embedded, rows["input"][0])
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_non_finite_gradients_stop_every_rank_under_zero3(workspace):
    """Learning rates x 1e27 (test_distributed's script): DeepSpeed skips the non-finite update itself; both ranks
    stop with the same one-line error, the last complete checkpoint is finite, no run directory is written."""
    run = workspace / "nan"
    script = workspace / "scaled_lr.py"
    script.write_text(SCALED_LR)
    done = ddp_launch(str(workspace / "recipe.yaml"), str(run), "train.save_steps=1", "distributed.engine=deepspeed",
                      f"distributed.deepspeed_config={workspace / 'zero3.json'}", cwd=workspace, program=(str(script),))
    steps = re.findall(r"tokengraft: error: the gradient became non-finite at step (\d+); .*?last good checkpoint",
                       done.stderr)
    assert done.returncode != 0 and len(steps) == 2 and steps[0] == steps[1], done.stderr[-3000:]
    last = sorted((p for p in run.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))[-1]
    assert all(torch.isfinite(t).all() for t in load_file(last / "rows.safetensors").values() if t.is_floating_point())
    assert not (run / "graft.json").exists()
