"""Token-row snapshots during training (reference 004 kept them every 50 steps).

Every N steps: the trained rows go to ``snapshots/step-N.safetensors`` (only the
rows, so a snapshot of 44k words stays ~ rows x hidden x 4 bytes) and one JSON
line per step goes to ``snapshots/drift.jsonl`` with, per token, the row norm,
the cosine to its initial value, and its nearest existing tokens. Nearest-token
search is limited to the first ``NEAREST_LIMIT`` tokens: it is a [n x vocab]
product, affordable for control tokens, not for a 44k-word lexicon each step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from tokengraft.core.graft import Graft
from tokengraft.training.sharding import full_trained_tensors, full_value

NEAREST_LIMIT = 64
NEAREST_K = 3


def drift_stats(rows: torch.Tensor, initial: torch.Tensor, base: torch.Tensor, tokens: list[str],
                tokenizer: Any) -> dict[str, dict[str, Any]]:
    """Per token: norm, cosine to the initial row, nearest existing tokens by cosine."""
    rows, initial = rows.detach().float().cpu(), initial.float().cpu()
    cos_init = torch.nn.functional.cosine_similarity(rows, initial, dim=-1)
    out: dict[str, dict[str, Any]] = {}
    limit = min(len(tokens), NEAREST_LIMIT)
    nearest: list[list[str]] = [[] for _ in tokens]
    if limit:
        base_n = torch.nn.functional.normalize(base.detach().float().cpu(), dim=-1)  # [V, H]
        sims = torch.nn.functional.normalize(rows[:limit], dim=-1) @ base_n.T  # [limit, V]
        top = sims.topk(NEAREST_K, dim=-1).indices
        nearest[:limit] = [tokenizer.convert_ids_to_tokens(t.tolist()) for t in top]
    for i, token in enumerate(tokens):
        out[token] = {"norm": round(float(rows[i].norm()), 5), "cos_to_init": round(float(cos_init[i]), 5),
                      "nearest": nearest[i]}
    return out


class RowSnapshots(TrainerCallback):
    """Save compact row snapshots and drift statistics every ``every`` optimiser steps."""

    def __init__(self, graft: Graft, directory: Path, every: int):
        self.graft = graft
        self.directory = Path(directory)
        self.every = every
        rows = graft.rows
        self.initial = rows.input_rows.detach().clone().cpu()
        id_to_token = {v: k for k, v in graft.report.ids.items()}
        self.tokens = [id_to_token.get(i, graft.tokenizer.convert_ids_to_tokens(i)) for i in rows.ids.tolist()]

    def _snapshot(self, step: int, base: torch.Tensor) -> None:
        rows = self.graft.rows
        self.directory.mkdir(parents=True, exist_ok=True)
        save_file(rows.state_dict(), str(self.directory / f"step-{step}.safetensors"))
        stats = drift_stats(rows.input_rows, self.initial, base, self.tokens, self.graft.tokenizer)
        with (self.directory / "drift.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "tokens": stats}) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, forget snapshots taken after the checkpoint: those steps run again."""
        if not args.should_save or not self.directory.is_dir():
            return
        for path in self.directory.glob("step-*.safetensors"):
            step = path.name[len("step-"):-len(".safetensors")]
            if step.isdigit() and int(step) > state.global_step:
                path.unlink()
        drift = self.directory / "drift.jsonl"
        if drift.is_file():
            lines = [x for x in drift.read_text(encoding="utf-8").splitlines() if x.strip()]
            kept = [x for x in lines if json.loads(x)["step"] <= state.global_step]
            if len(kept) != len(lines):
                drift.write_text("".join(x + "\n" for x in kept), encoding="utf-8")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        # Every rank enters: under ZeRO-3 / FSDP2 the rows (and the base matrix the nearest tokens
        # are searched in) are gathered for the snapshot, which rank 0 writes.
        base = self.graft.rows.base_embedding.weight
        with full_trained_tensors(self.graft, extra=[base]):
            whole_base = full_value(self.graft.rows.base_embedding.weight)
            if args.should_save:
                self._snapshot(state.global_step, whole_base)

    def on_train_end(self, args, state, control, **kwargs):
        if args.should_save:
            plot_drift(self.directory / "drift.jsonl", self.directory.parent / "row_drift.png")


def plot_drift(drift_file: Path, out: Path) -> None:
    """Mean cosine-to-initial and mean norm of the token rows against step."""
    if not drift_file.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(x) for x in drift_file.read_text().splitlines() if x.strip()]
    if not lines:
        return
    steps = [x["step"] for x in lines]
    cos = [sum(t["cos_to_init"] for t in x["tokens"].values()) / len(x["tokens"]) for x in lines]
    norm = [sum(t["norm"] for t in x["tokens"].values()) / len(x["tokens"]) for x in lines]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.plot(steps, cos, marker="o")
    a.set_title("mean cosine to initial row")
    a.set_xlabel("step")
    b.plot(steps, norm, marker="o", color="tab:orange")
    b.set_title("mean row norm")
    b.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
