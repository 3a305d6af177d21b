"""Why greedy decoding does or does not write a lexicon run's new units: teacher-forced over held-out chunks.

    python benchmarks/lexicon_argmax.py RUN_DIR [--chunks 40]

Prints, over the run's test chunks (each read once, BOS first, at most 256 tokens): the share
of target tokens that are new units, the probability mass the model puts on the new units,
how often its argmax is a new unit, and where a new unit is the target, how often it is the
argmax and the median rank of the right unit. Numbers, not speed: run it on a quiet core or not.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from tokengraft.api import load
from tokengraft.rundir import read_graft_meta, split_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--chunks", type=int, default=40)
    args = parser.parse_args(argv)
    model, tokenizer = load(args.run, device="cpu")
    is_new = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_new[sorted(read_graft_meta(args.run)["trainable_ids"])] = True
    rows = [json.loads(line) for line in split_file(args.run, "test").read_text().splitlines()][: args.chunks]
    targets = new_targets = argmax_new = argmax_right = 0
    mass = 0.0
    ranks: list[int] = []
    with torch.no_grad():
        for row in rows:
            ids = [tokenizer.bos_token_id] + tokenizer.encode(row["text"], add_special_tokens=False)[:255]
            logits = model(torch.tensor([ids])).logits[0, :-1]
            y = torch.tensor(ids[1:])
            argmax = logits.argmax(-1)
            due = is_new[y]
            targets += len(y)
            new_targets += int(due.sum())
            argmax_new += int(is_new[argmax].sum())
            mass += float(logits.softmax(-1)[:, is_new].sum())
            if due.any():
                right = logits[due].gather(1, y[due][:, None])
                ranks += (logits[due] > right).sum(1).tolist()
                argmax_right += int((argmax[due] == y[due]).sum())
    print(json.dumps({"run": str(args.run), "chunks": len(rows), "targets": targets,
                      "new_unit_targets": new_targets / targets, "mass_on_new_units": mass / targets,
                      "argmax_is_new_unit": argmax_new / targets,
                      "new_unit_due_argmax_right": argmax_right / max(1, new_targets),
                      "new_unit_due_median_rank": statistics.median(ranks) if ranks else None}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
