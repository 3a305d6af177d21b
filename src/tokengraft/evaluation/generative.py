"""`tokengraft eval RUN_DIR` for the generative tasks (pass, style, lexicon): task metrics on the test split.

The base model is loaded beside the tuned one and asked the same questions with
the same decoding, so every "vs base" number compares like with like; its answers go
through the answers cache (answer_cache.py), so they are generated once per question
and model, not once per run. Each model answers each split once: one pass of the
tuned model gives both the <PASS> first-token margins and the <PASS>-banned answers.
Results go to ``RUN_DIR/metrics.json`` (flat numeric keys plus tables) and PNG plots.
Classification runs are scored by evaluation/classification.py (``tokengraft.api.evaluate`` picks).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tokengraft.answer_cache import base_answers
from tokengraft.config import Recipe, check_answers
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.errors import TokengraftError
from tokengraft.generation import answer_probabilities, generate_batch, uses_generate
from tokengraft.models import load_tokenizer
from tokengraft.rundir import (data_dir, load_base, load_graft, read_graft_meta, read_run_recipe, split_file,
                               update_graft_meta, write_metrics)
from tokengraft.tasks import metrics, read_jsonl
from tokengraft.tasks.pass_data import is_correct, read_probe_rows, score_read_probe
from tokengraft.timing import phase

SWEEP_BIASES = (-6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
GENERATIVE_TASKS = ("pass", "style", "lexicon")


def _split_rows(run: Path, name: str) -> list[dict[str, Any]]:
    path = split_file(run, name)
    if not path.is_file():
        raise TokengraftError(f"{path} is missing: `tokengraft eval` needs the run's generated test split")
    return read_jsonl(path)


def evaluate_run(run_dir: str | Path, *, limit: int | None = None, base: bool = True,
                 pass_bias: float | None = None, answers: str | None = None) -> dict[str, Any]:
    """Compute a pass / style / lexicon run's metrics and write ``metrics.json``; ``answers`` overrides
    the recipe's ``eval.answers`` (task pass: "tuned", or "base" for the base model's answers)."""
    run = Path(run_dir)
    meta = read_graft_meta(run)
    recipe = read_run_recipe(run)
    task = recipe.task
    if task not in GENERATIVE_TASKS:
        raise TokengraftError(f"task {task!r} has no metrics; eval supports pass, style, lexicon and classification runs")
    answers = check_answers(answers or recipe.eval.answers, task)
    if answers == "base" and not base:
        raise TokengraftError("answers: base scores the base model's answers, so it needs the base model; "
                              "drop --no-base")
    with phase("evaluation"):
        with phase("load the tuned run and the base model"):
            g = load_graft(run, device=recipe.model.device)
            base_model = None
            if base:
                base_model, _ = load_base(meta, device=recipe.model.device)
        if task == "pass":
            bias = pass_bias if pass_bias is not None else recipe.eval.pass_bias
            if bias is None:
                bias = meta.get("pass_bias")
            if bias is None and base_model is not None:
                bias = calibrate_pass_bias(g.model, g.tokenizer, base_model, run, recipe)
            result = evaluate_pass(g.model, g.tokenizer, base_model, run, recipe, limit=limit, pass_bias=bias,
                                   answerer=base_model if answers == "base" else None)
        elif task == "style":
            result = evaluate_style(g.model, g.tokenizer, base_model, run, recipe, limit=limit)
        else:
            result = evaluate_lexicon(g.model, g.tokenizer, base_model, run, recipe, limit=limit)
        result = {"task": task, **result}
        write_metrics(run, result)
    return result


# ----------------------------------------------------------------------------- <PASS>


def pass_records(model: Any, tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe, *,
                 pass_bias: float | None = None, desc: str = "tuned model",
                 answerer: Any = None) -> list[dict[str, Any]]:
    """One record per row: the unbiased first-position ``margin`` and ``p_pass``, the answer the
    model gives when <PASS> is banned (``forced_answer``), and ``generated`` = what greedy
    decoding with ``pass_bias`` outputs: <PASS> when margin + bias >= 0, else the forced answer.

    One generation pass gives both: the margin is read from the first step's own logits,
    before the ban (generate_batch's ``score_token_id``). With ``answerer`` (the base model:
    ``eval.answers: base``) the tuned model only gives the margin, in one step, and the
    forced answer is the answerer's greedy one (base_greedy_answers, the answers cache)."""
    pass_id = tokenizer.convert_tokens_to_ids("<PASS>")
    gated = answerer is not None
    outputs = generate_batch(model, tokenizer, [r["prompt"] for r in rows],
                             max_new_tokens=1 if gated else recipe.eval.max_new_tokens,
                             system=recipe.data.system, batch_size=recipe.eval.batch_size,
                             desc=f"{desc}: <PASS> margin" + ("" if gated else " and answers (<PASS> banned)"),
                             score_token_id=pass_id, logit_bias={pass_id: -1e4})
    texts = ([a["text"] for a in base_greedy_answers(answerer, tokenizer, rows, recipe)] if gated
             else [out["text"] for out in outputs])
    bias = pass_bias or 0.0
    records = []
    for row, out, text in zip(rows, outputs, texts):
        passes = out["margin"] + bias >= 0
        records.append({**row, "margin": out["margin"], "p_pass": out["p_token"], "forced_answer": text,
                        "generated": "<PASS>" if passes else text})
    return records


def base_greedy_answers(base_model: Any, tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> list[dict[str, Any]]:
    """The base model's greedy answers (``text``, ``ids``) with the decoding its training answers used (cached)."""
    return base_answers(base_model, tokenizer, [r["prompt"] for r in rows],
                        max_new_tokens=max(48, recipe.eval.max_new_tokens), system=recipe.data.system,
                        batch_size=recipe.eval.batch_size, desc="base model: answers")


def base_correctness(base_model: Any, tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> list[bool]:
    """Whether the base model answers each row right, with the decoding its training answers used (cached)."""
    return [is_correct(a["text"], r) for a, r in zip(base_greedy_answers(base_model, tokenizer, rows, recipe), rows)]


def add_base_answers(records: list[dict[str, Any]], base_model: Any, tokenizer: Any, recipe: Recipe,
                     answers: list[dict[str, Any]] | None = None) -> None:
    """Give each answerable record the base model's greedy answer, whether it is right (``base_correct``) and how
    sure the base model was of it (``base_first_max``, ``base_token_probs``: metrics.error_scores).

    The answers come from the answers cache (or ``answers``: base_greedy_answers of the answerable
    records, already read); their probabilities from one forward of the base model over prompt +
    answer (generation.answer_probabilities), so the cache keeps storing text."""
    rows = [r for r in records if r["answerable"]]
    if not rows:
        return
    if answers is None:
        answers = base_greedy_answers(base_model, tokenizer, rows, recipe)
    elif len(answers) != len(rows):
        raise TokengraftError(f"{len(answers)} base answers for {len(rows)} answerable records")
    with phase("base model: answer probabilities"):
        probs = answer_probabilities(base_model, tokenizer, [r["prompt"] for r in rows], [a["ids"] for a in answers],
                                     system=recipe.data.system, batch_size=recipe.eval.batch_size,
                                     desc="base model: answer probabilities")
    for record, answer, p in zip(rows, answers, probs):
        record.update(base_answer=answer["text"], base_correct=is_correct(answer["text"], record),
                      base_first_max=p["first_max"], base_token_probs=p["token_probs"])


def eval_splits(run: Path) -> list[str]:
    """The held-out splits a pass run is scored on: ``test`` first, then every other split file of the
    run's data (e.g. a split of relations never trained on), by name; never train or validation
    (validation calibrates the <PASS> bias)."""
    names = sorted(p.stem for p in data_dir(run).glob("*.jsonl") if p.stem not in ("train", "validation", "test"))
    return ["test", *names]


def calibrate_pass_bias(model: Any, tokenizer: Any, base_model: Any, run: Path, recipe: Recipe) -> float:
    """Choose the <PASS> logit bias on the validation split for ``eval.target_false_pass`` (and
    ``eval.target_recall``, if set: choose_pass_bias); save it in graft.json.

    The bias is what `generate`, `eval` and the exports apply, so plain greedy decoding
    of an exported model behaves as calibrated.
    """
    rows = _split_rows(run, "validation")
    with phase("calibration (validation split)"):
        with phase("tuned model: validation"):
            records = pass_records(model, tokenizer, rows, recipe, desc="calibration")
        answerable = [r for r in records if r["answerable"]]
        with phase("base model: validation"):
            for record, right in zip(answerable, base_correctness(base_model, tokenizer, answerable, recipe)):
                record["base_correct"] = right
        bias, sweep = choose_pass_bias(records, recipe.eval.target_false_pass, target_recall=recipe.eval.target_recall)
    update_graft_meta(run, pass_bias=bias, calibration={"split": "validation", "target_false_pass": recipe.eval.target_false_pass,
                                                        "target_recall": recipe.eval.target_recall,
                                                        "rows": len(records), "sweep": sweep})
    return bias


SPLIT_KEYS = ("n_answerable", "n_unanswerable", "clean_accuracy", "base_clean_accuracy", "clean_accuracy_change",
              "pass_recall",
              "pass_recall_by_kind", "false_pass_rate", "coverage", "selective_accuracy", "wrong_answer_rate", "aurc",
              "by_relation")
"""What each held-out split reports (``result["splits"][name]``) beside its error detection."""


def score_pass_split(model: Any, tokenizer: Any, base_model: Any, rows: list[dict[str, Any]], recipe: Recipe, *,
                     pass_bias: float | None, name: str, answerer: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One split's records (tuned model, and the base model's answers when it is loaded) and metrics:
    pass_metrics, ``base_clean_accuracy``, ``clean_accuracy_change`` (tuned minus base on the same answerable
    questions, with a paired bootstrap interval: metrics.paired_rate_change) and ``error_detection``
    (metrics.error_detection)."""
    with phase(f"tuned model: {name}"):
        records = pass_records(model, tokenizer, rows, recipe, pass_bias=pass_bias, desc=f"tuned model ({name})",
                               answerer=answerer)
    result: dict[str, Any] = {}
    answerable = [r for r in records if r["answerable"]]
    if base_model is not None and answerable:
        with phase(f"base model: {name}"):
            add_base_answers(records, base_model, tokenizer, recipe)
        result["base_clean_accuracy"] = sum(r["base_correct"] for r in answerable) / len(answerable)
    result.update(metrics.pass_metrics(records))
    if base_model is not None and answerable:
        # forgetting beyond sampling noise? the tuned run's right answers minus the base model's, question by question
        result["clean_accuracy_change"] = metrics.paired_rate_change(
            [metrics.answer_correct(r["generated"], r) for r in answerable], [r["base_correct"] for r in answerable])
        result["error_detection"] = metrics.error_detection(records)
    return records, result


def _scoreable(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and all("prompt" in r and isinstance(r.get("answerable"), bool) for r in rows)


def evaluate_pass(model: Any, tokenizer: Any, base_model: Any, run: Path, recipe: Recipe, *,
                  limit: int | None = None, pass_bias: float | None = None, answerer: Any = None) -> dict[str, Any]:
    """The test split's metrics at the top level (as always), every held-out split's (``eval_splits``) under
    ``splits``, and the error detection of each split under ``error_detection`` (by split name). ``answerer``
    (the base model, ``eval.answers: base``) writes the answers the tuned model does not pass on."""
    rows = _split_rows(run, "test")[:limit]
    records, result = score_pass_split(model, tokenizer, base_model, rows, recipe, pass_bias=pass_bias, name="test",
                                       answerer=answerer)
    splits: dict[str, Any] = {"test": {k: result.get(k) for k in SPLIT_KEYS}}
    detection: dict[str, Any] = {}
    if "error_detection" in result:
        detection["test"] = result.pop("error_detection")
    for name in eval_splits(run)[1:]:
        extra = read_jsonl(split_file(run, name))[:limit]
        if not _scoreable(extra):
            continue  # not <PASS> question rows (another tool's file in data/)
        _, split_result = score_pass_split(model, tokenizer, base_model, extra, recipe, pass_bias=pass_bias, name=name,
                                           answerer=answerer)
        if "error_detection" in split_result:
            detection[name] = split_result.pop("error_detection")
        splits[name] = {k: split_result.get(k) for k in SPLIT_KEYS}
    result["splits"] = splits
    if detection:
        result["error_detection"] = detection
        for score in metrics.ERROR_SCORES:  # flat keys for the test split: compare's and the report's columns
            result[f"error_auroc_{score}"] = detection.get("test", {}).get(score, {}).get("auroc")
    result["pass_bias"] = pass_bias or 0.0
    result["answers"] = "tuned" if answerer is None else "base"
    result["sweep"] = bias_sweep(records)
    probe_rows = read_probe_rows(seed=recipe.seed)
    with phase("READ probe"):
        probe_out = generate_batch(model, tokenizer, [r["prompt"] for r in probe_rows], max_new_tokens=16,
                                   system=recipe.data.system, batch_size=recipe.eval.batch_size, desc="READ probe")
    probe = score_read_probe(probe_rows, [o["text"] for o in probe_out])
    per_kind = [v["accuracy"] for v in probe.values() if isinstance(v, dict)]
    result["read_probe_accuracy"] = sum(per_kind) / len(per_kind) if per_kind else None
    result["read_probe"] = probe
    result["examples"] = [{k: r.get(k) for k in ("prompt", "kind", "generated", "gold")} for r in records[:12]]
    with phase("plots"):
        _plot_sweep(result["sweep"], run / "pass_sweep.png")
    return result


def bias_sweep(records: list[dict[str, Any]], biases: tuple[float, ...] = SWEEP_BIASES) -> list[dict[str, Any]]:
    """PASS recall vs false-PASS as a logit bias b on <PASS> moves the decision (the ROC of "Refusal Tokens").

    Exact for greedy decoding: a row starts with <PASS> under bias b iff its first-position
    margin (PASS logit minus the best other logit, measured at the bias the records were
    made with) plus b is >= 0; otherwise the model gives its <PASS>-banned answer.
    """
    answerable = [r for r in records if r["answerable"]]
    unanswerable = [r for r in records if not r["answerable"]]
    base_right = [r for r in answerable if r.get("base_correct")]

    def rate(rows: list[dict[str, Any]], hit) -> float | None:
        return sum(1 for r in rows if hit(r)) / len(rows) if rows else None

    out = []
    for b in biases:
        passes = lambda r, b=b: r["margin"] + b >= 0  # noqa: E731
        answered = [r for r in answerable if not passes(r)]
        correct = [r for r in answered if is_correct(r.get("forced_answer") or r["generated"], r)]
        out.append({
            "bias": b,
            "pass_recall": rate(unanswerable, passes),
            "false_pass_rate": rate(base_right, passes) if base_right else rate(answerable, passes),
            "coverage": len(answered) / len(answerable) if answerable else None,
            "selective_accuracy": len(correct) / len(answered) if answered else None,
            "wrong_answer_rate": (len(answered) - len(correct)) / len(answerable) if answerable else None,
        })
    return out


def choose_pass_bias(records: list[dict[str, Any]], target_false_pass: float,
                     biases: tuple[float, ...] = tuple(x / 2 for x in range(-12, 13)),
                     target_recall: float | None = None) -> tuple[float, list[dict[str, Any]]]:
    """The largest bias (recall grows with it) whose false-PASS rate stays within the target with a
    finite-sample margin: ``(false passes + 1) / (n + 1) <= target`` over the ``n`` validation
    questions the base model answers right (conformal risk control). The plain ``k / n <= target``
    overfits a small split: with n = 40 it admits 2 false passes and sat on the edge of the plateau.
    With too few rows to certify the target at all (n < 1 / target - 1) the smallest bias is taken.

    ``target_recall`` (optional): of the certified biases, the SMALLEST whose validation recall reaches
    it, when one does. Every bias step up also passes on more answerable questions the model would
    have got right (or wrong); once recall is where it is asked to be, passing more only costs
    answers. None (or no certified bias reaching it): the largest certified bias, as above."""
    sweep = bias_sweep(records, biases)
    answerable = [r for r in records if r["answerable"]]
    n = sum(1 for r in answerable if r.get("base_correct")) or len(answerable)
    ok = [row for row in sweep if row["false_pass_rate"] is not None
          and (round(row["false_pass_rate"] * n) + 1) / (n + 1) <= target_false_pass]
    enough = [row for row in ok if target_recall is not None and row["pass_recall"] is not None
              and row["pass_recall"] >= target_recall]
    if enough:
        best = min(enough, key=lambda row: row["bias"])
    else:
        best = max(ok, key=lambda row: row["bias"]) if ok else min(sweep, key=lambda row: row["bias"])
    return float(best["bias"]), sweep


def _plot_sweep(sweep: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(s["false_pass_rate"], s["pass_recall"], s["bias"]) for s in sweep
           if s.get("false_pass_rate") is not None and s.get("pass_recall") is not None]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    for x, y, b in pts:
        ax.annotate(f"{b:+g}", (x, y), fontsize=7)
    ax.set_xlabel("false-PASS rate (answerable)")
    ax.set_ylabel("PASS recall (unanswerable)")
    ax.set_title("<PASS> logit-bias sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- style


def evaluate_style(model: Any, tokenizer: Any, base_model: Any, run: Path, recipe: Recipe, *,
                   limit: int | None = None) -> dict[str, Any]:
    rows = _split_rows(run, "test")[: (limit * 2 if limit else None)]
    terse = [r for r in rows if r["style"] == "terse"]
    verbose = {r["pair_id"]: r for r in rows if r["style"] == "verbose"}
    pairs = [(t, verbose[t["pair_id"]]) for t in terse if t["pair_id"] in verbose]
    # The SAME decoding for both styles: greedy, one max_new_tokens, no min_new_tokens.
    common = dict(max_new_tokens=recipe.eval.max_new_tokens, system=recipe.data.system, batch_size=recipe.eval.batch_size)
    with phase("tuned model: test"):
        out_t = generate_batch(model, tokenizer, [t["prompt"] for t, _ in pairs], desc="terse", **common)
        out_v = generate_batch(model, tokenizer, [v["prompt"] for _, v in pairs], desc="verbose", **common)
    len_t = [len(o["ids"]) for o in out_t]
    len_v = [len(o["ids"]) for o in out_v]
    stats = metrics.length_stats(len_t, len_v, seed=recipe.seed)
    result: dict[str, Any] = {
        "length_ratio": stats["median_ratio"], "length_ratio_ci": [stats["ci_low"], stats["ci_high"]],
        "verbose_longer_rate": stats["verbose_longer_rate"],
        "terse_median_tokens": stats["median_terse"], "verbose_median_tokens": stats["median_verbose"],
        "terse_accuracy": metrics.answer_accuracy([o["text"] for o in out_t], [t for t, _ in pairs]),
        "verbose_accuracy": metrics.answer_accuracy([o["text"] for o in out_v], [v for _, v in pairs]),
    }
    plain = _split_rows(run, "test_untokened")[:limit] if split_file(run, "test_untokened").is_file() else []
    base_known: dict[str, str] = {}
    if plain and base_model is not None:
        with phase("tuned model: test without a style token"):
            tuned_plain = generate_batch(model, tokenizer, [r["prompt"] for r in plain], desc="no style token", **common)
        with phase("base model: test without a style token"):
            # Not from the answers cache: identical_rate below wants the tuned model's own decoding path
            # and batches, so that a model that IS the base model here scores exactly 1.
            base_plain = generate_batch(base_model, tokenizer, [r["prompt"] for r in plain], desc="base model",
                                        through_generate=uses_generate(model), **common)
        result["untokened_median_tokens"] = statistics.median(len(o["ids"]) for o in tuned_plain)
        result["base_untokened_median_tokens"] = statistics.median(len(o["ids"]) for o in base_plain)
        # Same prompts, same batches, same decoding: where the tuned model IS the base model here, this is exactly 1.
        result["untokened_identical_rate"] = metrics.identical_rate([o["ids"] for o in tuned_plain],
                                                                    [o["ids"] for o in base_plain])
        base_known = {r["prompt"]: o["text"] for r, o in zip(plain, base_plain)}
    if base_model is not None and pairs:
        result.update(style_base_accuracy(base_model, tokenizer, pairs, [o["text"] for o in out_t],
                                          [o["text"] for o in out_v], base_known, common))
    result["examples"] = [{"question": t["prompt"].split("\n", 1)[-1], "terse": a["text"], "verbose": b["text"]}
                          for (t, _), a, b in list(zip(pairs, out_t, out_v))[:6]]
    with phase("plots"):
        _plot_lengths(len_t, len_v, run / "style_lengths.png")
    return result


def style_base_accuracy(base_model: Any, tokenizer: Any, pairs: list[tuple[dict[str, Any], dict[str, Any]]],
                        terse: list[str], verbose: list[str], known: dict[str, str], common: dict[str, Any]) -> dict[str, Any]:
    """The base model's accuracy on the pairs' questions, asked without a style token with the same decoding, beside
    each style's: overall (``base_accuracy``) and per relation (``accuracy_by_relation``). ``known`` holds base
    answers already generated, by prompt (the untokened test prompts are these questions)."""
    questions = [t.get("question") or t["prompt"].split("\n", 1)[-1] for t, _ in pairs]
    missing = list(dict.fromkeys(q for q in questions if q not in known))
    if missing:
        answers = base_answers(base_model, tokenizer, missing, desc="base model: answers", **common)
        known = {**known, **{q: o["text"] for q, o in zip(missing, answers)}}
    base = [known[q] for q in questions]
    rows = [t for t, _ in pairs]
    return {"base_accuracy": metrics.answer_accuracy(base, rows),
            "accuracy_by_relation": metrics.accuracy_by_relation(rows, {"terse": terse, "verbose": verbose, "base": base})}


def _plot_lengths(terse: list[int], verbose: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    top = max(terse + verbose + [1])
    bins = range(0, top + 2, max(1, top // 30))
    ax.hist(terse, bins=bins, alpha=0.6, label="<STYLE_TERSE>")
    ax.hist(verbose, bins=bins, alpha=0.6, label="<STYLE_VERBOSE>")
    ax.set_xlabel("generated tokens (same greedy decoding)")
    ax.set_ylabel("questions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- lexicon


STEP0_INITS = ("subwords", "mean", "spherical")


def step0_bits_per_byte(run: Path, recipe: Recipe, texts: list[str], prefix: int | None,
                        inits: tuple[str, ...] = STEP0_INITS) -> dict[str, float]:
    """Bits per byte on the held-out texts with the run's new tokens added and initialised but NOT trained,
    once per init strategy: how much each init costs before the first step (the base model is the floor)."""
    meta = read_graft_meta(run)
    tokens = [t["token"] for t in meta["tokens"] if t.get("new")]
    out: dict[str, float] = {}
    for init in inits:
        model, tokenizer = load_base(meta, device=recipe.model.device)
        settings = TokenSettings(add=tokens, special=False, init_input=init, init_output=init,
                                 spherical_scale=recipe.tokens.spherical_scale)
        g = graft(model, tokenizer, settings, seed=recipe.seed, verbose=False)
        nll, _, nbytes = metrics.text_nll(g.model, g.tokenizer, texts, prefix_token_id=prefix)
        out[init] = metrics.bits_per_byte(nll, nbytes)
    return out


def evaluate_lexicon(model: Any, tokenizer: Any, base_model: Any, run: Path, recipe: Recipe, *,
                     limit: int | None = None) -> dict[str, Any]:
    texts = [r["text"] for r in _split_rows(run, "test")[:limit]]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    nll, tokens, nbytes = metrics.text_nll(model, tokenizer, texts, prefix_token_id=prefix)
    result: dict[str, Any] = {"bits_per_byte": metrics.bits_per_byte(nll, nbytes),
                              "tokens_per_byte": metrics.tokens_per_byte(tokens, nbytes), "test_bytes": nbytes}
    if base_model is not None:
        base_tok = load_tokenizer(read_graft_meta(run)["base_model"])
        b_nll, b_tokens, b_bytes = metrics.text_nll(base_model, base_tok, texts, prefix_token_id=prefix)
        result["base_bits_per_byte"] = metrics.bits_per_byte(b_nll, b_bytes)
        result["base_tokens_per_byte"] = metrics.tokens_per_byte(b_tokens, b_bytes)
        result["tokens_per_byte_reduction"] = 1.0 - result["tokens_per_byte"] / result["base_tokens_per_byte"]
        for init, value in step0_bits_per_byte(run, recipe, texts, prefix).items():
            result[f"step0_bits_per_byte_{init}"] = value
    new_ids = set(read_graft_meta(run)["trainable_ids"])
    excerpts = [t[:200] for t in texts[:16]]
    # Asked through the chat template (the instruct model replying to an excerpt) and, what a language
    # lexicon is for, continuing the excerpt as raw text the way training read it; beside them, how often
    # the new tokens occur in the held-out text itself (what writing like the held-out text would give).
    for key, raw_text in (("generated_new_token_rate", False), ("continuation_new_token_rate", True)):
        outs = generate_batch(model, tokenizer, excerpts, max_new_tokens=48, system=recipe.data.system,
                              batch_size=recipe.eval.batch_size, raw_text=raw_text,
                              desc="generation (raw text)" if raw_text else "generation (chat)")
        result[key] = new_token_rate([o["ids"] for o in outs], new_ids)
        if raw_text:
            result["continuation_examples"] = [{"excerpt": e[-60:], "continuation": o["text"][:160]}
                                               for e, o in zip(excerpts[:3], outs)]
    result["test_text_new_token_rate"] = new_token_rate(
        [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], new_ids)
    return result


def new_token_rate(sequences: list[list[int]], new_ids: set[int]) -> float:
    """The share of all token ids in ``sequences`` that are new tokens (0.0 for no tokens)."""
    total = sum(len(ids) for ids in sequences)
    return sum(i in new_ids for ids in sequences for i in ids) / max(1, total)
