"""FSDP2 with token rows on two CPU processes (torchrun, gloo), and the one-line refusal of FSDP on a CPU.

accelerate 1.15 and the Trainer do not shard on CPU: asked for FSDP there, they run
DDP without a word. So the Trainer path (``distributed.engine: fsdp``) refuses on a
CPU, and the row modules are checked under raw FSDP2 instead (tests/fsdp2_rows_worker.py:
forward, backward, gathered rows and LoRA after a step, restore into the shards, each
against a single process fed the whole batch).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_model, tiny_tokenizer
from tokengraft.api import train
from tokengraft.config import load_recipe
from tokengraft.errors import TokengraftError

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp2_row_modules_match_one_process(tmp_path):
    out = tmp_path / "fsdp.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(HERE / "fsdp2_rows_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"llama", "qwen2"}  # tied and untied
    for family, diffs in results.items():
        assert diffs["forward"] <= 1e-5, (family, diffs)
        assert diffs["backward"] <= 1e-5, (family, diffs)
        assert diffs["after_step"] <= 1e-5 < diffs["moved"], (family, diffs)  # the step moved them, equally
        assert diffs["restored"] == 0.0, (family, diffs)


def test_fsdp_on_cpu_is_refused_in_one_line(tmp_path, monkeypatch):
    """Asked for FSDP on a CPU, by the recipe or by an accelerate FSDP launch: one clear error, nothing trained."""
    tiny_model("llama").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text('{"prompt": "a <PASS>", "completion": "<PASS>"}\n' * 4)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"model: {{name: {tmp_path / 'model'}, device: cpu}}\ntokens: {{add: ['<PASS>']}}\n"
                           f"data: {{train: {tmp_path / 'train.jsonl'}, validation_fraction: 0.0}}\n"
                           "train: {max_steps: 1, batch_size: 2}\n")
    with pytest.raises(TokengraftError, match="distributed.engine: fsdp needs GPUs"):
        load_recipe(recipe_file, ["distributed.engine=fsdp"])  # caught by the recipe check
    recipe = load_recipe(recipe_file, ["distributed.engine=fsdp"], validate=False)
    with pytest.raises(TokengraftError, match="FSDP needs GPUs: on CPU accelerate .* silently run DDP"):
        train(recipe, tmp_path / "run", quiet=True)  # and again when training starts
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    with pytest.raises(TokengraftError, match="FSDP needs GPUs"):
        train(load_recipe(recipe_file), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "graft.json").exists()
