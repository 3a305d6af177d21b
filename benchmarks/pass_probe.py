"""Issue 19: can a linear probe on the base model's hidden state find its wrong answers better than its own confidence?

    python benchmarks/pass_probe.py [--run /work/runs/pass-generalise/pass_gen_default]
    # end to end on a tiny saved model in seconds:  ... --model DIR --limit 24 --results /tmp/pp/pass_probe

No language-model training: the base model answers the questions of issue 19's recipe
(configs/pass_generalise.yaml: the pass task's own generator, same seed), and a logistic
probe learns which of its greedy answers are wrong from its hidden state at the first answer
position (the last position of the chat-templated prompt: what the model reads before it
writes its answer). Two feature sets:

- ``final``: the state after the final norm, what the LM head reads. A probe on it IS an
  output row: its logit ``w . (h - mu) / sigma + b`` is ``h . row + bias`` with
  ``row = w / sigma`` and ``bias = b - row . mu`` (`probe_as_row`), i.e. the logit of a
  `<PASS>` token whose output row is ``row``, plus a constant logit bias (what `tokengraft
  eval` calibrates). The script installs that row into the base model's head as a new token
  and reads p(<PASS>) through the generation path `tokengraft eval` uses (``probe_final_row``,
  the softmax over the whole vocabulary, not the bare logit), checking it against the states;
- ``layer_<k>``: the residual stream after ``k`` blocks (``--layers``; default the middle one),
  features a linear row cannot read directly (issue 19: "routed into the final state through LoRA").

Both again after the answer (generation.answer_hidden_states over prompt + the base model's greedy
answer): ``_end`` at the last answer token (what a token read after the answer sees) and ``_mean``
averaged over the answer's positions (Orgad et al., 2025, find the answer tokens carry more of the
error signal than the prompt).

Beside the states: ``confidence``, the base model's own answer probabilities as features (``CONFIDENCE``:
what the baselines threshold, mixed by a probe), and every state feature with them (``+confidence``):
does the state add anything to what the model's probabilities already say?

Labels: whether the base model's greedy answer is wrong, with the decoding and grading of
`tokengraft eval` (evaluation.generative: the answers cache makes them free after an eval of
the same recipe). Probes train on the training split's answerable questions, choose their L2
strength on the validation split's AUROC, and are scored (AUROC, AURC) on the test split
(held-out entities and phrasings of the trained relations) and on the relations no split
trains on, beside the base model's max softmax and minimum token probability (tasks.metrics)
and, with ``--run``, the trained `<PASS>` of a run evaluated by `tokengraft eval`; each per-row score
also gets its AUROC gain over the better baseline with a paired bootstrap interval (metrics.auroc_gain).
Results: ``benchmarks/results/pass_probe.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compare_results import fmt, run_script, save_report, table  # benchmarks/ is on sys.path when this script runs

from tokengraft.config import Recipe, load_recipe
from tokengraft.constants import BUILTIN_ALIAS
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.generative import add_base_answers, base_greedy_answers
from tokengraft.generation import answer_hidden_states, first_answer_hidden_states, generate_batch
from tokengraft.models import load_model
from tokengraft.tasks import get_task, metrics
from tokengraft.tasks.pass_data import is_correct
from tokengraft.tasks.heldout_relations import HELDOUT_SPLIT
from tokengraft.timing import PhaseLog, phase, recording

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "pass_generalise.yaml"
FIT_SPLITS = ("train", "validation")
SCORED_SPLITS = ("test", HELDOUT_SPLIT)
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""L2 strengths tried (on standardised features, mean log-loss); validation AUROC chooses, ties to the larger."""
BASELINES = metrics.BASELINE_SCORES
ROW_CHECK_ROWS = 64
"""Test rows on which the installed row's p(<PASS>) is compared with the one computed from the hidden states."""
CONFIDENCE = ("logit of the first answer token's max softmax", "log of the smallest answer-token probability",
              "mean answer-token log-probability", "log(1 + answer tokens)")
"""The base model's confidence as probe features (`confidence_features`): what the baselines threshold, and more."""
PROB_FLOOR = 1e-6


# ----------------------------------------------------------------------------- the probe


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float, max_iter: int = 200,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method with a backtracking line search (float64,
    deterministic): minimises the (``weights``-weighted) mean log-loss + ``lam`` / 2 * ||w||^2 (the intercept
    is not penalised)."""
    n, d = x.shape
    a = np.hstack([x, np.ones((n, 1))])
    target = y.astype(float)
    share = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
    penalty = np.full(d + 1, float(lam))
    penalty[-1] = 0.0
    w = np.zeros(d + 1)

    def loss(v: np.ndarray) -> float:
        z = a @ v
        return float(share @ (np.logaddexp(0.0, z) - target * z) + 0.5 * np.sum(penalty * v * v))

    current = loss(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (share * (p - target)) + penalty * w
        if np.max(np.abs(grad)) < 1e-9:
            break
        hessian = (a * (share * p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-10 * np.eye(d + 1)
        step = np.linalg.solve(hessian, grad)
        t = 1.0
        while t > 1e-10:
            trial = loss(w - t * step)
            if trial <= current - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        else:
            break  # no decrease left: converged to float precision
        w, current = w - t * step, trial
    return w[:-1], float(w[-1])


@dataclass
class Probe:
    """A fitted probe: standardisation (``mean``, ``scale``) then a logistic read-out (``weight``, ``bias``)."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    lam: float
    validation_auroc: dict[str, float | None] = field(default_factory=dict)
    train_auroc: float | None = None

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The probe's logit per row of ``x``: higher = more likely the base model's answer is wrong."""
        return ((x - self.mean) / self.scale) @ self.weight + self.bias


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              lambdas: tuple[float, ...] = LAMBDAS, weights: np.ndarray | None = None) -> Probe:
    """Standardise on the training rows, fit one probe per L2 strength (rows weighted by ``weights``),
    keep the best validation AUROC."""
    if train_y.all() or not train_y.any():
        raise TokengraftError(f"the base model answers {'none' if train_y.all() else 'all'} of the {len(train_y)} "
                              "training questions right: no probe can learn its errors from one class")
    mean = train_x.mean(0)
    scale = train_x.std(0)
    scale[scale < 1e-12] = 1.0  # a constant feature carries nothing; leave it unscaled
    z_train, z_val = (train_x - mean) / scale, (val_x - mean) / scale
    best: Probe | None = None
    scores: dict[str, float | None] = {}
    for lam in lambdas:
        weight, bias = fit_logistic(z_train, train_y, lam, weights=weights)
        scores[f"{lam:g}"] = metrics.auroc((z_val @ weight + bias).tolist(), val_y.tolist()) if len(val_y) else None
        probe = Probe(mean, scale, weight, bias, lam)
        if best is None or (scores[f"{lam:g}"] or -1.0) >= (scores[f"{best.lam:g}"] or -1.0):
            best = probe
    assert best is not None
    best.validation_auroc = scores
    best.train_auroc = metrics.auroc(best.logits(train_x).tolist(), train_y.tolist())
    return best


def probe_as_row(probe: Probe) -> tuple[np.ndarray, float]:
    """The probe as an output row and a logit bias: ``h @ row + bias == probe.logits(h)`` for every ``h``.

    For a probe on the final-normalised state (what the head reads), ``row`` is the output row of
    a token whose logit is the probe's logit up to the constant ``bias`` (a logit bias, or a head
    bias entry where the head has one): the standardisation folds into the row."""
    row = probe.weight / probe.scale
    return row, float(probe.bias - row @ probe.mean)


def relation_balanced_weights(relations: list[str], errors: np.ndarray) -> np.ndarray:
    """Row weights under which, inside every relation, the base model's wrong and right answers weigh the
    same, and every relation weighs the same; relations it answers all right or all wrong weigh nothing.

    Why: the training relations differ in how often the base model is wrong, so an unweighted probe can
    score well by recognising the relation; that does not carry over to relations it never saw. Balanced,
    only what tells a wrong answer from a right one inside a relation lowers the loss."""
    weights = np.zeros(len(relations))
    names = np.asarray(relations)
    both = [r for r in sorted(set(relations)) if 0 < errors[names == r].sum() < (names == r).sum()]
    if not both:
        raise TokengraftError("no training relation has both right and wrong base answers: a relation-balanced "
                              "probe has nothing to learn from; drop --balance-relations or add questions")
    for relation in both:
        for label in (True, False):
            cell = (names == relation) & (errors == label)
            weights[cell] = 1.0 / (2 * len(both) * cell.sum())
    return weights * len(relations)


def relation_curve(x: dict[str, np.ndarray], y: dict[str, np.ndarray], relations: dict[str, np.ndarray],
                   sizes: list[int], draws: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Does a probe carry over to unseen relations better when it learns from more relations?

    For each size ``k``: ``draws`` seeded draws of ``k`` training relations (one draw when ``k`` is all of them);
    the probe trains on those relations' training rows, chooses its L2 strength on their validation rows (all
    validation rows when those lack a class) and is scored on the held-out relations. Returns, per size, each
    draw's relations and AUROC (None when the drawn rows hold one class only)."""
    names = sorted(set(relations["train"].tolist()))
    too_big = [k for k in sizes if not 1 <= k <= len(names)]
    if too_big:
        raise TokengraftError(f"--relation-curve {' '.join(map(str, too_big))}: the training split has "
                              f"{len(names)} relations; choose sizes from 1 to {len(names)}")
    curve: dict[str, list[dict[str, Any]]] = {}
    for k in sizes:
        rng = np.random.default_rng([seed, k])  # the same draws for every feature and every run
        for _ in range(1 if k == len(names) else draws):
            chosen = sorted(rng.choice(names, size=k, replace=False).tolist())
            train_rows = np.isin(relations["train"], chosen)
            val_rows = np.isin(relations["validation"], chosen)
            if not (0 < y["validation"][val_rows].sum() < val_rows.sum()):
                val_rows = np.ones_like(val_rows)
            auroc = None
            if 0 < y["train"][train_rows].sum() < train_rows.sum():
                probe = fit_probe(x["train"][train_rows], y["train"][train_rows], x["validation"][val_rows],
                                  y["validation"][val_rows])
                auroc = metrics.auroc(probe.logits(x[HELDOUT_SPLIT]).tolist(), y[HELDOUT_SPLIT].tolist())
            curve.setdefault(str(k), []).append({"relations": chosen, "train_rows": int(train_rows.sum()),
                                                 "auroc": auroc})
    return curve


# ----------------------------------------------------------------------------- data and labels


def answerable_splits(recipe: Recipe, limit: int | None) -> dict[str, list[dict[str, Any]]]:
    """The answerable rows of each split the recipe's generator writes (the data `tokengraft train` would write)."""
    if recipe.task != "pass" or not recipe.data.generate:
        raise TokengraftError(f"{recipe.task} recipe with data.generate {recipe.data.generate}: pass_probe needs a "
                              "pass recipe that generates its data (e.g. configs/pass_generalise.yaml)")
    splits = get_task(recipe.task).generate(recipe.seed, recipe.data.generate_options).splits
    out = {name: [r for r in splits.get(name, []) if r.get("answerable") is True][:limit]
           for name in (*FIT_SPLITS, *SCORED_SPLITS)}
    missing = [name for name in (*FIT_SPLITS, "test") if not out[name]]
    if missing:
        raise TokengraftError(f"the recipe's data has no answerable rows in {', '.join(missing)}; "
                              "raise data.generate_options sizes")
    return {name: rows for name, rows in out.items() if rows}


def install_row(model: Any, row: np.ndarray) -> int:
    """Add one token to ``model``'s vocabulary whose output row is ``row`` (its input row is unused); returns its id."""
    new_id = model.get_output_embeddings().weight.shape[0]
    model.resize_token_embeddings(new_id + 1, mean_resizing=False)
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[new_id] = torch.as_tensor(row, dtype=head.weight.dtype)
        if getattr(head, "bias", None) is not None:
            head.bias[new_id] = 0.0
    return new_id


def row_scores(model: Any, states: torch.Tensor, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p(<PASS>) and its margin over the best other token, from final states, with ``row`` beside the base head."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        base = head(states.to(head.weight.dtype)).double()
    logit = states.double() @ torch.as_tensor(row, dtype=torch.float64)
    p = torch.sigmoid(logit - torch.logsumexp(base, dim=-1))
    return p.numpy(), (logit - base.max(dim=-1).values).numpy()


def scores_for(values: list[float] | np.ndarray, errors: list[bool]) -> dict[str, Any]:
    values = [float(v) for v in values]
    return {"n": len(values), "auroc": metrics.auroc(values, errors), "aurc": metrics.risk_coverage_area(values, errors)}


def confidence_features(records: list[dict[str, Any]]) -> np.ndarray:
    """The base model's own confidence in each of its answers as probe features (``CONFIDENCE``, in order).

    Probabilities are clipped away from 0 and 1 before their logs; an empty answer (the model
    stopped at once) counts its first-position maximum as its only token (metrics.error_scores)."""
    rows = []
    for record in records:
        first = float(np.clip(record["base_first_max"], PROB_FLOOR, 1 - PROB_FLOOR))
        probs = np.clip(np.asarray(record["base_token_probs"] or [first], dtype=float), PROB_FLOOR, 1 - PROB_FLOOR)
        rows.append([np.log(first / (1 - first)), np.log(probs.min()), np.log(probs).mean(),
                     np.log1p(len(record["base_token_probs"]))])
    return np.asarray(rows, dtype=float)


# ----------------------------------------------------------------------------- the report


def cache_counts(log: PhaseLog) -> tuple[int, int]:
    """(answers read from the answers cache, answers needed) over the recorded phases."""
    details = [p.detail for p in log.phases if "prompts" in p.detail]
    return sum(d.get("cached", 0) for d in details), sum(d["prompts"] for d in details)


def score_names(result: dict[str, Any]) -> list[str]:
    names = list(result["probes"]) + ["probe_final_row", *BASELINES]
    return names + (["p_pass (run)"] if result.get("run") else [])


def add_gains(scores: dict[str, dict[str, Any]], values: dict[str, np.ndarray], errors: list[bool], seed: int) -> str:
    """Give every score in ``scores`` but the better baseline its ``over_baseline`` (metrics.auroc_gain against
    that baseline, from the per-row ``values``); returns the better baseline's name."""
    better = max(BASELINES, key=lambda b: scores[b]["auroc"] or 0.0)
    for name, v in values.items():
        if name != better:
            scores[name]["over_baseline"] = metrics.auroc_gain(v, values[better], errors, seed=seed)
    return better


def gain_cell(score: dict[str, Any]) -> str:
    """``+0.040 [-0.021, +0.101]``: a score's AUROC gain over the better baseline and its interval ("" for none)."""
    gain = score.get("over_baseline")
    if not gain:
        return ""
    low, high = gain["ci95"]
    return f"{gain['gain']:+.3f} [{low:+.3f}, {high:+.3f}]"


def relation_curve_table(result: dict[str, Any]) -> list[str]:
    curve = result["relation_curve"]
    draws = {k: len(points) for k, points in next(iter(curve.values())).items()}  # the same draws for every feature
    sizes = list(draws)

    def cell(points: list[dict[str, Any]]) -> str:
        values = [p["auroc"] for p in points if p["auroc"] is not None]
        if not values:
            return "n/a"
        return fmt(float(np.mean(values))) + (f" ({fmt(min(values))} - {fmt(max(values))})" if len(values) > 1 else "")

    rows = [[feature, *[cell(by_size[k]) for k in sizes]] for feature, by_size in curve.items()]
    better = result["better_baseline"][HELDOUT_SPLIT]
    rows.append([f"{better} (no training)", *[fmt(result["scores"][HELDOUT_SPLIT][better]["auroc"])] * len(sizes)])
    return table(["features", *[f"K={k} ({draws[k]} draw{'s' * (draws[k] > 1)})" for k in sizes]], rows)


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = ["# <PASS> as a probe: the base model's hidden state against its own confidence (issue 19)", "",
             "```", result["command"], "```", ""]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", "Answerable questions per split; label = the base model's greedy answer is wrong:", ""]
    lines += table(["split", "role", "questions", "base errors", "error rate"],
                   [[s, d["role"], d["n"], d["base_errors"], d["error_rate"]] for s, d in result["splits"].items()])
    lines += ["", "Base-model error rate per training relation (what an unweighted probe can learn to recognise):", ""]
    lines += table(["relation", "train questions", "base errors", "error rate"],
                   [[r, c["n"], c["base_errors"], c["base_errors"] / c["n"]]
                    for r, c in sorted(result["train_relations"].items())])
    scored = [s for s in SCORED_SPLITS if s in result["scores"]]
    lines += ["", "Finding the base model's wrong answers: AUROC (higher is better) / AURC (lower is better; "
              "risk of the answers kept least-suspect first):", ""]
    rows = [[name, *[cell for s in scored for cell in (
                f"{fmt(result['scores'][s].get(name, {}).get('auroc'))} / {fmt(result['scores'][s].get(name, {}).get('aurc'))}",
                gain_cell(result["scores"][s].get(name, {})))]]
            for name in score_names(result)]
    rows.append(["AURC random / oracle", *[cell for s in scored for cell in (
        f"{fmt(result['splits'][s]['error_rate'])} / {fmt(result['splits'][s]['aurc_optimal'])}", "")]])
    lines += table(["score", *[h for s in scored for h in (
        f"{s} (n={result['splits'][s]['n']})", f"AUROC - {result['better_baseline'][s]} [95% CI]")]], rows)
    lines += ["", "Probes (L2 strength chosen on validation AUROC; train AUROC shows how much they fit):", ""]
    lams = [f"{lam:g}" for lam in LAMBDAS]
    lines += table(["probe", "features", "lambda", "train AUROC", *[f"val AUROC @ {lam}" for lam in lams]],
                   [[name, p["features"], f"{p['lambda']:g}", p["train_auroc"], *[p["validation_auroc"].get(lam) for lam in lams]]
                    for name, p in result["probes"].items()])
    if result.get("relation_curve"):
        lines += ["", f"Relation curve (--relation-curve): AUROC on {HELDOUT_SPLIT} of probes trained on K of the "
                  "training relations, mean over the draws (lowest - highest):", ""]
        lines += relation_curve_table(result)
    check = result["row_check"]
    lines += ["", f"The final-layer probe as an output row: |probe logit - (h . row + bias)| <= "
              f"{check['max_abs_logit_difference']:.2e} over every scored row; installed as a new token in the base "
              f"model's head, p(<PASS>) read by generation (as `tokengraft eval` reads it) differs from the one "
              f"computed from the states by <= {check['max_abs_p_difference']:.2e} (margin "
              f"{check['max_abs_margin_difference']:.2e}) on {check['rows']} scored rows.", ""]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=f"base model (default: the recipe's, {BUILTIN_ALIAS})")
    parser.add_argument("--recipe", default=str(RECIPE), help="a pass recipe that generates its data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override (repeatable), e.g. data.generate_options.n_train=200")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="middle layers to probe: the residual stream after K blocks (default: half the blocks)")
    parser.add_argument("--run", default=None, help="a run directory evaluated by `tokengraft eval`: its p(<PASS>)")
    parser.add_argument("--balance-relations", action="store_true",
                        help="weigh wrong and right answers equally inside each training relation "
                             "(relation_balanced_weights), so no probe can learn which relations are hard")
    parser.add_argument("--relation-curve", type=int, nargs="+", default=None, metavar="K",
                        help="also fit probes on K randomly drawn training relations (each K) and score them on the "
                             "held-out relations: does transfer grow with the number of relations learnt from?")
    parser.add_argument("--curve-features", nargs="+", default=None,
                        help="features of the relation curve (default: final, final@mean, the deepest --layers "
                             "layer @mean, that with +confidence, and confidence)")
    parser.add_argument("--curve-draws", type=int, default=5, help="relation draws per curve size (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N answerable rows of each split")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward for the hidden states")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pass_probe"),
                        help="results path without extension")
    return parser.parse_args(argv)


def check_relation_curve(args: argparse.Namespace, layers: list[int], splits: dict[str, Any]) -> list[str]:
    """The relation curve's features (``--curve-features`` or the default set), checked before any forward pass."""
    if not args.relation_curve:
        return []
    if HELDOUT_SPLIT not in splits:
        raise TokengraftError(f"--relation-curve scores on {HELDOUT_SPLIT}; the recipe's data has none")
    if args.curve_draws < 1:
        raise TokengraftError(f"--curve-draws {args.curve_draws}: draw at least one set of relations per size")
    states = [name for base in ("final", *[f"layer_{k}" for k in layers])
              for name in (base, f"{base}@end", f"{base}@mean")]
    known = [*states, "confidence", *[f"{name}+confidence" for name in states]]
    deepest = f"layer_{max(layers)}" if layers else "final"
    chosen = args.curve_features or ["final", "final@mean", f"{deepest}@mean", f"{deepest}@mean+confidence",
                                     "confidence"]
    unknown = [f for f in chosen if f not in known]
    if unknown:
        raise TokengraftError(f"--curve-features {' '.join(unknown)}: not a feature here; choose from {', '.join(known)}")
    return chosen


def run_metrics(run: str | None) -> dict[str, Any]:
    if run is None:
        return {}
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise TokengraftError(f"{path} is missing: run `tokengraft eval {run}` first (or drop --run)")
    detection = json.loads(path.read_text()).get("error_detection")
    if not isinstance(detection, dict):
        raise TokengraftError(f"{path} has no error_detection block: evaluate the run again with this tokengraft")
    return detection


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/pass_probe.py", *(sys.argv[1:] if argv is None else argv)])
    overrides = [*args.set, *([f"model.name={args.model}"] if args.model else [])]
    recipe = load_recipe(args.recipe, overrides)
    if recipe.model.quantization != "none":
        raise TokengraftError("pass_probe reads the base model in float weights; set model.quantization=none")
    run = run_metrics(args.run)
    with recording() as log:
        with phase("generate the data splits"):
            splits = answerable_splits(recipe, args.limit)
        with phase("load the base model"):
            model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device,
                                          trust_remote_code=recipe.model.trust_remote_code)
        blocks = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        layers = args.layers or ([blocks // 2] if blocks >= 2 else [])
        if blocks and not all(1 <= k < blocks for k in layers):
            raise TokengraftError(f"--layers {' '.join(map(str, layers))}: {recipe.model.name} has {blocks} blocks; "
                                  f"choose layers from 1 to {blocks - 1}")
        curve_features = check_relation_curve(args, layers, splits)
        errors: dict[str, list[bool]] = {}
        answer_ids: dict[str, list[list[int]]] = {}
        records: dict[str, list[dict[str, Any]]] = {}
        for name, rows in splits.items():
            with phase(f"base model: {name}"):  # the answers come from the answers cache where it has them
                answers = base_greedy_answers(model, tokenizer, rows, recipe)
                answer_ids[name] = [a["ids"] for a in answers]
                errors[name] = [not is_correct(a["text"], r) for a, r in zip(answers, rows)]
                records[name] = [dict(r) for r in rows]  # + how sure the base model was of those answers
                add_base_answers(records[name], model, tokenizer, recipe, answers)
        states: dict[str, dict[str, torch.Tensor]] = {}
        for name, rows in splits.items():
            with phase(f"hidden states: {name}"):
                prompts = [r["prompt"] for r in rows]
                states[name] = {
                    **first_answer_hidden_states(model, tokenizer, prompts, layers=layers, system=recipe.data.system,
                                                 batch_size=args.batch_size, desc=f"hidden states ({name})"),
                    **answer_hidden_states(model, tokenizer, prompts, answer_ids[name], layers=layers,
                                           system=recipe.data.system, batch_size=args.batch_size,
                                           desc=f"hidden states over the answers ({name})")}
        result: dict[str, Any] = {"command": command, "recipe": str(args.recipe), "model": recipe.model.name,
                                  "seed": recipe.seed, "layers": layers, "blocks": blocks, "limit": args.limit,
                                  "run": args.run, "balance_relations": args.balance_relations,
                                  "probes": {}, "scores": {s: {} for s in SCORED_SPLITS if s in splits}}
        features: dict[str, dict[str, np.ndarray]] = {}
        for s in splits:  # final, layer_<k>, <both>@end, <both>@mean; confidence; each state beside the confidence
            states_np = {f: t.double().numpy() for f, t in states[s].items()}
            confidence = confidence_features(records[s])
            features[s] = {**states_np, "confidence": confidence,
                           **{f"{f}+confidence": np.hstack([x, confidence]) for f, x in states_np.items()}}
        fitted: dict[str, Probe] = {}
        train_relations = [r.get("relation", "") for r in splits["train"]]
        train_weights = (relation_balanced_weights(train_relations, np.array(errors["train"], dtype=bool))
                         if args.balance_relations else None)
        values: dict[str, dict[str, np.ndarray]] = {s: {} for s in result["scores"]}  # per-row scores
        with phase("fit the probes"):
            for feature in features["train"]:
                x = {s: features[s][feature] for s in splits}
                y = {s: np.array(errors[s], dtype=bool) for s in splits}
                probe = fit_probe(x["train"], y["train"], x["validation"], y["validation"], weights=train_weights)
                name = "probe_" + feature.replace("layer_", "layer").replace("@", "_")
                fitted[name] = probe
                result["probes"][name] = {"features": feature, "lambda": probe.lam, "train_auroc": probe.train_auroc,
                                          "validation_auroc": probe.validation_auroc}
                for s in values:
                    values[s][name] = probe.logits(x[s])
        if args.relation_curve:
            relations = {s: np.asarray([r.get("relation", "") for r in splits[s]]) for s in splits}
            labels = {s: np.array(errors[s], dtype=bool) for s in splits}
            with phase("relation curve"):
                result["relation_curve"] = {
                    f: relation_curve({s: features[s][f] for s in splits}, labels, relations, args.relation_curve,
                                      args.curve_draws, recipe.seed) for f in curve_features}
        for s in values:
            baseline = [metrics.error_scores(r) for r in records[s]]
            for score in BASELINES:
                values[s][score] = np.array([b[score] for b in baseline], dtype=float)
        row, bias = probe_as_row(fitted["probe_final"])
        final = {s: states[s]["final"] for s in result["scores"]}
        gap = max(float(np.max(np.abs(final[s].double().numpy() @ row + bias
                                      - fitted["probe_final"].logits(final[s].double().numpy())))) for s in final)
        row_p = {s: row_scores(model, final[s], row) for s in final}
        with phase("the probe row installed in the base model's head"):
            new_id = install_row(model, row)
            measured = {s: generate_batch(model, tokenizer, [r["prompt"] for r in splits[s]], max_new_tokens=1,
                                          system=recipe.data.system, batch_size=recipe.eval.batch_size,
                                          score_token_id=new_id, desc=f"p(<PASS>) of the row ({s})")
                        for s in final}
        for s in final:
            values[s]["probe_final_row"] = np.array([m["p_token"] for m in measured[s]], dtype=float)
        result["better_baseline"] = {}
        with phase("AUROC gains over the better baseline (paired bootstrap)"):
            for s, by_name in values.items():
                result["scores"][s].update({name: scores_for(v, errors[s]) for name, v in by_name.items()})
                result["better_baseline"][s] = add_gains(result["scores"][s], by_name, errors[s], recipe.seed)
                if s in run:  # the trained <PASS> from its own eval: no per-row scores here, so no interval
                    result["scores"][s]["p_pass (run)"] = {**run[s].get("p_pass", {}),
                                                           "run_base_errors": run[s].get("base_errors"),
                                                           "run_n": run[s].get("n")}
        check = [(m, p, g) for s in final for m, p, g in zip(measured[s], *row_p[s])][:ROW_CHECK_ROWS]
        result["row_check"] = {
            "rows": len(check), "row_norm": float(np.linalg.norm(row)), "bias": bias,
            "max_abs_logit_difference": gap,
            "max_abs_p_difference": max(abs(m["p_token"] - p) for m, p, _ in check),
            "max_abs_margin_difference": max(abs(m["margin"] - g) for m, _, g in check)}
    result["splits"] = {}
    result["train_relations"] = {}  # how often the base model is wrong on each relation the probes train on
    for relation, wrong in zip(train_relations, errors["train"]):
        cell = result["train_relations"].setdefault(relation, {"n": 0, "base_errors": 0})
        cell["n"] += 1
        cell["base_errors"] += int(wrong)
    for s in splits:
        e = errors[s]
        result["splits"][s] = {
            "role": {"train": "fits the probes", "validation": "chooses the L2 strength", "test":
                     "held-out entities and phrasings of the trained relations",
                     HELDOUT_SPLIT: "relations no split trains on"}[s],
            "n": len(e), "base_errors": sum(e), "error_rate": sum(e) / len(e),
            "aurc_optimal": metrics.risk_coverage_area([float(v) for v in e], e)}
    cached, needed = cache_counts(log)
    result["notes"] = [
        f"Data: {Path(args.recipe).name}'s generator (seed {recipe.seed}), answerable questions only"
        + (f", the first {args.limit} of each split" if args.limit else "") + ". `train` and `validation` fit the "
        "probes; `test` holds out entities and phrasings of the relations the <PASS> recipe trains on; "
        f"`{HELDOUT_SPLIT}` asks eight relations that neither the probes nor the <PASS> recipe ever see.",
        f"Model: {recipe.model.name} ({blocks} blocks), untouched: no language-model training. Labels: its greedy answer "
        f"is wrong, graded as `tokengraft eval` grades it ({cached} of {needed} answers read from the answers cache).",
        "Probes: L2 logistic regression on standardised hidden states at the first answer position (the last prompt "
        "position of the chat template); `probe_final` reads the state after the final norm (what the LM head reads), "
        + ", ".join(f"`probe_layer{k}` the residual stream after {k} blocks" for k in layers) + ". The same "
        "features read after the base model has written its greedy answer (teacher-forced, one forward over prompt + "
        "answer): `_end` at its last answer token, where it decides the answer is complete (what an output row read "
        "after the answer, a retraction token, would see), `_mean` averaged from the first answer position to that "
        "token.",
        "`probe_final_row`: the final probe as an output row (`h . row + bias`, exact), installed as a new token in "
        "the base model's head: p(<PASS>) over the whole vocabulary at the first answer position, read by the "
        "generation path `tokengraft eval` uses for p(<PASS>); its order is that of the row's logit minus the "
        "log-sum-exp of the base logits, not of the bare probe logit.",
        "Baselines from the base model's own probabilities (tasks.metrics.error_scores): max_softmax = 1 - its max "
        "softmax at the first answer token, min_token_prob = 1 - its smallest token probability over its answer.",
        *(["Training rows weighted by relation (--balance-relations, relation_balanced_weights): inside each "
            "training relation the base model's wrong and right answers weigh the same and every relation weighs "
            "the same, so recognising which relations are hard lowers no probe's loss; "
            f"{len({r for r, w in zip(train_relations, train_weights) if w > 0})} of "
            f"{len(result['train_relations'])} training relations have both kinds of answer and count."]
          if args.balance_relations else []),
        "`probe_confidence`: the same logistic probe on the base model's confidence alone (" + "; ".join(CONFIDENCE)
        + "), a learned mix of what the baselines threshold; `+confidence` probes read a hidden state and those "
        "four features together: whether the state adds anything to the model's own confidence. Neither is a "
        "p(<PASS>) a token can produce (a token reads one state, not the answer's probabilities).",
        *([f"Relation curve: for each K, {args.curve_draws} seeded draws of K training relations (one when K is all "
           "of them, the same draws for every feature); each probe trains on the drawn relations' training rows, "
           "chooses its L2 strength on their validation rows, and is scored on the relations no split trains on "
           "(pass_probe.relation_curve)."] if args.relation_curve else []),
        "`AUROC - <baseline>`: the score's AUROC minus the better baseline's on the same questions, with a paired "
        f"percentile bootstrap 95% interval (tasks.metrics.auroc_gain: {metrics.BOOTSTRAP_RESAMPLES} resamples of the "
        f"questions, seed {recipe.seed}).",
        *([f"`p_pass (run)`: p(<PASS>) of the trained run {args.run} (its metrics.json, `tokengraft eval`); its "
           "base errors, which should be these labels: " + "; ".join(
               f"{s} {run[s].get('base_errors')}/{run[s].get('n')} there, {result['splits'][s]['base_errors']}/"
               f"{result['splits'][s]['n']} here" for s in result["scores"] if s in run) + "."] if run else []),
        f"machine: {platform.machine()}, Python {platform.python_version()}; CPU only; "
        f"{log.seconds:.0f} s in all.",
    ]
    result["phases"] = log.to_dict()["phases"]
    save_report(args.results, report_lines(result), result)
    return 0


if __name__ == "__main__":
    run_script(main)
