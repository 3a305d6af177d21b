"""Batched greedy generation in the exact prompt format training used, fast on a CPU.

Prompts go through ``data.ChatFormat.encode_prompt`` (same template, same system
prompt). Outputs are decoded *without* skipping special tokens, so a generated
``<PASS>`` is visible, then cut at the end-of-turn / EOS, and in the plain format
(``ChatFormat.stop_strings``) where the next ``\nQuestion:`` would start: an untuned
base model such as Gemma 3 270M never emits EOS after its answer.

The evaluation passes and the base model's answers are greedy decoding over
hundreds of short chat prompts that share their first few dozen tokens (the
template and the system prompt), with answers from 2 to ``max_new_tokens``
tokens. Our own decode loop (rather than ``model.generate``) exploits that:

- the **shared prefix** is run once and its KV cache copied into every batch, so
  each prompt's prefill covers only its own tokens (about two thirds of the
  built-in model's demo prompt is shared);
- prompts are **sorted by length** and batched neighbours, so a batch holds
  almost no padding; results come back in the caller's order;
- a row that emits a stop token (end-of-turn / EOS) or reaches ``max_new_tokens``
  is **dropped from the batch** (and from its KV cache), so the long tail of a
  batch runs on the few rows still writing; the loop ends when no row is left.

Greedy decoding is the same computation either way (left padding is masked out and
positions follow the attention mask, as in ``generate``); tests/test_generation.py
checks the result token for token against a one-prompt-at-a-time, cache-free
reference on several families. Models this loop does not cover — PEFT prompt
learning (its prefix lives in the cache), activated LoRA (its hooks follow each row
of the batch through the cache, so rows may neither leave nor share a prefix
forward), or a ``generation_config`` that asks for extra logits processing
(repetition penalty, suppressed tokens, ...) — go through ``model.generate`` in the
caller's order and batches, as before this loop existed, with the same results format.

``GENERATION_VERSION`` names this decoding: the answers cache (answer_cache.py) keys
on it, so a change that could alter generated tokens must bump it.

**Sampling** (``temperature > 0``, for ``data.know_check_samples``: several answers per
question) takes the same paths, with one ``torch.Generator`` per prompt seeded by the
caller (``seeds``). Each step draws a token per row by the Gumbel-max trick: the argmax of
``logits / temperature`` plus Gumbel noise from the row's own generator is a draw from
``softmax(logits / temperature)``. A row's tokens therefore depend on its prompt and its
seed alone, never on which prompts share its batch, the batch size or the order, so a
sampled answer is as reproducible (and as cacheable) as a greedy one.
``SAMPLING_VERSION`` names this scheme for the answers cache.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from tokengraft.core.arch import describe
from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.methods.alora import ACTIVATION_ATTR
from tokengraft.methods.spec import unwrap_peft

GENERATION_VERSION = 3  # 3: the plain format's stop strings
"""Bump when a change to this module could change generated tokens (it keys the answers cache)."""

DEFAULT_BATCH_SIZE = 64
"""Prompts decoded together. On a CPU a decode step of the 135M built-in model costs about
0.05 s + 3.6 ms per row (one thread), so wider batches amortise the fixed part; finished rows
leave the batch, so a wide batch no longer pays for its longest answer on every row."""

SAMPLING_VERSION = 1
"""Bump when a change could change SAMPLED tokens for the same seeds (it keys sampled answers in the cache)."""

MIN_SHARED_PREFIX = 4
"""Share a prefix's KV cache only when every prompt starts with at least this many equal tokens."""


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


def pad_id(tokenizer: Any) -> int:
    """The id that fills left padding (the tokenizer's pad token, else EOS)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _left_pad(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """Generated ids up to (not including) the first stop token: what follows is padding."""
    for index, token in enumerate(ids):
        if token in stops:
            return ids[:index]
    return ids


def _clean(text: str, tokenizer: Any, stops: Sequence[str]) -> str:
    for stop in filter(None, (tokenizer.eos_token, *stops)):
        text = text.split(stop, 1)[0]
    return text.strip()


STOP_STRING_WINDOW = 16
"""Last generated tokens decoded to look for a stop string (each token holds at least one character)."""


def ends_with_stop_string(ids: list[int], tokenizer: Any, stops: Sequence[str]) -> bool:
    """Whether the last tokens of a reply contain a stop string (the plain format's next turn)."""
    tail = tokenizer.decode(ids[-max(len(s) for s in stops) - STOP_STRING_WINDOW:], skip_special_tokens=False)
    return any(stop in tail for stop in stops)


def before_stop_string(ids: list[int], tokenizer: Any, stops: Sequence[str]) -> list[int]:
    """Generated ids up to the token where a stop string begins (all of them when none occurs)."""
    text = tokenizer.decode(ids, skip_special_tokens=False) if stops else ""
    found = [text.index(stop) for stop in stops if stop in text]
    if not found:
        return ids
    end = len(ids)
    while end > 0 and len(tokenizer.decode(ids[:end], skip_special_tokens=False)) > min(found):
        end -= 1
    return ids[:end]


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving at least one token of each prompt to prefill."""
    if len(encoded) < 2:
        return 0
    first, shortest = encoded[0], min(len(e) for e in encoded)
    n = 0
    while n < shortest - 1 and all(e[n] == first[n] for e in encoded):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


# ----------------------------------------------------------------------------- which path


def _is_prompt_learning(model: Any) -> bool:
    configs = getattr(model, "peft_config", None)
    return isinstance(configs, dict) and any(getattr(c, "is_prompt_learning", False) for c in configs.values())


# generation_config fields that make `generate` process logits beyond greedy argmax: the own loop leaves them to it.
_PROCESSING_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                      "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "min_length",
                      "min_new_tokens", "sequence_bias", "encoder_repetition_penalty", "exponential_decay_length_penalty")
_NEUTRAL = (None, 0, 1.0, [], {})


def _prefix_is_exact(model: Any, longest: int) -> bool:
    """Whether sharing a prefix's cache gives the same attention as a plain left-padded batch.

    A shared prefix puts a row's padding between the prefix and its own tokens. Masked
    positions change nothing under full attention, but a sliding window counts cache slots,
    so a row whose sequence outgrows the window would lose prefix tokens it should still see.
    """
    window = getattr(unwrap_peft(model).config, "sliding_window", None)
    return not (isinstance(window, int) and 0 < window < longest)


def uses_generate(model: Any) -> bool:
    """Whether ``generate_batch`` decodes this model through ``model.generate`` (the own loop would differ).

    A comparison that must be bit for bit (the same model with and without an inactive
    adapter) passes the answer as ``through_generate`` for the other model too."""
    inner = unwrap_peft(model)
    if _is_prompt_learning(model) or getattr(inner.config, "is_encoder_decoder", False):
        return True
    if hasattr(inner, ACTIVATION_ATTR):  # activated LoRA: per-row state across the cache (methods/alora.py)
        return True
    params = inspect.signature(inner.forward).parameters
    if "cache" not in params and "past_key_values" not in params:
        return True
    config = getattr(inner, "generation_config", None)
    return config is not None and any(getattr(config, name, None) not in _NEUTRAL for name in _PROCESSING_FIELDS)


# ----------------------------------------------------------------------------- the own decode loop


@dataclass
class _Rows:
    """Per-row results of one decode, in the batch's order."""

    ids: list[list[int]]
    p_token: list[float] | None = None
    margin: list[float] | None = None


def sample_tokens(logits: torch.Tensor, temperature: float,
                  generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row ``[b]`` drawn from ``softmax(logits / temperature)``, row ``j`` with ``generators[j]``.

    Gumbel-max: ``argmax(logits / T + G)`` with ``G = -log(-log(U))``, ``U`` uniform, is a draw
    from the softmax. The noise of a row comes from its own (CPU) generator, one ``[V]`` draw per
    step, so what a row samples does not depend on the other rows of the batch. A row whose
    generator is None (finished, kept in the batch) gets no noise: its token is thrown away."""
    noise = torch.zeros_like(logits)  # [b, V]
    for j, generator in enumerate(generators):
        if generator is not None:  # U = 0 gives -inf noise: that token is never drawn (probability 2^-24)
            uniform = torch.rand(logits.shape[-1], generator=generator, dtype=torch.float32)
            noise[j] = (-torch.log(-torch.log(uniform))).to(device=logits.device, dtype=logits.dtype)
    return (logits / temperature + noise).argmax(dim=-1)


def row_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row, seeded with its own seed (`sample_tokens`)."""
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def _first_scores(logits: torch.Tensor, token: int) -> tuple[list[float], list[float]]:
    """``p`` = softmax probability of ``token``; ``margin`` = its logit minus the best other logit.

    Measured on the model's own logits (before any ``logit_bias``): <PASS> is the greedy first
    token exactly when margin + bias >= 0, so one pass serves every bias (the sweep)."""
    probs = torch.softmax(logits, dim=-1)[:, token]
    others = logits.clone()
    others[:, token] = float("-inf")
    margin = logits[:, token] - others.max(dim=-1).values
    return probs.tolist(), margin.tolist()


class _Decoder:
    """Greedy (or, with ``temperature``, sampled) decoding with a KV cache for one model: prefill, step,
    drop finished rows."""

    def __init__(self, model: Any, pad: int, stops: list[int], max_new_tokens: int,
                 score_token_id: int | None, logit_bias: dict[int, float] | None,
                 stop_strings: Sequence[str] = (), tokenizer: Any = None, temperature: float = 0.0) -> None:
        self.model = model
        self.temperature = temperature
        self.pad, self.stops, self.max_new_tokens = pad, set(stops), max_new_tokens
        self.stop_strings, self.tokenizer = list(stop_strings), tokenizer
        self.score_token_id, self.logit_bias = score_token_id, logit_bias or {}
        self.device = next(model.parameters()).device
        params = inspect.signature(unwrap_peft(model).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.takes_positions = "position_ids" in params
        self.takes_logits_to_keep = "logits_to_keep" in params

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits at the last position ``[b, V]`` (float32) and the updated cache."""
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True,
                                  # An all-ones mask is dropped, as `generate` does: attention takes its causal fast path.
                                  "attention_mask": None if bool(mask.all()) else mask}
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if self.takes_positions:
            kwargs["position_ids"] = positions
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1].to(dtype=torch.float32, copy=True), cache

    def prefix(self, ids: list[int]) -> Any:
        """The KV cache of the shared prefix (batch 1)."""
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(len(ids), device=self.device)[None]
        _, cache = self.forward(tensor, torch.ones_like(tensor), positions, None)
        return cache

    def decode(self, suffixes: list[list[int]], prefix_cache: Any, prefix_len: int,
               generators: Sequence[torch.Generator] | None = None) -> _Rows:
        """Continuations of ``prefix + suffix`` for each suffix (left-padded together): greedy, or sampled with
        ``generators[j]`` for suffix ``j`` when the decoder has a temperature."""
        batch = len(suffixes)
        ids, mask = _left_pad(suffixes, self.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(batch)
            mask = torch.cat([torch.ones((batch, prefix_len), dtype=torch.long, device=self.device), mask], dim=1)
        positions = mask_positions(mask)[:, -ids.shape[1]:]
        logits, cache = self.forward(ids, mask, positions, cache)
        rows = _Rows(ids=[[] for _ in range(batch)])
        if self.score_token_id is not None:
            rows.p_token, rows.margin = _first_scores(logits, self.score_token_id)
        active = list(range(batch))  # batch rows still writing, in cache order
        last = positions[:, -1]
        can_drop = hasattr(cache, "batch_select_indices")
        for step in range(self.max_new_tokens):
            for token, value in self.logit_bias.items():
                logits[:, token] += value
            if self.temperature > 0 and generators is not None:
                chosen = sample_tokens(logits, self.temperature, [generators[r] if r >= 0 else None for r in active])
            else:
                chosen = logits.argmax(dim=-1)  # [b]; ties go to the lowest id, as in `generate`
            keep: list[int] = []
            for j, token in enumerate(chosen.tolist()):
                row = active[j]
                if row < 0:  # a finished row kept in the batch (a cache that cannot drop rows)
                    continue
                if token in self.stops:
                    active[j] = -1
                    continue
                rows.ids[row].append(token)
                if self.stop_strings and ends_with_stop_string(rows.ids[row], self.tokenizer, self.stop_strings):
                    active[j] = -1  # the reply ended where the next turn starts (cut in generate_batch)
                elif len(rows.ids[row]) < self.max_new_tokens:
                    keep.append(j)
                else:
                    active[j] = -1
            if not keep or step == self.max_new_tokens - 1:
                break
            if can_drop and len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                active, chosen, mask, last = [active[j] for j in keep], chosen[index], mask[index], last[index]
            else:
                chosen = torch.where(torch.tensor([r >= 0 for r in active], device=self.device), chosen,
                                     torch.full_like(chosen, self.pad))
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=torch.long, device=self.device)], dim=1)
            last = last + 1
            logits, cache = self.forward(chosen[:, None], mask, last[:, None], cache)
        return rows


# ----------------------------------------------------------------------------- through `generate`


def _decode_with_generate(model: Any, suffixes: list[list[int]], pad: int, stops: list[int], max_new_tokens: int,
                          score_token_id: int | None, logit_bias: dict[int, float] | None,
                          stop_strings: Sequence[str] = (), tokenizer: Any = None, temperature: float = 0.0,
                          generators: Sequence[torch.Generator] | None = None) -> _Rows:
    """One left-padded batch through ``model.generate`` (models the own loop leaves to it). Sampling keeps
    ``do_sample=False``: a processor makes each row's Gumbel-max draw (`sample_tokens`) the only finite
    score, so greedy search picks the same token the own loop draws."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Bias(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            for token, value in (logit_bias or {}).items():
                scores[:, token] += value
            return scores

    class _Sample(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            chosen = sample_tokens(scores, temperature, list(generators or ()))
            return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)

    processors = ([_Bias()] if logit_bias else []) + ([_Sample()] if temperature > 0 and generators else [])

    device = next(model.parameters()).device
    ids, mask = _left_pad(suffixes, pad)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=stops or None, pad_token_id=pad,
                         logits_processor=LogitsProcessorList(processors) if processors else None,
                         output_logits=score_token_id is not None, return_dict_in_generate=True,
                         **({"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}))
    new = out.sequences[:, ids.shape[1]:]
    rows = _Rows(ids=[until_stop(new[i].tolist(), stops) for i in range(len(suffixes))])
    if score_token_id is not None:  # out.logits: the raw logits, before the bias
        rows.p_token, rows.margin = _first_scores(out.logits[0].float(), score_token_id)
    return rows


# ----------------------------------------------------------------------------- the entry points


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                   system: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, desc: str | None = None,
                   score_token_id: int | None = None, logit_bias: dict[int, float] | None = None,
                   through_generate: bool | None = None, raw_text: bool = False, temperature: float = 0.0,
                   seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Greedy continuations, in the order of ``prompts``; each result has ``text`` and ``ids`` and,
    with ``score_token_id``, ``p_token`` = the probability of that token at the first generated
    position and ``margin`` = its logit minus the best other logit there, both measured on the
    model's own logits (before ``logit_bias``).

    ``logit_bias`` adds a constant to chosen token logits at every step (a calibrated
    ``<PASS>`` bias, or -1e4 to ban a token), the same thing an export folds into the weights.
    ``through_generate`` chooses the decoding path (default: ``uses_generate(model)``).
    ``raw_text``: the prompts are plain text to continue, as a language model reads a document
    (BOS, or EOS when there is none, then the text; no chat template, stop only at EOS).
    ``temperature > 0`` samples instead (module docstring): ``seeds`` holds one seed per prompt, and a
    prompt's answer depends on its seed, not on its batch; the same prompt twice with two seeds gives
    two draws.
    """
    if temperature < 0 or (temperature > 0 and (seeds is None or len(seeds) != len(prompts))):
        raise TokengraftError(f"sampling needs temperature > 0 and one seed per prompt; got temperature {temperature} "
                              f"and {'no' if seeds is None else len(seeds)} seeds for {len(prompts)} prompts")
    generators = row_generators(seeds) if temperature > 0 and seeds is not None else None
    fmt = ChatFormat(tokenizer, system=system)
    pad, stops = pad_id(tokenizer), stop_ids(tokenizer, fmt)
    if raw_text:
        first_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        encoded = [[first_id] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stop_strings: list[str] = []
    else:
        encoded = [fmt.encode_prompt(p) for p in prompts]
        stop_strings = list(fmt.stop_strings)
    if not encoded:
        return []
    check_prompt_lengths(model, encoded, max_new_tokens)
    use_loop = not (uses_generate(model) if through_generate is None else through_generate)
    # Sorted by length (stable) for the own loop; `generate` keeps the caller's order and batches.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if use_loop else list(range(len(encoded)))
    decoder = (_Decoder(model, pad, stops, max_new_tokens, score_token_id, logit_bias, stop_strings, tokenizer,
                        temperature) if use_loop else None)
    longest = max(len(e) for e in encoded) + max_new_tokens
    prefix_len = shared_prefix_length(encoded) if use_loop and _prefix_is_exact(model, longest) else 0
    prefix_cache = decoder.prefix(encoded[0][:prefix_len]) if decoder is not None and prefix_len else None
    results: list[dict[str, Any] | None] = [None] * len(encoded)
    ends = [] if raw_text else [fmt.end_of_turn, *stop_strings]  # what the returned text is cut at
    size = max(1, batch_size)
    with tqdm(total=len(encoded), desc=desc, disable=desc is None, leave=False) as bar:
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            suffixes = [encoded[i][prefix_len:] for i in chunk]
            chunk_generators = [generators[i] for i in chunk] if generators is not None else None
            if decoder is not None:
                rows = decoder.decode(suffixes, prefix_cache, prefix_len, chunk_generators)
            else:
                rows = _decode_with_generate(model, suffixes, pad, stops, max_new_tokens, score_token_id, logit_bias,
                                             stop_strings, tokenizer, temperature, chunk_generators)
            for j, index in enumerate(chunk):
                ids = before_stop_string(rows.ids[j], tokenizer, stop_strings)
                text = tokenizer.decode(ids, skip_special_tokens=False)
                item: dict[str, Any] = {"text": _clean(text, tokenizer, ends), "ids": ids}
                if rows.margin is not None and rows.p_token is not None:
                    item["p_token"] = float(rows.p_token[j])
                    item["margin"] = float(rows.margin[j])
                results[index] = item
            bar.update(len(chunk))
    return [r for r in results if r is not None]


def pass_gated_generate(tuned: Any, base: Any, tokenizer: Any, prompts: Sequence[Any], *, bias: float = 0.0,
                        max_new_tokens: int = 32, system: str | None = None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
    """``eval.answers: base``: ``tuned`` decides at the first answer position whether to answer <PASS>
    (its margin + ``bias`` >= 0: what its greedy decoding with the bias would emit first) and ``base``,
    the model it was trained from, answers every other prompt greedily. Results as generate_batch's,
    each with the tuned model's ``margin`` and ``p_token``; a pass is the <PASS> token alone."""
    pass_id = tokenizer.convert_tokens_to_ids("<PASS>")
    gate = generate_batch(tuned, tokenizer, prompts, max_new_tokens=1, system=system, batch_size=batch_size,
                          desc="tuned model: <PASS> margin", score_token_id=pass_id, logit_bias={pass_id: -1e4})
    answering = [i for i, g in enumerate(gate) if g["margin"] + bias < 0]
    answers = iter(generate_batch(base, tokenizer, [prompts[i] for i in answering], max_new_tokens=max_new_tokens,
                                  system=system, batch_size=batch_size, desc="base model: answers"))
    chosen = set(answering)
    return [{**(next(answers) if i in chosen else {"text": tokenizer.convert_ids_to_tokens(pass_id), "ids": [pass_id]}),
             "margin": g["margin"], "p_token": g["p_token"]} for i, g in enumerate(gate)]


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                   system: str | None = None, desc: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    return [r["text"] for r in generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              system=system, desc=desc, batch_size=batch_size)]


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that follow the attention mask (left padding does not count), as `generate` computes them."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def first_answer_states(model: Any, tokenizer: Any, prompts: Sequence[Any], *, system: str | None = None,
                        batch_size: int = 16) -> torch.Tensor:
    """``[n, hidden]``: what the output head reads at the first answer position of each prompt.

    Captured by a pre-hook on the head, so it is the final-normalised hidden state in any
    family (no assumption about where the final norm lives).
    """
    return first_answer_hidden_states(model, tokenizer, prompts, system=system, batch_size=batch_size)["final"]


@torch.no_grad()
def first_answer_hidden_states(model: Any, tokenizer: Any, prompts: Sequence[Any], *, layers: Sequence[int] = (),
                               system: str | None = None, batch_size: int = 16,
                               desc: str | None = None) -> dict[str, torch.Tensor]:
    """Hidden states ``[n, hidden]`` (float32, CPU) at the first answer position of each prompt: the last
    position of the prompt as generation renders it (``ChatFormat.encode_prompt``), where the model
    chooses its first answer token.

    ``"final"`` is what the output head reads (a pre-hook on the head: the final-normalised state in
    any family), so a linear read-out of it is an output row; ``"layer_<k>"`` for each of ``layers``
    is the residual stream after ``k`` blocks (``output_hidden_states[k]``, 1 <= k < the number of
    blocks). Prompts are sorted by length and left-padded in batches (little padding), positions
    follow the mask as in generation; results come back in the order of ``prompts``.
    """
    fmt = ChatFormat(tokenizer, system=system)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    params = inspect.signature(unwrap_peft(model).forward).parameters
    encoded = [fmt.encode_prompt(p) for p in prompts]
    check_prompt_lengths(model, encoded, 0)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    captured: dict[str, list[torch.Tensor]] = {"final": [], **{f"layer_{k}": [] for k in layers}}
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: captured["final"].append(args[0][:, -1].float().cpu()))
    size = max(1, batch_size)
    try:
        with tqdm(total=len(encoded), desc=desc, disable=desc is None, leave=False) as bar:
            for start in range(0, len(encoded), size):
                ids, mask = _left_pad([encoded[i] for i in order[start:start + size]], pad)
                kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                                          "use_cache": False}
                if "position_ids" in params:  # left padding does not count, as in generation
                    kwargs["position_ids"] = mask_positions(mask).to(device)
                if "logits_to_keep" in params:
                    kwargs["logits_to_keep"] = 1
                if layers:
                    kwargs["output_hidden_states"] = True
                out = model(**kwargs)
                for k in layers:
                    states = out.hidden_states
                    if not 1 <= k < len(states) - 1:
                        raise TokengraftError(f"layer {k}: this model has {len(states) - 1} blocks; "
                                              f"choose layers from 1 to {len(states) - 2}")
                    captured[f"layer_{k}"].append(states[k][:, -1].float().cpu())
                bar.update(ids.shape[0])
    finally:
        hook.remove()
    if not encoded:
        return {name: torch.empty(0) for name in captured}
    back = torch.argsort(torch.tensor(order))  # sorted position of each prompt
    return {name: torch.cat(parts)[back] for name, parts in captured.items()}


@torch.no_grad()
def answer_hidden_states(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[Sequence[int]], *,
                         layers: Sequence[int] = (), system: str | None = None, batch_size: int = 16,
                         desc: str | None = None) -> dict[str, torch.Tensor]:
    """Hidden states ``[n, hidden]`` (float32, CPU) over each prompt's (already generated) answer ids.

    For each feature (``"final"``, what the head reads; ``"layer_<k>"``, the residual stream after
    ``k`` blocks, as in first_answer_hidden_states) two read-outs: ``"<feature>@end"``, the state at
    the last answer token, where the model decides its answer is complete (what an output row read
    after the answer sees), and ``"<feature>@mean"``, the mean of the states from the first answer
    position (the last prompt position) to the last answer token. An empty answer reads the first
    answer position for both. Rows are padded on the right, so positions and causal attention are
    those of each row alone."""
    if len(prompts) != len(answers):
        raise TokengraftError(f"{len(answers)} answers for {len(prompts)} prompts")
    fmt = ChatFormat(tokenizer, system=system)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    encoded = [fmt.encode_prompt(p) for p in prompts]
    full = [e + list(a) for e, a in zip(encoded, answers)]
    check_prompt_lengths(model, full, 0)
    features = ["final", *[f"layer_{k}" for k in layers]]
    captured: dict[str, list[torch.Tensor]] = {f"{f}@{r}": [] for f in features for r in ("end", "mean")}
    final: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda module, args: final.append(args[0]))
    size = max(1, batch_size)
    try:
        with tqdm(total=len(full), desc=desc, disable=desc is None, leave=False) as bar:
            for start in range(0, len(full), size):
                rows, prompt_rows = full[start:start + size], encoded[start:start + size]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                span = torch.zeros((len(rows), width), dtype=torch.bool)  # first answer position .. last answer token
                for i, (row, prompt) in enumerate(zip(rows, prompt_rows)):
                    ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                    span[i, len(prompt) - 1:len(row)] = True
                mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
                final.clear()
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                            output_hidden_states=bool(layers))
                states = {"final": final[-1]}
                for k in layers:
                    if not 1 <= k < len(out.hidden_states) - 1:
                        raise TokengraftError(f"layer {k}: this model has {len(out.hidden_states) - 1} blocks; "
                                              f"choose layers from 1 to {len(out.hidden_states) - 2}")
                    states[f"layer_{k}"] = out.hidden_states[k]
                last = torch.tensor([len(r) - 1 for r in rows])
                weights = (span.float() / span.sum(-1, keepdim=True)).to(device)
                for name, h in states.items():
                    h = h.float()
                    captured[f"{name}@end"].append(h[torch.arange(len(rows)), last.to(device)].cpu())
                    captured[f"{name}@mean"].append(torch.einsum("bt,bth->bh", weights, h).cpu())
                bar.update(len(rows))
    finally:
        hook.remove()
    if not full:
        return {name: torch.empty(0) for name in captured}
    return {name: torch.cat(parts) for name, parts in captured.items()}


@torch.no_grad()
def answer_probabilities(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[Sequence[int]], *,
                         system: str | None = None, batch_size: int = 16,
                         desc: str | None = None) -> list[dict[str, Any]]:
    """How sure the model was of each answer: one teacher-forced forward over prompt + answer ids.

    For each prompt and its (already generated, e.g. cached greedy) answer ids, ``first_max`` is
    the largest softmax probability at the first answer position and ``token_probs`` the
    probability of each answer token given the prompt and the answer before it. For a greedy
    answer of this same model ``token_probs[0] == first_max`` up to float rounding: recomputing
    them costs one forward, so the answers cache keeps storing text and ids only. Rows are padded
    on the right, so positions and causal attention are those of the prompt alone; a pre-hook on
    the head keeps only the answer positions (no vocab-sized logits for the prompt)."""
    if len(prompts) != len(answers):
        raise TokengraftError(f"{len(answers)} answers for {len(prompts)} prompts")
    fmt = ChatFormat(tokenizer, system=system)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    encoded = [fmt.encode_prompt(p) for p in prompts]
    full = [e + list(a) for e, a in zip(encoded, answers)]
    check_prompt_lengths(model, full, 0)
    head = model.get_output_embeddings()
    out: list[dict[str, Any]] = []
    with tqdm(total=len(full), desc=desc, disable=desc is None, leave=False) as bar:
        for start in range(0, len(full), max(1, batch_size)):
            rows = full[start:start + batch_size]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            # positions that predict an answer token (the first answer position for an empty answer)
            keep = torch.zeros((len(rows), width), dtype=torch.bool)
            for i, (row, prompt) in enumerate(zip(rows, encoded[start:start + batch_size])):
                ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                mask[i, :len(row)] = 1
                keep[i, len(prompt) - 1:max(len(row) - 1, len(prompt))] = True
            selected = keep.to(device)

            def select(module: Any, args: tuple, selected: torch.Tensor = selected) -> tuple:
                return (args[0][selected],) + tuple(args[1:])

            handle = head.register_forward_pre_hook(select)
            try:
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            finally:
                handle.remove()
            probs = torch.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)  # [kept positions, V]
            cursor = 0
            for i, (row, prompt) in enumerate(zip(rows, encoded[start:start + batch_size])):
                n = max(len(row) - len(prompt), 1)
                here = probs[cursor:cursor + n]
                answer = row[len(prompt):]
                picked = torch.tensor(answer, dtype=torch.long, device=here.device)
                token_probs = here[torch.arange(len(answer), device=here.device), picked] if answer else here.new_zeros(0)
                out.append({"first_max": float(here[0].max()), "token_probs": [float(p) for p in token_probs]})
                cursor += n
            bar.update(len(rows))
    return out
