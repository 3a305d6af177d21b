"""Batched greedy generation in the exact prompt format training used.

Prompts go through ``data.ChatFormat.encode_prompt`` (same template, same
system prompt) and are left-padded so one batch decodes together. Outputs are
decoded *without* skipping special tokens, so a generated ``<PASS>`` is visible,
then cut at the end-of-turn / EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tokengraft.core.arch import describe
from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft


def stop_ids(tokenizer: Any, fmt: ChatFormat) -> list[int]:
    """The ids that end a reply: EOS and the chat template's end-of-turn when it is one token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if fmt.end_of_turn:
        pieces = tokenizer(fmt.end_of_turn, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids.append(pieces[0])
    return sorted(set(ids))


def context_limit(model: Any) -> int | None:
    """How many positions a model with a learned absolute position table (GPT-2, OPT) can read; None otherwise.

    Past that table the position lookup is an ``IndexError`` deep in the forward pass;
    rotary and ALiBi models have no such hard edge.
    """
    hf = unwrap_peft(model)
    try:
        learned = describe(hf).position_embedding is not None
    except TokengraftError:
        return None
    limit = getattr(hf.config, "max_position_embeddings", None)
    return int(limit) if learned and limit else None


def check_prompt_lengths(model: Any, encoded: Sequence[list[int]], max_new_tokens: int) -> None:
    """Refuse a prompt that, with the tokens to generate, runs past the model's position table."""
    limit = context_limit(model)
    if limit is None:
        return
    name = getattr(unwrap_peft(model).config, "model_type", "this model")
    for index, ids in enumerate(encoded, start=1):
        room = limit - len(ids)  # positions left after the prompt
        if room < 0 or (room == 0 and max_new_tokens > 0):
            raise TokengraftError(f"prompt {index} is {len(ids)} tokens, but {name} reads at most {limit} positions "
                                  "(learned position embeddings); shorten the prompt")
        if max_new_tokens > room:
            raise TokengraftError(f"prompt {index} is {len(ids)} tokens; with max_new_tokens {max_new_tokens} that "
                                  f"passes the {limit} positions {name} reads; lower max_new_tokens "
                                  f"(--max-new-tokens / eval.max_new_tokens) to {room} or less")


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """Generated ids up to (not including) the first stop token: what follows is padding."""
    for index, token in enumerate(ids):
        if token in stops:
            return ids[:index]
    return ids


def _clean(text: str, fmt: ChatFormat, tokenizer: Any) -> str:
    for stop in filter(None, (fmt.end_of_turn, tokenizer.eos_token)):
        text = text.split(stop, 1)[0]
    return text.strip()


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                   system: str | None = None, batch_size: int = 16, desc: str | None = None,
                   score_token_id: int | None = None, logit_bias: dict[int, float] | None = None,
                   ) -> list[dict[str, Any]]:
    """Greedy continuations; each result has ``text``, ``ids`` and, with ``score_token_id``,
    ``p_token`` = the probability of that token at the first generated position and
    ``margin`` = its logit minus the best other logit there.

    ``logit_bias`` adds a constant to chosen token logits at every step (a calibrated
    ``<PASS>`` bias), the same thing an export folds into the weights.
    """
    fmt = ChatFormat(tokenizer, system=system)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(tokenizer, fmt)
    device = next(model.parameters()).device
    processors = None
    if logit_bias:
        from transformers import LogitsProcessor, LogitsProcessorList

        class _Bias(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                for token, value in logit_bias.items():
                    scores[:, token] += value
                return scores

        processors = LogitsProcessorList([_Bias()])
    results: list[dict[str, Any]] = []
    encoded = [fmt.encode_prompt(p) for p in prompts]
    check_prompt_lengths(model, encoded, max_new_tokens)
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=desc is None, leave=False):
        chunk = encoded[start:start + batch_size]
        ids, mask = _left_pad(chunk, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stops or None, pad_token_id=pad_id, logits_processor=processors,
                             output_scores=score_token_id is not None, return_dict_in_generate=True)
        new = out.sequences[:, ids.shape[1]:]
        first = margin = None
        if score_token_id is not None:
            scores = out.scores[0].float()  # [B, V], after any logit bias
            first = torch.softmax(scores, dim=-1)[:, score_token_id]
            others = scores.clone()
            others[:, score_token_id] = float("-inf")
            # <PASS> is the greedy first token exactly when this margin (+ any extra bias) is >= 0.
            margin = scores[:, score_token_id] - others.max(dim=-1).values
        for i in range(len(chunk)):
            row_ids = until_stop(new[i].tolist(), stops)
            text = tokenizer.decode(row_ids, skip_special_tokens=False)
            item = {"text": _clean(text, fmt, tokenizer), "ids": row_ids}
            if first is not None:
                item["p_token"] = float(first[i])
                item["margin"] = float(margin[i])
            results.append(item)
    return results


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                   system: str | None = None, desc: str | None = None, batch_size: int = 16) -> list[str]:
    return [r["text"] for r in generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              system=system, desc=desc, batch_size=batch_size)]


@torch.no_grad()
def first_answer_states(model: Any, tokenizer: Any, prompts: Sequence[Any], *, system: str | None = None,
                        batch_size: int = 16) -> torch.Tensor:
    """``[n, hidden]``: what the output head reads at the first answer position of each prompt.

    Captured by a pre-hook on the head, so it is the final-normalised hidden state in any
    family (no assumption about where the final norm lives).
    """
    fmt = ChatFormat(tokenizer, system=system)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: captured.append(args[0][:, -1].float().cpu()))
    try:
        encoded = [fmt.encode_prompt(p) for p in prompts]
        check_prompt_lengths(model, encoded, 0)
        for start in range(0, len(encoded), batch_size):
            ids, mask = _left_pad(encoded[start:start + batch_size], pad_id)
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        hook.remove()
    return torch.cat(captured)
