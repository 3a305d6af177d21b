"""FSDP2 on CPU with token rows: the worker `tests/test_fsdp.py` starts under `torchrun --nproc_per_node 2`.

accelerate and the Trainer do not shard on CPU (they silently run DDP), so this drives
raw FSDP2 (``fully_shard``) itself, the way accelerate does on GPUs: one shard unit
per decoder block, the root unit holding the embedding, the head and the token rows.

For a tied (llama) and an untied (qwen2) tiny model with rows + LoRA, every rank
builds the same graft twice: once kept whole (the single-process reference, fed the
whole global batch) and once sharded (fed its half). The sharded one must match the
reference in the supervised logits (forward), the gathered gradients (backward), the
gathered rows and LoRA after an optimiser step (`full_trained_tensors`), and after
restoring a saved checkpoint into the shards (`restore_trained_tensors` / `load_full`).
Rank 0 writes the largest differences to the JSON file named on the command line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402
from tokengraft.core.graft import Graft, TokenSettings, graft  # noqa: E402
from tokengraft.rundir import save_graft  # noqa: E402
from tokengraft.training.checkpoints import restore_trained_tensors  # noqa: E402
from tokengraft.training.lm import causal_lm_loss, supervised_logits  # noqa: E402
from tokengraft.training.sharding import full_trained_tensors, full_value, sharded  # noqa: E402

TEXTS = ["<A> the cat sat", "a dog <B> ran far away", "<B> on the mat <A>", "it was <A> here"]
LORA = [{"type": "lora", "targets": "attention", "r": 4, "dropout": 0.0}]


def build(family: str) -> Graft:
    model, tokenizer = tiny_model(family, seed=0), tiny_tokenizer()
    g = graft(model, tokenizer, TokenSettings(add=["<A>", "<B>"], special=True), LORA, seed=0, verbose=False)
    g.model.train()
    return g


def encode(g: Graft, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = g.tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def supervised_count(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


def snapshot(g: Graft) -> dict[str, torch.Tensor]:
    """The saved tensors (rows and LoRA), read whole: a collective on the sharded graft."""
    with full_trained_tensors(g):
        out = {f"rows.{k}": v.clone() for k, v in g.token_rows().items()}
        out.update({f"lora.{k}": v.clone() for k, v in g.methods.tensors().items()})
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def compare(family: str, rank: int, world: int, mesh) -> dict[str, float]:
    reference, shard = build(family), build(family)
    ids, mask, labels = encode(reference, TEXTS)
    count = supervised_count(labels)
    before = snapshot(reference)

    # The single process: the whole global batch, loss = sum over supervised tokens / their count.
    ref_logits, ref_targets = supervised_logits(reference.model, ids, mask, labels)
    causal_lm_loss(ref_logits, ref_targets, count).backward()
    ref_grads = {n: p.grad.clone() for n, p in reference.model.named_parameters() if p.requires_grad}

    # FSDP2: one unit per block, then the root (embedding, head, token rows, final norm).
    for block in shard.hf_model.get_decoder().layers:
        fully_shard(block, mesh=mesh)
    fully_shard(shard.model, mesh=mesh)
    assert sharded(shard.model)
    assert max_diff(snapshot(shard), before) == 0.0  # gathered before training = the initial tensors

    per_rank = len(TEXTS) // world
    mine = TEXTS[rank * per_rank:(rank + 1) * per_rank]
    my_ids, my_mask, my_labels = encode(shard, mine)
    logits, targets = supervised_logits(shard.model, my_ids, my_mask, my_labels)
    # FSDP2 averages gradients over ranks; the loss is normalised by the global count, so scale back.
    (causal_lm_loss(logits, targets, count) * world).backward()
    start = sum(supervised_count(encode(reference, [t])[2]) for t in TEXTS[:rank * per_rank])
    forward = float((logits - ref_logits[start:start + len(targets)]).detach().abs().max())
    grads = {n: full_value(p.grad) for n, p in shard.model.named_parameters() if p.requires_grad}
    backward = max_diff(grads, ref_grads)

    for g in (reference, shard):  # SGD: linear in the gradients (AdamW's first step is ~sign(g), which
        # turns float-order noise in near-zero gradients into differences of the learning rate's size)
        optimizer = torch.optim.SGD([p for p in g.model.parameters() if p.requires_grad], lr=0.5)
        optimizer.step()
        optimizer.zero_grad()
    after = snapshot(reference)
    stepped = max_diff(snapshot(shard), after)
    moved = max_diff(after, before)

    # Resume: restore a checkpoint of the reference into the shards, then read them back whole.
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = [tmp if rank == 0 else None]
        dist.broadcast_object_list(checkpoint, src=0)
        if rank == 0:
            save_graft(reference, checkpoint[0], base_spec=family)
        dist.barrier()
        with torch.no_grad():
            for p in shard.model.parameters():
                if p.requires_grad:
                    p.zero_()
        restore_trained_tensors(shard, checkpoint[0])
        restored = max_diff(snapshot(shard), after)
        dist.barrier()  # rank 0 removes the directory only after every rank has read it
    return {"forward": forward, "backward": backward, "after_step": stepped, "moved": moved, "restored": restored}


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    results = {family: compare(family, rank, world, mesh) for family in ("llama", "qwen2")}
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
