"""Fold a run's calibrated <PASS> logit bias into the weights, for runtimes that take no logit bias."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tokengraft.errors import TokengraftError
from tokengraft.generation import first_answer_states
from tokengraft.rundir import read_graft_meta, read_run_recipe, split_file
from tokengraft.tasks import read_jsonl


def fold_pass_bias(model: Any, tokenizer: Any, bias: float, prompts: list[str], *,
                   system: str | None = None) -> dict[str, Any]:
    """Fold the calibrated <PASS> logit bias into the weights, so plain greedy decoding in any runtime
    (transformers, vLLM, llama.cpp) applies it with nothing extra. Returns how well it holds.

    A head with a bias vector takes it exactly. A llama-style head has none, and no fixed
    ``u`` makes ``h . u`` constant for every hidden state ``h``; but the decision that
    matters is at the FIRST answer position, where hidden states are alike (the same chat
    markup precedes them). So the <PASS> row moves by the ridge least-squares ``u`` with
    ``h . u ~= bias`` over half of ``prompts`` (``u = bias (E[h h^T] + 0.01 I)^-1 E[h]``),
    and the other half measures the shift it really gives (mean, std, min, max). On the
    `<PASS>` demo run a +1.0 bias lands at 0.99 +- 0.05 on the 300 test prompts and the first
    greedy token agrees with the exact rule on all of them (benchmarks/results/pass_bias_fold.md);
    the row moves by a few % of its norm (tied models: the input embedding moves with it).
    """
    pass_id = tokenizer.convert_tokens_to_ids("<PASS>")
    head = model.get_output_embeddings()
    report: dict[str, Any] = {"bias": float(bias), "token_id": int(pass_id)}
    if getattr(head, "bias", None) is not None:
        with torch.no_grad():
            head.bias[pass_id] += bias
        return {**report, "method": "head_bias", "exact": True}
    if len(prompts) < 8:
        raise TokengraftError("folding the <PASS> bias needs >= 8 prompts (the run's validation split); "
                              "this run has too few")
    states = first_answer_states(model, tokenizer, prompts, system=system)
    fit, check = states[0::2], states[1::2]
    second_moment = fit.T @ fit / len(fit) + 1e-2 * torch.eye(fit.shape[1])
    shift = bias * torch.linalg.solve(second_moment, fit.mean(0))
    with torch.no_grad():
        head.weight[pass_id] += shift.to(head.weight)
    realised = check @ shift
    return {**report, "method": "row_least_squares", "exact": False, "fit_prompts": len(fit),
            "check_prompts": len(check), "shift_mean": float(realised.mean()), "shift_std": float(realised.std()),
            "shift_min": float(realised.min()), "shift_max": float(realised.max()),
            "row_change_relative": float(shift.norm() / head.weight[pass_id].float().norm())}


def fold_run_pass_bias(run_dir: str | Path, model: Any, tokenizer: Any) -> dict[str, Any] | None:
    """Fold a run's calibrated <PASS> bias (graft.json ``pass_bias``), fitted on the run's validation prompts
    (its training prompts when it has too few), so the test split stays unseen by the fold."""
    bias = read_graft_meta(run_dir).get("pass_bias")
    if not bias:
        return None
    recipe = read_run_recipe(run_dir)
    prompts: list[str] = []
    for split in ("validation", "train"):
        path = split_file(run_dir, split)
        if len(prompts) < 64 and path.is_file():
            prompts += [r["prompt"] for r in read_jsonl(path) if isinstance(r.get("prompt"), str)]
    fold = fold_pass_bias(model, tokenizer, float(bias), prompts[:240], system=recipe.data.system)
    where = "the <PASS> head bias" if fold["exact"] else (
        f"the <PASS> row (realised shift {fold['shift_mean']:+.3f} +- {fold['shift_std']:.3f} on "
        f"{fold['check_prompts']} held-out prompts)")
    print(f"tokengraft: calibrated <PASS> bias {float(bias):+g} folded into {where}", file=sys.stderr)
    return fold

