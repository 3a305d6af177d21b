"""Task metrics: abstention (`<PASS>`), style length control, and lexicon compression/perplexity.

Everything except ``text_nll`` is a pure function of plain records.

PASS records are dicts with:
``answerable`` (bool), ``kind``, ``generated`` (the tuned model's greedy output,
decoded WITHOUT skipping special tokens), ``gold`` and ``aliases``, ``p_pass``
(probability of `<PASS>` at the first answer position), ``base_correct``
(bool, or None when the base model was not asked) and optionally
``forced_answer`` (the tuned model's greedy answer with `<PASS>` banned).
A row is *passed* when its output starts with `<PASS>`; an answer is *correct*
when it is not a pass and contains the gold answer or an alias as whole words.

Rates over answerable rows: ``coverage`` = answered share, ``clean_accuracy`` =
correct share, ``selective_accuracy`` = correct among answered,
``wrong_answer_rate`` = answered but wrong. Over unanswerable rows:
``pass_recall``. Against the base model: ``idk_recall`` = passed share of the
questions the base model got wrong, ``idk_error_rate`` = passed share of those
it got right. ``false_pass_rate`` is the same quantity as ``idk_error_rate``
when ``base_correct`` is known; without it, it falls back to the passed share of
all answerable rows, so it is always defined (``idk_*`` are then None).
``by_relation`` gives, per ``relation`` of the answerable rows, ``n``,
``clean_accuracy``, the ``passed`` share and ``base_clean_accuracy``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tokengraft.errors import TokengraftError
from tokengraft.tasks.pass_data import PASS_TOKEN, is_correct

Record = Mapping[str, Any]


def _rate(num: int | float, den: int) -> float | None:
    return None if den == 0 else num / den


def is_pass(text: str) -> bool:
    return text.strip().startswith(PASS_TOKEN)


def answer_correct(text: str, record: Record) -> bool:
    """Not a pass, and the gold answer (or an alias) is in ``text``: ``pass_data.is_correct``."""
    return is_correct(text, record)


def _forced_correct(record: Record) -> bool:
    """Correctness of the answer the model gives when it does not pass (see ``forced_answer``)."""
    if record.get("forced_answer") is not None:
        return answer_correct(record["forced_answer"], record)
    return answer_correct(record["generated"], record)


def _false_pass_rows(answerable: Sequence[Record]) -> list[Record]:
    """Rows a pass on is a false pass: base-right rows when the base was asked, else all answerable rows."""
    if any(r.get("base_correct") is not None for r in answerable):
        return [r for r in answerable if r.get("base_correct") is True]
    return list(answerable)


def pass_metrics(records: Sequence[Record]) -> dict[str, Any]:
    """All PASS metrics from greedy generations (see the module docstring for definitions)."""
    ans = [r for r in records if r["answerable"]]
    unans = [r for r in records if not r["answerable"]]
    passed = {id(r): is_pass(r["generated"]) for r in records}
    correct = {id(r): answer_correct(r["generated"], r) for r in ans}
    answered = [r for r in ans if not passed[id(r)]]
    base_known = [r for r in ans if r.get("base_correct") is not None]
    base_right = [r for r in base_known if r["base_correct"]]
    base_wrong = [r for r in base_known if not r["base_correct"]]
    fpr_rows = _false_pass_rows(ans)
    by_kind: dict[str, float | None] = {}
    for kind in sorted({r["kind"] for r in unans}):
        rows = [r for r in unans if r["kind"] == kind]
        by_kind[kind] = _rate(sum(passed[id(r)] for r in rows), len(rows))
    # Per relation: where a tuned model forgets or passes (issue 19: the held-out relations are not alike).
    by_relation: dict[str, dict[str, Any]] = {}
    for relation in sorted({r["relation"] for r in ans if r.get("relation")}):
        rows = [r for r in ans if r.get("relation") == relation]
        known = [r for r in rows if r.get("base_correct") is not None]
        by_relation[relation] = {
            "n": len(rows), "clean_accuracy": _rate(sum(correct[id(r)] for r in rows), len(rows)),
            "passed": _rate(sum(passed[id(r)] for r in rows), len(rows)),
            "base_clean_accuracy": _rate(sum(r["base_correct"] for r in known), len(known)) if known else None}
    return {
        "n_answerable": len(ans), "n_unanswerable": len(unans),
        "clean_accuracy": _rate(sum(correct.values()), len(ans)),
        "pass_recall": _rate(sum(passed[id(r)] for r in unans), len(unans)),
        "pass_recall_by_kind": by_kind,
        "by_relation": by_relation,
        "false_pass_rate": _rate(sum(passed[id(r)] for r in fpr_rows), len(fpr_rows)),
        "coverage": _rate(len(answered), len(ans)),
        "selective_accuracy": _rate(sum(correct[id(r)] for r in answered), len(answered)),
        "wrong_answer_rate": _rate(sum(1 for r in answered if not correct[id(r)]), len(ans)),
        "idk_recall": _rate(sum(passed[id(r)] for r in base_wrong), len(base_wrong)) if base_known else None,
        "idk_error_rate": _rate(sum(passed[id(r)] for r in base_right), len(base_right)) if base_known else None,
        "aurc": aurc(records),
    }


def _aurc_from(confidence: np.ndarray, errors: np.ndarray) -> float:
    """Mean selective risk over coverages 1/n..n/n, most confident first; ties split evenly.

    Rows with equal confidence cannot be ordered, so inside a tie group each
    row contributes the group's mean error: the result does not depend on input order.
    """
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], errors[order].astype(float)
    n = len(conf)
    expected = np.empty(n)
    i = 0
    while i < n:
        j = i
        while j < n and conf[j] == conf[i]:
            j += 1
        expected[i:j] = err[i:j].mean()
        i = j
    risks = np.cumsum(expected) / np.arange(1, n + 1)
    return float(risks.mean())


def aurc(records: Sequence[Record]) -> float | None:
    """Area under the risk-coverage curve over answerable rows, confidence = 1 - ``p_pass``.

    Error = the answer the model gives when it answers (``forced_answer`` if
    present, else ``generated``; a `<PASS>` output counts as an error when forced
    to cover the row). Lower is better; a perfect abstention score reaches the
    minimum possible for the error rate (see ``aurc_optimal``).
    """
    rows = [r for r in records if r["answerable"] and r.get("p_pass") is not None]
    if not rows:
        return None
    conf = np.array([1.0 - float(r["p_pass"]) for r in rows])
    err = np.array([not _forced_correct(r) for r in rows])
    return _aurc_from(conf, err)


def aurc_optimal(records: Sequence[Record]) -> float | None:
    """The AURC of an oracle that covers every correct row before any wrong one."""
    rows = [r for r in records if r["answerable"] and r.get("p_pass") is not None]
    if not rows:
        return None
    err = np.array([not _forced_correct(r) for r in rows])
    return _aurc_from(-err.astype(float), err)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and sorted_values[j] == sorted_values[i]:
            j += 1
        ranks[order[i:j]] = (i + j + 1) / 2  # mean of the ranks i+1 .. j
        i = j
    return ranks


def _scored(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise TokengraftError(f"need one score per label; got {s.shape} scores and {y.shape} labels")
    if not np.all(np.isfinite(s)):
        raise TokengraftError("error-detection scores must be finite numbers")
    return s, y


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` (higher = more likely positive) for the boolean ``labels``.

    The Mann-Whitney form: the chance that a random positive scores above a random
    negative, a tie counting one half (average ranks), so it does not depend on the
    order of the rows. None when either class is empty (the area is undefined).
    """
    s, y = _scored(scores, labels)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


BOOTSTRAP_RESAMPLES = 1000


def auroc_gain(scores: Sequence[float], baseline: Sequence[float], labels: Sequence[bool], *,
               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any] | None:
    """``auroc(scores) - auroc(baseline)`` on the same rows, with a paired percentile bootstrap 95% interval.

    Rows are resampled with both scores kept together (resamples that hold one class only are
    skipped; ``resamples`` in the result counts those used). At a few hundred rows and a few dozen
    positives one AUROC moves by several hundredths from sample to sample: the interval says
    whether a score beats a baseline beyond that. None when either class is empty."""
    s, y = _scored(scores, labels)
    b, _ = _scored(baseline, labels)
    if y.all() or not y.any():
        return None
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        gains.append(auroc(s[idx], y[idx]) - auroc(b[idx], y[idx]))
    low, high = np.percentile(gains, [2.5, 97.5]) if gains else (float("nan"), float("nan"))
    return {"gain": auroc(s, y) - auroc(b, y), "ci95": [float(low), float(high)], "resamples": len(gains)}


def paired_rate_change(after: Sequence[bool], before: Sequence[bool], *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> dict[str, Any] | None:
    """Mean of ``after`` minus mean of ``before`` over the same rows (e.g. the tuned model's right answers
    against the base model's on the same questions), with a paired percentile bootstrap 95% interval.
    None without rows."""
    a = np.asarray(after, dtype=float)
    b = np.asarray(before, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise TokengraftError(f"need one pair per row; got {a.shape} and {b.shape}")
    if not len(a):
        return None
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"change": float(diff.mean()), "ci95": [float(low), float(high)], "n": int(len(diff))}


def risk_coverage_area(scores: Sequence[float], errors: Sequence[bool]) -> float | None:
    """AURC when rows are kept least-suspect first: ``scores`` say how likely each row is an error
    (higher = dropped first), ``errors`` whether it is one. Mean selective risk over coverages
    1/n..n/n, ties split evenly; lower is better, the error rate is what a random order gets on
    average, and ``aurc_optimal`` style oracles the floor. None without rows."""
    s, y = _scored(scores, errors)
    if len(s) == 0:
        return None
    return _aurc_from(-s, y)


ERROR_SCORES: dict[str, str] = {
    "p_pass": "p(<PASS>) of the tuned model at the first answer position (raw: before any calibrated bias)",
    "max_softmax": "1 - the base model's max softmax probability at its first answer token",
    "min_token_prob": "1 - the base model's smallest token probability over its greedy answer",
}
"""The error-detection scores ``error_detection`` compares: the tuned model's <PASS> against the base
model's own confidence (higher = more likely the base model's greedy answer is wrong)."""


BASELINE_SCORES = ("max_softmax", "min_token_prob")
"""The base model's own confidence among ``ERROR_SCORES``: what a <PASS> has to beat."""


def error_scores(record: Record) -> dict[str, float | None]:
    """One record's ``ERROR_SCORES`` from ``p_pass``, ``base_first_max`` and ``base_token_probs``.

    An empty base answer (the model stopped at once) has no token probabilities: its
    minimum falls back to the first-position maximum, the probability of stopping."""
    first = record.get("base_first_max")
    probs = record.get("base_token_probs") or ([first] if first is not None else [])
    p_pass = record.get("p_pass")
    return {"p_pass": None if p_pass is None else float(p_pass),
            "max_softmax": None if first is None else 1.0 - float(first),
            "min_token_prob": 1.0 - float(min(probs)) if probs else None}


def error_detection(records: Sequence[Record]) -> dict[str, Any]:
    """How well each of ``ERROR_SCORES`` finds the answerable rows the base model answers wrong.

    Label: ``base_correct`` is False (rows where the base model was not asked are left
    out). Per score: ``auroc`` (0.5 = chance, higher is better) and ``aurc`` (risk of
    the base model's answers kept least-suspect first; lower is better) over the rows that
    carry the score, beside ``error_rate`` (a random order's expected AURC) and
    ``aurc_optimal`` (every error dropped first). ``p_pass_gain``: p(<PASS>)'s AUROC minus the
    better baseline's (``over``) on the rows carrying both, with a paired bootstrap 95% interval
    (``auroc_gain``). The calibrated <PASS> bias adds a
    constant to the <PASS> logit, which keeps the order of p(<PASS>): both areas are
    the same with or without it.
    """
    rows = [r for r in records if r.get("answerable") and r.get("base_correct") is not None]
    errors = [not r["base_correct"] for r in rows]
    out: dict[str, Any] = {"n": len(rows), "base_errors": sum(errors),
                           "error_rate": _rate(sum(errors), len(rows))}
    out["aurc_optimal"] = risk_coverage_area([float(e) for e in errors], errors) if rows else None
    scored = [error_scores(r) for r in rows]
    for name in ERROR_SCORES:
        pairs = [(s[name], e) for s, e in zip(scored, errors) if s[name] is not None]
        values, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        out[name] = {"n": len(pairs), "auroc": auroc(values, labels) if pairs else None,
                     "aurc": risk_coverage_area(values, labels) if pairs else None}
    baselines = [b for b in BASELINE_SCORES if out[b]["auroc"] is not None]
    if out["p_pass"]["auroc"] is not None and baselines:
        better = max(baselines, key=lambda b: out[b]["auroc"])
        both = [(s["p_pass"], s[better], e) for s, e in zip(scored, errors)
                if s["p_pass"] is not None and s[better] is not None]
        gain = auroc_gain([t[0] for t in both], [t[1] for t in both], [t[2] for t in both])
        if gain is not None:
            out["p_pass_gain"] = {"over": better, **gain}
    return out


def threshold_sweep(records: Sequence[Record], thresholds: Sequence[float]) -> list[dict[str, float | None]]:
    """Metrics when a row is passed iff ``p_pass >= threshold`` (instead of greedy decoding)."""
    ans = [r for r in records if r["answerable"]]
    unans = [r for r in records if not r["answerable"]]
    fpr_rows = _false_pass_rows(ans)
    out = []
    for t in thresholds:
        answered = [r for r in ans if float(r["p_pass"]) < t]
        out.append({
            "threshold": float(t),
            "pass_recall": _rate(sum(float(r["p_pass"]) >= t for r in unans), len(unans)),
            "false_pass_rate": _rate(sum(float(r["p_pass"]) >= t for r in fpr_rows), len(fpr_rows)),
            "coverage": _rate(len(answered), len(ans)),
            "selective_accuracy": _rate(sum(_forced_correct(r) for r in answered), len(answered)),
        })
    return out


def pick_threshold_for_false_pass(records: Sequence[Record], target: float) -> float:
    """The lowest threshold whose false-pass rate is <= ``target`` (the most `<PASS>` recall allowed).

    Candidates are the observed ``p_pass`` values and one just above the
    largest (nothing passed, false-pass rate 0), so an answer always exists.
    Calibrate on the validation split, report on test.
    """
    if not 0.0 <= target <= 1.0:
        raise TokengraftError(f"false-pass target must be in [0, 1], got {target}")
    values = sorted({float(r["p_pass"]) for r in records if r.get("p_pass") is not None})
    if not values:
        raise TokengraftError("no records carry p_pass; score the model's <PASS> probability first")
    candidates = values + [math.nextafter(values[-1], math.inf)]
    for row in threshold_sweep(records, candidates):
        if row["false_pass_rate"] is not None and row["false_pass_rate"] <= target:
            return row["threshold"]
    return candidates[-1]


# ----------------------------------------------------------------------------- style


def length_stats(terse_lengths: Sequence[float], verbose_lengths: Sequence[float], seed: int = 0,
                 n_boot: int = 2000) -> dict[str, float]:
    """Paired length comparison: ``terse_lengths[i]`` and ``verbose_lengths[i]`` answer question i.

    ``median_ratio`` is the median over questions of verbose/terse (a terse length
    of 0 counts as 1 so the ratio stays finite); its 95% CI comes from a
    percentile bootstrap that resamples questions, keeping pairs together.
    """
    t = np.asarray(terse_lengths, dtype=float)
    v = np.asarray(verbose_lengths, dtype=float)
    if t.shape != v.shape or t.ndim != 1 or len(t) == 0:
        raise TokengraftError(f"need two equal-length, non-empty lists of lengths; got {t.shape} and {v.shape}")
    ratios = v / np.maximum(t, 1.0)
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, len(ratios), size=(n_boot, len(ratios)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"n": int(len(t)), "median_ratio": float(np.median(ratios)), "ci_low": float(lo), "ci_high": float(hi),
            "verbose_longer_rate": float(np.mean(v > t)), "median_terse": float(np.median(t)),
            "median_verbose": float(np.median(v))}


def answer_accuracy(generated: Sequence[str], rows: Sequence[Record]) -> float | None:
    """Share of generations that contain the row's gold answer (or an alias) as whole words."""
    if len(generated) != len(rows):
        raise TokengraftError(f"{len(generated)} generations for {len(rows)} rows")
    return _rate(sum(answer_correct(g, r) for g, r in zip(generated, rows)), len(rows))


def identical_rate(tuned: Sequence[Sequence[int]], base: Sequence[Sequence[int]]) -> float | None:
    """Share of prompts whose generated ids are exactly the base model's (untokened prompts: the style must not leak)."""
    if len(tuned) != len(base):
        raise TokengraftError(f"{len(tuned)} tuned generations for {len(base)} base generations")
    return _rate(sum(list(a) == list(b) for a, b in zip(tuned, base)), len(tuned))


def accuracy_by_relation(rows: Sequence[Record], answers: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Per question relation (capital, add, colour, ...): ``n`` and each source's accuracy on those rows.

    ``answers`` maps a source name ("terse", "verbose", "base") to one generation per row,
    so the styles and the base model are scored on exactly the same questions.
    """
    for name, texts in answers.items():
        if len(texts) != len(rows):
            raise TokengraftError(f"{len(texts)} {name} generations for {len(rows)} rows")
    out: dict[str, dict[str, Any]] = {}
    for relation in sorted({r.get("relation", "?") for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.get("relation", "?") == relation]
        out[relation] = {"n": len(idx), **{name: _rate(sum(answer_correct(texts[i], rows[i]) for i in idx), len(idx))
                                           for name, texts in answers.items()}}
    return out


# ----------------------------------------------------------------------------- lexicon


def bits_per_byte(total_nll_nats: float, total_bytes: int) -> float:
    """Nats per token summed over a text -> bits per UTF-8 byte: comparable across tokenizers."""
    return total_nll_nats / (math.log(2) * total_bytes)


def tokens_per_byte(total_tokens: int, total_bytes: int) -> float:
    """Fewer tokens per byte = the vocabulary compresses the text better."""
    return total_tokens / total_bytes


@torch.no_grad()
def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 512, batch_size: int = 4,
             prefix_token_id: int | None = None) -> tuple[float, int, int]:
    """Total next-token NLL (nats) of ``model`` over ``texts``; returns (nll, predicted tokens, bytes).

    Fair across tokenizations: each text is tokenized alone (no special tokens)
    and preceded by one fixed context token (``prefix_token_id``, default the
    tokenizer's BOS, else EOS), so EVERY token of the text is predicted and the
    byte count is simply all UTF-8 bytes of all texts, the same for any
    tokenizer. Comparing a base and an expanded model on the same texts thus
    compares bits per byte of identical content. A text longer than
    ``max_length`` tokens is scored in consecutive windows, each starting with
    the last token of the previous one as context, so every token is predicted
    exactly once.
    """
    if prefix_token_id is None:
        prefix_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix_token_id is None:
        raise TokengraftError("the tokenizer has no BOS or EOS token; pass prefix_token_id to text_nll")
    if max_length < 2:
        raise TokengraftError(f"max_length must be >= 2, got {max_length}")
    windows: list[list[int]] = []
    total_bytes = 0
    for text in texts:
        ids = [prefix_token_id] + tokenizer.encode(text, add_special_tokens=False)
        total_bytes += len(text.encode("utf-8"))
        for start in range(0, len(ids) - 1, max_length - 1):
            windows.append(ids[start:start + max_length])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for b in range(0, len(windows), batch_size):
            batch = windows[b:b + batch_size]
            width = max(len(w) for w in batch)
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for i, w in enumerate(batch):
                input_ids[i, :len(w)] = torch.tensor(w)
                mask[i, :len(w)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (batch, width, vocab)
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = input_ids[:, 1:]
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (batch, width - 1)
            valid = mask[:, 1:].bool()
            total_nll += float(nll[valid].sum())
            total_tokens += int(valid.sum())
    finally:
        model.train(was_training)
    return total_nll, total_tokens, total_bytes
