"""Issue 19: a <PASS> read AFTER the answer, trained through LoRA: does it find the base model's errors on unseen relations?

    python benchmarks/pass_retract.py [--steps 400] [--read mean|first --results benchmarks/results/pass_retract_READ]
    # end to end on a tiny saved model in seconds:  ... --model DIR --limit 24 --steps 4 --results /tmp/pr/pass_retract

pass_probe.py measures linear read-outs of the untouched base model: at the first answer
position (what a `<PASS>` row reads before answering) they do not beat the base model's own
minimum token probability on relations the fit never saw, while states averaged over the
base model's written answer come closest. This script asks whether a trained model can do
better there: the base model writes its greedy answer (through the answers cache, as
`tokengraft eval --answers base` serves it), and a LoRA on attention + MLP plus one linear
read-out of what the head reads at the last answer token, i.e. the logit of a token that
would follow the answer (a retraction `<PASS>`: "I take that answer back"), learn from the
training split whether that answer is wrong. Attention lets the tuned state at that
position pool over the whole answer, which a linear row on the base state cannot.

Data, labels and splits are pass_probe.py's (the recipe's generator, the base model's greedy
answers graded as `tokengraft eval` grades them): `train` trains, `validation` chooses the
step (the weights with the best validation AUROC so far are kept in memory; nothing on the
scored splits steers training), and `test` (held-out entities and phrasings of the trained
relations) and `test_heldout_relations` (relations no split trains on) are scored once, at
the end, beside the base model's max softmax and minimum token probability.
Results: ``benchmarks/results/pass_retract.{md,json}``.
"""

from __future__ import annotations

import argparse
import platform
import random
import shlex
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from compare_results import fmt, run_script, save_report, table  # benchmarks/ is on sys.path when this script runs
from pass_probe import (BASELINES, RECIPE, SCORED_SPLITS, add_gains, answerable_splits, cache_counts, gain_cell,
                        scores_for)

from tokengraft.config import load_recipe
from tokengraft.core.arch import describe
from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.generative import add_base_answers, base_greedy_answers
from tokengraft.generation import pad_id
from tokengraft.methods.lora import LoraSpec
from tokengraft.models import load_model
from tokengraft.tasks import metrics
from tokengraft.tasks.pass_data import is_correct
from tokengraft.timing import phase, recording

ROOT = Path(__file__).resolve().parent.parent
READS = {  # --read: where the read-out reads what the head reads, as the report says it
    "last": "at the last answer token",
    "mean": "averaged from the first answer position to the last answer token",
    "first": "at the first answer position (before the answer, where `tokengraft eval` reads p(<PASS>))",
}


class Example(NamedTuple):
    ids: list[int]
    """Prompt + the base model's answer ids (chat-templated)."""
    first_answer_position: int
    """The last prompt position, which predicts the answer's first token (pass_probe's "first answer position")."""
    wrong: bool
    """Whether that answer is wrong."""


class RetractionScorer(torch.nn.Module):
    """The LoRA-wrapped model and a linear read-out of what its head reads at the last answer token
    (``read="last"``), averaged from the first answer position to it (``read="mean"``, as
    generation.answer_hidden_states' ``@mean``), or at the first answer position (``read="first"``: where
    `tokengraft eval` reads p(<PASS>), before any answer token; the answer then changes nothing)."""

    def __init__(self, model: Any, pad: int, read: str = "last") -> None:
        super().__init__()
        if read not in READS:
            raise TokengraftError(f"read must be one of {', '.join(READS)}, got {read!r}")
        self.model = model
        self.pad = pad
        self.read = read
        self.readout = torch.nn.Linear(model.get_output_embeddings().weight.shape[1], 1)
        torch.nn.init.zeros_(self.readout.weight)  # step 0 scores every answer alike
        torch.nn.init.zeros_(self.readout.bias)
        self._states: list[torch.Tensor] = []
        model.get_output_embeddings().register_forward_pre_hook(lambda module, args: self._states.append(args[0]))

    def forward(self, examples: list[Example]) -> torch.Tensor:
        """One logit per example: higher = the answer at its end is more likely wrong."""
        width = max(len(e.ids) for e in examples)
        device = self.readout.weight.device
        ids = torch.full((len(examples), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        weights = torch.zeros((len(examples), width), dtype=torch.float32)  # 1 where the read-out reads
        for i, e in enumerate(examples):  # right padding: positions and causal attention are each row's own
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :len(e.ids)] = 1
            first = e.first_answer_position
            start, end = {"last": (len(e.ids) - 1, len(e.ids)), "mean": (first, len(e.ids)),
                          "first": (first, first + 1)}[self.read]
            weights[i, start:end] = 1.0
        self._states.clear()
        self.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        weights = weights.to(device)
        pooled = (self._states[-1].float() * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True)
        return self.readout(pooled).squeeze(-1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}


@torch.no_grad()
def score(scorer: RetractionScorer, examples: list[Example], batch_size: int) -> list[float]:
    scorer.eval()
    out: list[float] = []
    for start in range(0, len(examples), batch_size):
        out += scorer(examples[start:start + batch_size]).tolist()
    scorer.train()
    return out


def auroc(values: list[float], examples: list[Example]) -> float | None:
    return metrics.auroc(values, [e.wrong for e in examples])


def train(scorer: RetractionScorer, examples: dict[str, list[Example]], *, steps: int, batch_size: int, lr: float,
          eval_every: int, seed: int) -> list[dict[str, Any]]:
    """AdamW on the logistic loss of the read-out; every ``eval_every`` steps the validation AUROC, and the
    trainable weights of the best one so far are restored at the end. Returns the validation curve."""
    rng = random.Random(seed)
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_rows = examples["train"]
    curve = [{"step": 0, "validation_auroc": auroc(score(scorer, examples["validation"], batch_size),
                                                   examples["validation"])}]
    best, best_state = curve[0], scorer.trainable_state()
    scorer.train()
    with tqdm(total=steps, desc="retraction <PASS>: training", leave=False) as bar:
        for step in range(1, steps + 1):
            batch = rng.sample(train_rows, min(batch_size, len(train_rows)))
            logits = scorer(batch)
            loss = loss_fn(logits, torch.tensor([float(e.wrong) for e in batch], device=logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            if step % eval_every == 0 or step == steps:
                value = auroc(score(scorer, examples["validation"], batch_size), examples["validation"])
                curve.append({"step": step, "loss": loss.item(), "validation_auroc": value})
                bar.set_postfix(val_auroc=fmt(value))
                if (value or -1.0) > (best["validation_auroc"] or -1.0):
                    best, best_state = curve[-1], scorer.trainable_state()
    with torch.no_grad():
        named = dict(scorer.named_parameters())
        for name, value in best_state.items():
            named[name].copy_(value)
    for point in curve:
        point["kept"] = point is best
    return curve


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = ["# A `<PASS>` read after the answer, trained through LoRA, against the base model's confidence (issue 19)",
             "", "```", result["command"], "```", ""]
    lines += [f"- {note}" for note in result["notes"]]
    scored = list(result["scores"])
    lines += ["", "Finding the base model's wrong answers: AUROC (higher is better) / AURC (lower is better):", ""]
    names = ["retraction_pass", *BASELINES]
    lines += table(["score", *[h for s in scored for h in (
                        f"{s} (n={result['splits'][s]['n']}, {result['splits'][s]['base_errors']} errors)",
                        f"AUROC - {result['better_baseline'][s]} [95% CI]")]],
                   [[name, *[cell for s in scored for cell in (
                       f"{fmt(result['scores'][s][name]['auroc'])} / {fmt(result['scores'][s][name]['aurc'])}",
                       gain_cell(result["scores"][s][name]))]] for name in names])
    lines += ["", "Validation AUROC during training (the kept step is marked):", ""]
    lines += table(["step", "training loss (last batch)", "validation AUROC", "kept"],
                   [[p["step"], p.get("loss"), p["validation_auroc"], "yes" if p["kept"] else ""] for p in result["curve"]])
    return lines + [""]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model (default: the recipe's)")
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "compare" / "pass_gen_replay_all_kl03_300_carriers.yaml"),
                        help=f"a pass recipe that generates its data (pass_probe's default is {RECIPE.name})")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="recipe override (repeatable; default: every replay relation asked, 1564 rows, as in "
                             "pass_probe_broad)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N answerable rows of each split")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="answers per step and per scoring forward")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (LoRA and read-out)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank on attention + MLP")
    parser.add_argument("--read", choices=READS, default="last",
                        help="what the read-out reads: the head's input at the last answer token, averaged over "
                             "the answer from the first answer position, or at the first answer position (where "
                             "`tokengraft eval` reads p(<PASS>))")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between validation AUROCs")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pass_retract"),
                        help="results path without extension")
    args = parser.parse_args(argv)
    if args.set is None:
        args.set = ["data.generate_options.replay_rows=1564", "data.generate_options.replay_carriers=false"]
    for name in ("steps", "batch_size", "rank", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/pass_retract.py", *(sys.argv[1:] if argv is None else argv)])
    recipe = load_recipe(args.recipe, [*args.set, *([f"model.name={args.model}"] if args.model else [])])
    if recipe.model.quantization != "none":
        raise TokengraftError("pass_retract trains LoRA on float weights; set model.quantization=none")
    torch.manual_seed(recipe.seed)
    with recording() as log:
        with phase("generate the data splits"):
            splits = answerable_splits(recipe, args.limit)
        with phase("load the base model"):
            model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device,
                                          trust_remote_code=recipe.model.trust_remote_code)
        chat = ChatFormat(tokenizer, system=recipe.data.system)
        examples: dict[str, list[Example]] = {}
        records: dict[str, list[dict[str, Any]]] = {}
        for name, rows in splits.items():
            with phase(f"base model: {name}"):  # the answers come from the answers cache where it has them
                answers = base_greedy_answers(model, tokenizer, rows, recipe)
                prompts = [chat.encode_prompt(r["prompt"]) for r in rows]
                examples[name] = [Example(p + list(a["ids"]), len(p) - 1, not is_correct(a["text"], r))
                                  for p, a, r in zip(prompts, answers, rows)]
                if name in SCORED_SPLITS:  # the baselines: how sure the base model was of those answers
                    records[name] = [dict(r) for r in rows]
                    add_base_answers(records[name], model, tokenizer, recipe, answers)
        for name in ("train", "validation"):
            wrong = [e.wrong for e in examples[name]]
            if all(wrong) or not any(wrong):
                raise TokengraftError(f"the base model answers {'none' if all(wrong) else 'all'} of the {len(wrong)} "
                                      f"{name} questions right: nothing to learn its errors from; raise the data sizes")
        lora = LoraSpec(r=args.rank, alpha=2.0 * args.rank, dropout=0.0, targets="attention_mlp", seed=recipe.seed)
        scorer = RetractionScorer(lora.apply(model, describe(model, tokenizer)), pad_id(tokenizer), args.read)
        with phase("train the retraction <PASS>", steps=args.steps):
            curve = train(scorer, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          eval_every=args.eval_every, seed=recipe.seed)
        result: dict[str, Any] = {"command": command, "recipe": str(args.recipe), "model": recipe.model.name,
                                  "seed": recipe.seed, "read": args.read, "steps": args.steps, "rank": args.rank,
                                  "lr": args.lr, "batch_size": args.batch_size, "curve": curve, "scores": {}, "splits": {},
                                  "better_baseline": {}}
        # the restored weights score validation as they did when kept: the report is of that step
        result["kept_validation_auroc"] = auroc(score(scorer, examples["validation"], args.batch_size),
                                                examples["validation"])
        with phase("score the held-out splits"):
            for name in SCORED_SPLITS:
                if name not in examples:
                    continue
                errors = [e.wrong for e in examples[name]]
                baseline = [metrics.error_scores(r) for r in records[name]]
                values = {"retraction_pass": np.array(score(scorer, examples[name], args.batch_size)),
                          **{b: np.array([x[b] for x in baseline], dtype=float) for b in BASELINES}}
                result["scores"][name] = {n: scores_for(v, errors) for n, v in values.items()}
                result["better_baseline"][name] = add_gains(result["scores"][name], values, errors, recipe.seed)
    for name, rows in examples.items():
        result["splits"][name] = {"n": len(rows), "base_errors": sum(e.wrong for e in rows)}
    kept = next(p for p in curve if p["kept"])
    cached, needed = cache_counts(log)
    result["notes"] = [
        f"Data: {Path(args.recipe).name}'s generator (seed {recipe.seed}"
        + (f"; {' '.join(args.set)}" if args.set else "") + "), answerable questions only"
        + (f", the first {args.limit} of each split" if args.limit else "") + "; labels: the base model's greedy "
        f"answer is wrong, graded as `tokengraft eval` grades it ({cached} of {needed} answers read from the answers "
        f"cache). train {result['splits']['train']['n']} answers ({result['splits']['train']['base_errors']} wrong), "
        f"validation {result['splits']['validation']['n']}.",
        f"Model: {recipe.model.name}, LoRA rank {args.rank} (alpha {2 * args.rank}) on attention + MLP and one linear "
        f"read-out of what the head reads "
        + READS[args.read] + f"; {args.steps} steps of {args.batch_size} answers, "
        f"AdamW lr {args.lr:g}; kept the step with the best validation AUROC (step {kept['step']}, "
        f"{fmt(kept['validation_auroc'])}). The score is the read-out's logit" + {
            "last": " (a retraction token's logit, before the softmax over the vocabulary).",
            "first": " (a <PASS> token's logit, before the softmax over the vocabulary).", "mean": "."}[args.read],
        "Baselines from the base model's own probabilities (tasks.metrics.error_scores): max_softmax = 1 - its max "
        "softmax at the first answer token, min_token_prob = 1 - its smallest token probability over its answer. "
        f"`AUROC - <baseline>`: minus the better baseline's AUROC on the same answers, paired percentile bootstrap "
        f"95% interval ({metrics.BOOTSTRAP_RESAMPLES} resamples, seed {recipe.seed}).",
        f"machine: {platform.machine()}, Python {platform.python_version()}; CPU only, torch threads "
        f"{torch.get_num_threads()}; {log.seconds:.0f} s in all.",
    ]
    result["phases"] = log.to_dict()["phases"]
    save_report(args.results, report_lines(result), result)
    return 0


if __name__ == "__main__":
    run_script(main)
