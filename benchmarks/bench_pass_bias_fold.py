"""How faithfully the exported weights carry a run's calibrated `<PASS>` bias.

    python benchmarks/bench_pass_bias_fold.py RUN_DIR [--out benchmarks/results/pass_bias_fold]

`tokengraft eval` decides exactly: greedy decoding starts with `<PASS>` when the
first-position margin (its logit minus the best other logit) plus the calibrated
bias is >= 0. The exports fold the bias into the `<PASS>` row instead (see
`export.fold_pass_bias`). This script merges the run twice (plain, and with the
fold), scores the run's held-out TEST prompts (the fold is fitted on half of the
validation prompts and checks itself on the other half) and reports:

- the realised logit shift on the test prompts (mean, std, min, max) against the bias;
- how often the folded model's first greedy token is `<PASS>` exactly when the exact
  rule says so (decision agreement), split by answerable / unanswerable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tokengraft.export.pass_bias import fold_run_pass_bias
from tokengraft.rundir import load_graft
from tokengraft.export.merged import merge_graft
from tokengraft.generation import first_answer_states
from tokengraft.tasks import read_jsonl


def measure(run: Path) -> dict:
    rows = read_jsonl(run / "data" / "test.jsonl")
    prompts = [r["prompt"] for r in rows]
    g = load_graft(run, device="cpu")
    model, tok = merge_graft(g), g.tokenizer
    model.eval()
    head = model.get_output_embeddings()
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    with torch.no_grad():
        states = first_answer_states(model, tok, prompts)
        logits = states @ head.weight.detach().float().T
        others = logits.clone()
        others[:, pass_id] = float("-inf")
        margin = logits[:, pass_id] - others.max(dim=-1).values
        before_row = head.weight[pass_id].detach().float().clone()
        fold = fold_run_pass_bias(run, model, tok)
        if fold is None:
            raise SystemExit(f"{run} has no calibrated pass_bias to fold")
        shift = states @ (head.weight[pass_id].detach().float() - before_row)
    exact = margin + fold["bias"] >= 0
    folded = margin + shift >= 0
    answerable = torch.tensor([bool(r.get("answerable")) for r in rows])
    agree = exact == folded
    return {
        "run": str(run), "bias": fold["bias"], "fold": fold, "test_prompts": len(rows),
        "test_shift_mean": float(shift.mean()), "test_shift_std": float(shift.std()),
        "test_shift_min": float(shift.min()), "test_shift_max": float(shift.max()),
        "decision_agreement": float(agree.float().mean()),
        "decision_agreement_answerable": float(agree[answerable].float().mean()),
        "decision_agreement_unanswerable": float(agree[~answerable].float().mean()),
        "pass_rate_exact": float(exact.float().mean()), "pass_rate_folded": float(folded.float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pass_bias_fold"))
    args = parser.parse_args()
    result = measure(args.run)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["# The calibrated `<PASS>` bias folded into the `<PASS>` row", "",
             f"Run `{result['run']}`, bias {result['bias']:+g}, {result['test_prompts']} held-out test prompts "
             f"(the fold was fitted on {result['fold'].get('fit_prompts')} validation prompts; its own check on "
             f"{result['fold'].get('check_prompts')} others: {result['fold'].get('shift_mean', 0):+.3f} +- "
             f"{result['fold'].get('shift_std', 0):.3f}).", "",
             "| measure | value |", "|---|---:|"]
    for key in ("test_shift_mean", "test_shift_std", "test_shift_min", "test_shift_max", "decision_agreement",
                "decision_agreement_answerable", "decision_agreement_unanswerable", "pass_rate_exact",
                "pass_rate_folded"):
        lines.append(f"| {key} | {result[key]:.4f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
