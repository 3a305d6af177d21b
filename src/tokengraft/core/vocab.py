"""Add tokens to a tokenizer/model pair and initialise their rows.

Two traps from the field notes shape this module:
- Qwen-style tokenizers have fewer tokens than the embedding matrix has rows
  (padding rows). New ids can land *inside* the matrix; counting "added" tokens
  and starting at the old row count is wrong (reference 004 lost 399 ids). We
  report both numbers and never assume new ids are appended.
- transformers' ``mean_resizing`` builds a covariance from a vocab x hidden
  centred copy and runs out of memory on large vocabularies; we always resize
  with ``mean_resizing=False`` and initialise the rows ourselves, with statistics
  computed on a bounded sample of rows.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import AddedToken

from tokengraft.config import expansion_tokens, init_strategy_map
from tokengraft.constants import INIT_STRATEGIES
from tokengraft.core.arch import is_tied
from tokengraft.errors import TokengraftError

# Rows sampled to estimate the embedding covariance for `hewitt`; bounded so a
# 150k x 5k matrix never needs a full centred copy.
COVARIANCE_SAMPLE_ROWS = 4096
# Hewitt (2021) samples new rows from N(mean, eps * Sigma): close enough to the
# mean that the model's distribution is unchanged, yet rows are distinct.
HEWITT_EPS = 1e-5


@dataclass
class AddReport:
    """What adding tokens did, in the reference's own terms."""

    requested: int
    already_present: list[str]
    added: list[str]
    ids: dict[str, int]  # every requested token -> its id
    old_tokenizer_size: int
    final_tokenizer_size: int
    old_rows: int
    final_rows: int  # rows the model will have once new ids are materialised
    inside_matrix: list[int] = field(default_factory=list)  # new ids < old_rows (padding rows)
    appended: list[int] = field(default_factory=list)  # new ids >= old_rows
    init_input: torch.Tensor | None = None  # [len(new_ids), hidden]
    init_output: torch.Tensor | None = None  # None when tied
    resized: bool = False
    pieces: dict[str, list[int]] = field(default_factory=dict)  # new token -> its ids under the original tokenizer

    @property
    def new_ids(self) -> list[int]:
        return [self.ids[t] for t in self.added]

    @property
    def expansion_pct(self) -> float:
        return 100.0 * (self.final_rows - self.old_rows) / max(1, self.old_rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "already_in_vocabulary": len(self.already_present),
            "new_tokens": len(self.added),
            "landed_in_padding_rows": len(self.inside_matrix),
            "appended_rows": len(self.appended),
            "old_rows": self.old_rows,
            "final_rows": self.final_rows,
            "old_tokenizer_size": self.old_tokenizer_size,
            "final_tokenizer_size": self.final_tokenizer_size,
            "expansion_pct": round(self.expansion_pct, 3),
        }

    def summary(self) -> str:
        d = self.to_dict()
        return (
            f"tokens: requested {d['requested']:,} | already in vocabulary {d['already_in_vocabulary']:,} | "
            f"new {d['new_tokens']:,} | landed in padding rows {d['landed_in_padding_rows']:,} | "
            f"appended rows {d['appended_rows']:,} | rows {d['old_rows']:,} -> {d['final_rows']:,} "
            f"(+{d['expansion_pct']:.2f}%)"
        )


def _existing_rows(weight: torch.Tensor, tokenizer_size: int) -> torch.Tensor:
    """Rows that belong to real tokens: padding rows beyond the tokenizer are untrained noise."""
    return weight[: min(tokenizer_size, weight.shape[0])].detach().float()


def _sample_rows(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if rows.shape[0] <= COVARIANCE_SAMPLE_ROWS:
        return rows
    index = torch.randperm(rows.shape[0], generator=generator)[:COVARIANCE_SAMPLE_ROWS]
    return rows[index]


def _mean_of_ids(rows: torch.Tensor, ids: list[int], what: str) -> torch.Tensor:
    ids = [i for i in ids if i < rows.shape[0]]
    if not ids:
        raise TokengraftError(f"cannot initialise from {what}: it has no pieces among the existing tokens")
    return rows[torch.tensor(ids)].mean(0)


def _pieces(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_piece(tokenizer: Any, text: str) -> int | None:
    pieces = _pieces(tokenizer, text)
    return pieces[0] if len(pieces) == 1 else None


def init_rows(
    rows: torch.Tensor,
    tokens: list[str],
    strategies: dict[str, str],
    *,
    pieces: dict[str, list[int]],
    text_pieces: dict[str, list[int]],
    seed: int,
    spherical_scale: float = 1.5,
    initializer_range: float | None = None,
) -> torch.Tensor:
    """Initial vectors for ``tokens`` from an existing matrix's real rows ``rows`` [V, H].

    ``pieces`` maps a token to its ids under the *original* tokenizer (for
    ``subwords``); ``text_pieces`` maps a token to the ids of its describing text
    (for ``text``). Returns a float32 tensor [len(tokens), H].
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = rows.shape[1]
    mean = rows.mean(0)
    std = rows.std().item()
    out = torch.empty(len(tokens), hidden)
    sample: torch.Tensor | None = None
    for i, token in enumerate(tokens):
        strategy = strategies[token]
        if strategy == "mean":
            out[i] = mean
        elif strategy == "hewitt":
            if sample is None:
                sample = _sample_rows(rows, generator) - mean
            # noise = centred_sample^T z / sqrt(n) has covariance = sample covariance,
            # without ever forming the hidden x hidden (or vocab x vocab) matrix.
            z = torch.randn(sample.shape[0], generator=generator)
            noise = sample.T @ z / math.sqrt(sample.shape[0])
            out[i] = mean + math.sqrt(HEWITT_EPS) * noise
        elif strategy == "text":
            out[i] = _mean_of_ids(rows, text_pieces[token], f"the text given for {token!r}")
        elif strategy == "subwords":
            out[i] = _mean_of_ids(rows, pieces[token], f"the subwords of {token!r}")
        elif strategy == "spherical":
            direction = torch.randn(hidden, generator=generator)
            out[i] = direction / direction.norm() * spherical_scale * std * math.sqrt(hidden)
        elif strategy == "random":
            out[i] = torch.randn(hidden, generator=generator) * (initializer_range or std)
        else:  # validated by the caller; kept as a guard for direct use
            raise TokengraftError(f"unknown init strategy {strategy!r}; use one of {', '.join(INIT_STRATEGIES)}")
    return out


def register_tokens(tokenizer: Any, tokens: list[str], special: bool, single_word: bool) -> None:
    """Add ``tokens`` to the tokenizer as special (control) tokens or as normal added tokens; rows are not touched."""
    # normalized=False for space-led words: a normaliser may strip or rewrite the leading space.
    added = [AddedToken(t, special=special, normalized=not special and not t.startswith(" "), single_word=single_word)
             for t in tokens]
    if special:
        tokenizer.add_special_tokens({"extra_special_tokens": added}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_tokens(added)


def add_tokens(
    model: Any,
    tokenizer: Any,
    tokens: list[str],
    *,
    special: bool = False,
    init: str | dict[str, str] = "mean",
    output_init: str | dict[str, str] | None = None,
    init_text: dict[str, str] | None = None,
    pad_to_multiple_of: int | None = None,
    resize: bool = True,
    single_word: bool = False,
    seed: int = 0,
    spherical_scale: float = 1.5,
    verbose: bool = True,
) -> AddReport:
    """Add ``tokens`` to the tokenizer, initialise their rows, and (optionally) resize the model.

    With ``resize=True`` the matrices grow to hold every new id (never shrink;
    ``mean_resizing`` off) and the initial rows are written in — what the
    ``peft`` and ``full`` backends need. With ``resize=False`` the model is left
    untouched and the initial rows are returned in the report: the row-sparse
    backend keeps them as small parameters beside the frozen matrix.
    """
    if not tokens:
        raise TokengraftError("tokens.add is empty: list at least one token to add")
    if any(not isinstance(t, str) or not t.strip() for t in tokens):
        raise TokengraftError("tokens.add must hold non-empty strings")
    # Counter, not tokens.count(t) per token: that is quadratic (14 s for a 20,000-token lexicon).
    duplicates = {t for t, n in Counter(tokens).items() if n > 1}
    if duplicates:
        raise TokengraftError(f"tokens.add lists {sorted(duplicates)} more than once")

    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = is_tied(model)
    old_rows = embedding.weight.shape[0]
    old_tokenizer_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    # A space-led word (" word", tokens.word_start) is present when it already encodes to one token:
    # byte-level vocabularies store it as "Ġword", which is not the string itself.
    present = {t: vocab[t] if t in vocab else _single_piece(tokenizer, t) if t.startswith(" ") else None
               for t in tokens}
    already = [t for t in tokens if present[t] is not None]
    new = [t for t in tokens if present[t] is None]

    # Pieces under the original tokenizer, before the new tokens exist in it.
    pieces = {t: _pieces(tokenizer, t) for t in new}
    text_pieces = {t: _pieces(tokenizer, text) for t, text in (init_text or {}).items() if t in new}
    input_strategies = init_strategy_map(init, new, "tokens.init (input)")
    output_strategies = init_strategy_map(output_init if output_init is not None else init, new, "tokens.init (output)")
    for token in new:
        for strategy in (input_strategies[token], output_strategies[token]):
            if strategy == "text" and token not in text_pieces:
                raise TokengraftError(f"init 'text' for {token!r} needs tokens.init_text[{token!r}] (e.g. \"unknown\")")

    if new:
        register_tokens(tokenizer, new, special, single_word)
    ids = {t: present[t] if present[t] is not None else tokenizer.convert_tokens_to_ids(t) for t in tokens}
    for token in new:
        if _pieces(tokenizer, token) != [ids[token]]:
            raise TokengraftError(f"token {token!r} still splits into several pieces after adding it; check the tokenizer's normaliser")

    new_ids = [ids[t] for t in new]
    inside = [i for i in new_ids if i < old_rows]
    appended = [i for i in new_ids if i >= old_rows]
    final_rows = max([old_rows, len(tokenizer)] + [i + 1 for i in new_ids])
    if resize and pad_to_multiple_of:
        final_rows = int(math.ceil(final_rows / pad_to_multiple_of) * pad_to_multiple_of)

    initializer_range = getattr(model.config, "initializer_range", None)
    real_input = _existing_rows(embedding.weight, old_tokenizer_size)
    init_input = init_rows(real_input, new, input_strategies, pieces=pieces, text_pieces=text_pieces, seed=seed,
                           spherical_scale=spherical_scale, initializer_range=initializer_range) if new else None
    init_output = None
    if new and head is not None and not tied:
        real_output = _existing_rows(head.weight, old_tokenizer_size)
        init_output = init_rows(real_output, new, output_strategies, pieces=pieces, text_pieces=text_pieces,
                                seed=seed + 1, spherical_scale=spherical_scale, initializer_range=initializer_range)

    report = AddReport(
        requested=len(tokens), already_present=already, added=new, ids=ids,
        old_tokenizer_size=old_tokenizer_size, final_tokenizer_size=len(tokenizer),
        old_rows=old_rows, final_rows=final_rows, inside_matrix=inside, appended=appended,
        init_input=init_input, init_output=init_output, pieces=pieces,
    )
    if resize and new:
        write_rows(model, report)
    if verbose:
        print(f"tokengraft: {report.summary()}")
    return report


def write_rows(model: Any, report: AddReport) -> None:
    """Grow the matrices to ``report.final_rows`` (never shrinking) and write the initial rows."""
    embedding = model.get_input_embeddings()
    if report.final_rows > embedding.weight.shape[0]:
        model.resize_token_embeddings(report.final_rows, mean_resizing=False)
        report.resized = True
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    index = torch.tensor(report.new_ids, device=embedding.weight.device)
    with torch.no_grad():
        embedding.weight[index] = report.init_input.to(embedding.weight)
        if report.init_output is not None and head is not None:
            head.weight[index] = report.init_output.to(head.weight)
            if getattr(head, "bias", None) is not None:
                head.bias[index] = 0.0
    model.config.vocab_size = embedding.weight.shape[0]


# ----------------------------------------------------------------------------- tokens.expand

_EXPAND_BEGIN = "{#- tokengraft tokens.expand #}"
_EXPAND_END = "{#- end tokengraft tokens.expand #}"
_PROBE = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]


def expand_chat_template(tokenizer: Any, expand: dict[str, int]) -> None:
    """Make the tokenizer's chat template insert each ``tokens.expand`` token's hidden tokens right after it.

    ``{'<STYLE_VERBOSE>': 2}`` renders a message "<STYLE_VERBOSE>\\nWhy?" as
    "<STYLE_VERBOSE><STYLE_VERBOSE_1><STYLE_VERBOSE_2>\\nWhy?": the token gets several
    trainable rows. The expansion lives in the template (a few Jinja lines before it that
    rewrite the string contents holding a token), so training, generation, the saved run
    and a merged export's tokenizer (vLLM's chat endpoint) all render it the same; a raw
    completion prompt must spell the hidden tokens itself. Messages without an expanded
    token are left as they were, so they render exactly as before: checked here on a probe
    conversation, and a template that renders differently is refused unchanged.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise TokengraftError("tokens.expand needs a chat template (the expansion lives in it); this tokenizer has "
                              "none: drop tokens.expand")
    original = template.split(_EXPAND_END, 1)[1] if template.startswith(_EXPAND_BEGIN) else template
    keys = [json.dumps(token, ensure_ascii=False) for token in expand]
    replaced = "".join(f" | replace({key}, {json.dumps(token + ''.join(expansion_tokens(token, n)), ensure_ascii=False)})"
                       for key, (token, n) in zip(keys, expand.items()))
    holds = " or ".join(f"{key} in tg_m['content']" for key in keys)
    prefix = (
        _EXPAND_BEGIN + "{%- set tg_ns = namespace(messages=[]) %}{%- for tg_m in messages %}"
        f"{{%- if tg_m['content'] is string and ({holds}) %}}"
        f"{{%- set tg_ns.messages = tg_ns.messages + [{{'role': tg_m['role'], 'content': tg_m['content']{replaced}}}] %}}"
        "{%- else %}{%- set tg_ns.messages = tg_ns.messages + [tg_m] %}{%- endif %}{%- endfor %}"
        "{%- set messages = tg_ns.messages %}" + _EXPAND_END
    )
    before = _render_probe(tokenizer, original)
    after = _render_probe(tokenizer, prefix + original)
    if before != after:
        raise TokengraftError("tokens.expand: this chat template renders a plain conversation differently once the "
                              "expansion is put in front of it; drop tokens.expand for this model")
    tokenizer.chat_template = prefix + original


def _render_probe(tokenizer: Any, template: str) -> str:
    return tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=False)
