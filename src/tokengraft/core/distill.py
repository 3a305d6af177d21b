"""Output rows fitted so that a new token is as likely as its pieces were (a distillation-style init).

Why: a new word's row decides two things. READ (input side) it should mean what its
pieces meant, which the subword mean (FVT, init ``subwords``) approximates well. WRITE
(output side) the model should predict the new token exactly where it used to predict
the word's pieces, with the same probability, or the expanded model starts worse
than the base on the same text (the lexicon demo's step-0 bits per byte). The mean
of the pieces' output rows does not give that: its logit is the AVERAGE of the pieces'
logits, not the log-probability of the whole piece sequence.

The target is known exactly at any context ``c`` the training text provides.
The base model assigned the piece sequence p1..pk the log-probability
``log p(p1..pk | c) = logit(p1 | c) - logZ(c) + sum_j log p(pj | c, p1..pj-1)``; the
new token gets that same log-probability (before renormalisation) when its logit is

    target(c) = logit(p1 | c) + sum_{j >= 2} log p(pj | c, p1..pj-1)

(the normaliser ``logZ(c)`` cancels). Its logit is ``h(c) . row``, linear in the row,
so the row that matches the targets on a sample of hidden states ``H`` [n, hidden] is
a least-squares problem. It is anchored at the row the init already gave (``e0``):

    row = e0 + argmin_d |H d - (target - H e0)|^2 + lambda |d|^2

the smallest change of ``e0`` that fits the targets. With ``lambda = 0`` and at most
``hidden`` independent contexts the fit is exact (the tests check it against the
base model's own probabilities).

Contexts per token: where the expanded tokenizer USES the token in the training text
(the positions that matter; the continuation terms come from one teacher-forced pass
over the text written with the pieces), plus a shared sample of other positions, whose
target is ``logit(p1 | c)`` plus the token's mean continuation log-probability (the
model should keep it about as unlikely there as its pieces were). A token that the
scanned text never uses keeps its init.

On a tied model (SmolLM2) one row is both READ and WRITTEN: the fit moves the shared
row, anchored at the input init, so its input meaning moves as little as the fit
allows. A model that soft-caps its logits (Gemma 2) gets an approximate fit: the
targets use the uncapped logits. Only the row-sparse backend (``tokens.backend: rows``) is supported: the rows
are small tensors there, written in place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft

DISTILL_TOKENS = 50_000
"""Training-text tokens scanned at most (one forward pass each; ~1 min on one CPU thread for SmolLM2-135M)."""
DISTILL_POSITIVES = 32
"""Contexts per token where the token is used (more add little and cost a bigger system)."""
DISTILL_NEGATIVES = 128
"""Shared contexts where the token is not used: keep it unlikely where its pieces were unlikely."""
DISTILL_RIDGE = 1e-2
"""lambda relative to the mean squared norm of the contexts' hidden states: 0 fits exactly, larger stays nearer e0."""
WINDOW = 256
"""Tokens per forward pass."""


@dataclass
class DistillReport:
    """What the fit did: how many tokens it fitted and how close their logits came to the targets."""

    fitted: int
    unused: int  # new tokens the scanned text never used: rows left at their init
    scanned_tokens: int
    contexts: int  # hidden states gathered (positive occurrences + shared negatives)
    rms_error_before: float  # logit error on the fitted contexts, init rows
    rms_error_after: float  # ... fitted rows
    mean_shift: float  # mean L2 norm of (row - init row) over fitted tokens

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        return (f"distilled output rows: {self.fitted:,} fitted, {self.unused:,} unused in {self.scanned_tokens:,} "
                f"scanned tokens; logit RMS error {self.rms_error_before:.3f} -> {self.rms_error_after:.3f}")


@dataclass
class _Occurrence:
    token: int  # index into the new tokens
    window: int
    position: int  # position of the first piece in the window's base-id stream


def _base_stream(ids: list[int], expand: dict[int, list[int]],
                 token_index: dict[int, int]) -> tuple[list[int], list[tuple[int, int]]]:
    """The ids with every new id replaced by its pieces, and (token index, first-piece position) per use."""
    stream: list[int] = []
    uses: list[tuple[int, int]] = []
    for i in ids:
        pieces = expand.get(i)
        if pieces is None:
            stream.append(i)
        else:
            uses.append((token_index[i], len(stream)))
            stream.extend(pieces)
    return stream, uses


def _ridge_solve(h: torch.Tensor, residual: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_d |h d - residual|^2 + lambda |d|^2 (lambda = ridge x mean |h_i|^2); ridge 0: the minimum-norm
    exact solution. Solved as a stacked least-squares problem in float64, never through h h^T (which
    squares the condition number)."""
    lam = ridge * float((h ** 2).sum(1).mean())
    if lam > 0:
        h = torch.cat([h, lam ** 0.5 * torch.eye(h.shape[1], dtype=h.dtype, device=h.device)])
        residual = torch.cat([residual, torch.zeros(h.shape[1], dtype=residual.dtype, device=residual.device)])
    return torch.linalg.lstsq(h.cpu(), residual.unsqueeze(-1).cpu(), driver="gelsd").solution.squeeze(-1).to(h.device)


def fit_output_rows(g: Graft, texts: list[str], *, max_tokens: int = DISTILL_TOKENS,
                    positives: int = DISTILL_POSITIVES, negatives: int = DISTILL_NEGATIVES,
                    ridge: float = DISTILL_RIDGE, seed: int = 0) -> DistillReport:
    """Fit the new tokens' output rows (the shared row on a tied model) to their pieces' probabilities on ``texts``.

    ``texts`` should be training text (never held-out text). Writes the rows in place.
    """
    if g.rows is None:
        raise TokengraftError("the distilled output init needs tokens.backend: rows")
    if ridge < 0:
        raise TokengraftError(f"the ridge must be >= 0, got {ridge}")
    tokens = list(g.report.added)
    if not tokens:
        raise TokengraftError("no new token to fit: the distilled output init applies to tokens.add words")
    tokenizer, model, rows = g.tokenizer, g.model, g.rows
    new_ids = [g.report.ids[t] for t in tokens]
    token_index = {i: k for k, i in enumerate(new_ids)}
    expand = {g.report.ids[t]: g.report.pieces[t] for t in tokens}
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise TokengraftError("the tokenizer has no BOS or EOS token to start each window with")

    # 1. Windows of the text written with base ids; keep those that bring uses of tokens still short of contexts.
    windows: list[list[int]] = []
    occurrences: list[_Occurrence] = []
    seen = [0] * len(tokens)
    budget = max_tokens
    for text in texts:
        stream, uses = _base_stream(tokenizer.encode(text, add_special_tokens=False), expand, token_index)
        for start in range(0, len(stream), WINDOW - 1):
            chunk = [prefix] + stream[start:start + WINDOW - 1]
            inside = [(k, q - start + 1) for k, q in uses
                      if start <= q and q + len(expand[new_ids[k]]) <= start + WINDOW - 1]
            if not any(seen[k] < positives for k, _ in inside) or budget <= 0:
                continue
            for k, q in inside:
                if seen[k] < positives:
                    seen[k] += 1
                    occurrences.append(_Occurrence(k, len(windows), q))
            windows.append(chunk)
            budget -= len(chunk)
        if budget <= 0:
            break
    if not occurrences:
        raise TokengraftError("the training text never uses the new tokens; the distilled output init has nothing to fit")

    # 2. One teacher-forced pass per window: hidden states at the head, log p of each next token.
    hf_head = rows.base_head
    if hf_head is None:
        raise TokengraftError("the model has no output head to fit")
    weight = hf_head.weight.detach().float()  # [V, H]
    bias = getattr(hf_head, "bias", None)
    head = unwrap_peft(model).get_output_embeddings()  # the row-sparse head: it sees what the base head saw
    hidden_states: list[torch.Tensor] = []
    next_logp: list[torch.Tensor] = []

    def capture(module: Any, args: tuple) -> tuple:
        hidden_states.append(args[0][0].detach().float())  # [T, H] (batch of one)
        return (args[0][:, :1],) + tuple(args[1:])  # the head then computes one position only

    handle = head.register_forward_pre_hook(capture)
    was_training = model.training
    model.eval()
    device = weight.device
    try:
        with torch.no_grad():
            for chunk in windows:
                ids = torch.tensor([chunk], device=device)
                model(input_ids=ids, use_cache=False)
                h = hidden_states[-1]
                logits = h @ weight.T + (bias.detach().float() if bias is not None else 0.0)  # [T, V] base model
                logp = torch.log_softmax(logits[:-1], dim=-1)
                next_logp.append(logp.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1))  # [T-1]
    finally:
        handle.remove()
        model.train(was_training)

    # 3. Targets: positives exactly, negatives from the first piece's logit plus the mean continuation.
    first = torch.tensor([expand[i][0] for i in new_ids], device=device)
    pos_h: list[list[torch.Tensor]] = [[] for _ in tokens]
    pos_t: list[list[float]] = [[] for _ in tokens]
    continuation: list[list[float]] = [[] for _ in tokens]
    for occ in occurrences:
        h = hidden_states[occ.window][occ.position - 1]  # predicts the first piece
        k = len(expand[new_ids[occ.token]])
        rest = float(next_logp[occ.window][occ.position:occ.position + k - 1].sum())  # log p(p2..pk | ...)
        first_logit = float(h @ weight[first[occ.token]]) + (float(bias[first[occ.token]]) if bias is not None else 0.0)
        pos_h[occ.token].append(h)
        pos_t[occ.token].append(first_logit + rest)
        continuation[occ.token].append(rest)
    rng = random.Random(seed)
    used = {(occ.window, occ.position - 1) for occ in occurrences}  # a negative there would contradict a positive
    all_positions = [(w, t) for w, h in enumerate(hidden_states) for t in range(h.shape[0]) if (w, t) not in used]
    sample = rng.sample(all_positions, min(negatives, len(all_positions)))
    neg_h = torch.stack([hidden_states[w][t] for w, t in sample]) if sample else torch.empty(0, weight.shape[1])
    neg_first = neg_h @ weight[first].T  # [n_neg, n_tokens]
    if bias is not None:
        neg_first = neg_first + bias.detach().float()[first]

    # 4. Solve per token, anchored at its current row.
    target_rows = rows.output_rows if rows.output_rows is not None else rows.input_rows
    slot_of = {int(i): s for s, i in enumerate(rows.ids.tolist())}
    new_bias = {i: float(bias[i]) for i in new_ids if bias is not None and i < weight.shape[0]}
    err_before = err_after = 0.0
    n_ctx = fitted = 0
    shift = 0.0
    with torch.no_grad():
        for k, i in enumerate(new_ids):
            if not pos_h[k]:
                continue
            h = torch.cat([torch.stack(pos_h[k]), neg_h])  # [n, H]
            target = torch.tensor(pos_t[k] + [0.0] * neg_h.shape[0], device=device)
            mean_rest = sum(continuation[k]) / len(continuation[k])
            target[len(pos_t[k]):] = neg_first[:, k] + mean_rest
            target = target - new_bias.get(i, 0.0)
            slot = slot_of[i]
            e0 = target_rows[slot].detach().double().clone()
            h64 = h.double()
            residual = target.double() - h64 @ e0
            row = e0 + _ridge_solve(h64, residual, ridge)
            target_rows[slot] = row.to(target_rows.dtype)
            err_before += float((residual ** 2).sum())
            err_after += float(((target.double() - h64 @ row) ** 2).sum())
            shift += float((row - e0).norm())
            n_ctx += len(h)
            fitted += 1
    return DistillReport(fitted=fitted, unused=len(tokens) - fitted, scanned_tokens=sum(len(w) for w in windows),
                         contexts=len(occurrences) + len(sample),
                         rms_error_before=(err_before / max(1, n_ctx)) ** 0.5,
                         rms_error_after=(err_after / max(1, n_ctx)) ** 0.5, mean_shift=shift / max(1, fitted))
