"""The uncertainty-aware IDK objective (Cohen et al., 2024), beside plain cross-entropy.

At each supervised answer position the target distribution moves part of its mass
from the gold token to ``<PASS>`` in proportion to how wrong the model currently is:

    lambda = Pi * (1 - p(gold) / p(argmax))      (0 when the gold token is the argmax)
    L_idk  = -(1 - lambda) * log p(gold) - lambda * log p(<PASS>)

so the model learns to put probability on ``<PASS>`` exactly where it would
otherwise be wrong. The false-positive regulariser pushes ``<PASS>`` down where the
model is right:

    L_fp   = -beta * log(1 - p(<PASS>))           (only where the gold token is the argmax)

Positions whose target *is* ``<PASS>`` (corrupted / fictional questions) keep plain
cross-entropy. ``lambda`` uses detached probabilities: it is a target weight, not a
path for gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokengraft.errors import TokengraftError


@dataclass
class IdkObjective:
    pass_id: int
    uncertainty_factor: float = 0.5  # Pi in the paper
    fp_weight: float = 1.0  # beta: weight of the false-positive regulariser

    @classmethod
    def for_graft(cls, g: Any, uncertainty_factor: float = 0.5, fp_weight: float = 1.0) -> "IdkObjective":
        if "<PASS>" not in g.report.ids:
            raise TokengraftError("train.objective: idk needs the <PASS> token in tokens.add")
        return cls(pass_id=g.report.ids["<PASS>"], uncertainty_factor=uncertainty_factor, fp_weight=fp_weight)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, num_items: int | None = None) -> torch.Tensor:
        """``logits`` [n, V] and ``targets`` [n] at supervised positions; returns the mean (or /num_items) loss."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
        log_gold = log_probs.gather(-1, targets[:, None]).squeeze(-1)  # [n]
        log_pass = log_probs[:, self.pass_id]  # [n]
        with torch.no_grad():
            probs = log_probs.exp()
            p_max, argmax = probs.max(dim=-1)
            p_gold = log_gold.exp()
            lam = self.uncertainty_factor * (1.0 - p_gold / p_max).clamp(0.0, 1.0)
            answer = targets != self.pass_id
            lam = torch.where(answer, lam, torch.zeros_like(lam))
            right = answer & (argmax == targets)
        loss = -(1.0 - lam) * log_gold - lam * log_pass
        # log(1 - p) computed stably from the log-probability.
        log_not_pass = torch.log1p(-log_pass.exp().clamp(max=1 - 1e-6))
        loss = loss - self.fp_weight * right.float() * log_not_pass
        return loss.sum() / (num_items if num_items else max(1, targets.numel()))


@dataclass
class UntokenedKL:
    """``weight * KL(base || tuned)`` at the supervised positions of rows that hold none of ``token_ids``.

    A prompt without a grafted token should be answered as the base model answers it: the
    style task's plain rows (no style token), the pass task's answerable rows (no <PASS> in the
    prompt or the completion). Cross-entropy on the base model's own greedy answer pins only
    its top token; this term pulls the tuned model's whole next-token distribution toward the
    base model's at those positions, which keeps what LoRA changes from spreading to questions
    training never asks. ``reference`` gives the base logits at the same positions, with no
    gradient (lm.py: the same model with its LoRA switched off). Summed over the positions and
    divided like the cross-entropy (``num_items``), so ``weight`` is per supervised token.

    ``excluded_ids`` (the task's answer tokens, <PASS>) are left out of both distributions,
    each renormalised over the rest: the term is about WHAT the model answers when it answers,
    and whether to answer stays with the task's loss and the calibrated bias. Either way the
    term is exactly 0 while the LoRA is the base function (switched off, or B = 0 at the start).
    """

    weight: float
    token_ids: torch.Tensor  # [k] the grafted ids (tokens.add and train_existing)
    excluded_ids: torch.Tensor | None = None  # [j] ids outside both distributions (Task.answer_tokens)

    def plain_rows(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B]`` True where a row holds none of the grafted tokens."""
        return ~torch.isin(input_ids, self.token_ids.to(input_ids.device)).any(dim=1)

    def __call__(self, logits: torch.Tensor, reference: torch.Tensor, num_items: int | None,
                 n_supervised: int) -> torch.Tensor:
        """``logits`` / ``reference``: ``[n, V]`` tuned and base logits at the same plain-row positions;
        ``n_supervised``: the batch's supervised positions (the divisor when ``num_items`` is None)."""
        logits, reference = logits.float(), reference.float()
        if self.excluded_ids is not None and self.excluded_ids.numel():
            kept = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            kept[self.excluded_ids.to(logits.device)] = False
            logits, reference = logits[:, kept], reference[:, kept]
        log_tuned = torch.log_softmax(logits, dim=-1)
        log_base = torch.log_softmax(reference, dim=-1)
        kl = (log_base.exp() * (log_base - log_tuned)).sum()
        return self.weight * kl / (num_items if num_items else max(1, n_supervised))
