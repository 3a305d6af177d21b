"""Training data: JSONL rows -> rendered prompt/completion -> masked token ids -> padded batches.

Three row forms (extra keys are kept as ``Example.meta``):

- ``{"prompt": ..., "completion": ...}`` — the prompt becomes one user turn.
- ``{"messages": [{"role", "content"}, ...]}`` — chat; the last message must be the
  assistant's and is the completion, everything before it is the prompt.
- ``{"text": ...}`` — plain causal LM on the whole text (every token trains); used for
  vocabulary expansion, where the new words must be read *and* written in context.

A classifier (``task: classification``) reads ``{"text", "label"}`` rows instead: see
`encode_labelled_rows` and `ClassificationCollator` at the end.

Why prompt/completion with explicit masking (reference 003): training on the whole
rendered conversation teaches the model to write the *user* turn too, which is how
fine-tunes end up looping "useruser...". Here every prompt token is labelled -100 and
only the completion trains — including the end-of-turn token, so the model learns to stop.

Rendering. With a chat template the prompt is ``apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)`` and the completion is the assistant text
followed by the template's end-of-turn string (``<|im_end|>`` for ChatML), detected by
rendering a sentinel reply (see ``ChatFormat``).

The plain format. A base model without a chat template (Gemma 3 270M, GPT-2, Pythia) is
trained and prompted in one documented format, written as a chat template
(``plain_chat_template``) so that one definition serves training, inference here, and
``apply_chat_template`` in plain transformers, vLLM and llama.cpp::

    {bos}{system}\\n\\n                   (only with a system prompt)
    Question: {user}\\n
    Answer: {assistant}{eos}            (\\n before the next Question)

``{bos}`` is there when the tokenizer adds one on its own. One space follows
``Question:`` and ``Answer:``, except before text that starts with ``<`` (a control
token such as ``<PASS>``: a space there would be a token of its own in SentencePiece and
byte-level vocabularies, so the first answer token would be a space, not ``<PASS>``) or
with whitespace. The answer ends with the EOS token, a training target: a base model
such as Gemma never emits EOS after an answer by itself, and generation stops there
(and, for the untuned base model, where it starts the next ``\\nQuestion:``).
``graft`` stamps this template on the run's tokenizer, so the saved run, the merged
export and the GGUF carry it.

Tokenization choice. We tokenize the prompt string and the completion string
separately (the completion with ``add_special_tokens=False``) and concatenate. The
prompt ids are then exactly what ``apply_chat_template(..., tokenize=True)`` gives at
inference (it also uses ``add_special_tokens=False``), and the completion ids are what
the model must generate after them. For ordinary templates this concatenation equals
the tokenization of the full rendered conversation (tested); where a BPE merge would
cross the boundary the split form is the one that matches generation, so we keep it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokengraft.config import Recipe
from tokengraft.constants import IGNORE_INDEX
from tokengraft.errors import TokengraftError
from tokengraft.tasks.classify_data import LabelSet, label_set
OVERFLOW_MODES = ("drop", "error", "truncate_prompt")
_SENTINEL = "TOKENGRAFTSENTINEL"
_FORM_KEYS = ("prompt", "completion", "messages", "text")
_BATCH = 512  # rows tokenized per fast-tokenizer call


# ----------------------------------------------------------------------------- rows


@dataclass
class Example:
    """One parsed row. ``kind`` is "prompt", "chat" or "text"."""

    kind: str
    prompt: str = ""  # prompt rows: the user text
    completion: str = ""  # prompt/chat rows: the assistant text; text rows: the text
    messages: list[dict[str, str]] | None = None  # chat rows: the turns before the completion
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""  # "file.jsonl:12", for error messages


def _check_str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise TokengraftError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value


def parse_row(obj: Any, where: str) -> Example:
    """Validate one decoded JSON row; errors start with ``where`` (file:line)."""
    if not isinstance(obj, dict):
        raise TokengraftError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    forms = [k for k in ("prompt", "messages", "text") if k in obj]
    if "completion" in obj and "prompt" not in obj:
        raise TokengraftError(f"{where}: has 'completion' but no 'prompt'")
    if len(forms) > 1:
        raise TokengraftError(f"{where}: has both {forms[0]!r} and {forms[1]!r}; use one row form per line")
    if not forms:
        found = ", ".join(sorted(obj)) or "none"
        raise TokengraftError(f"{where}: missing keys: expected 'prompt'+'completion', 'messages' or 'text' (found: {found})")
    meta = {k: v for k, v in obj.items() if k not in _FORM_KEYS}
    form = forms[0]
    if form == "prompt":
        if "completion" not in obj:
            raise TokengraftError(f"{where}: has 'prompt' but no 'completion'")
        prompt = _check_str(obj["prompt"], "prompt", where)
        completion = _check_str(obj["completion"], "completion", where)
        if not completion.strip():
            raise TokengraftError(f"{where}: empty completion (nothing to train on)")
        return Example("prompt", prompt=prompt, completion=completion, meta=meta, where=where)
    if form == "text":
        text = _check_str(obj["text"], "text", where)
        if not text.strip():
            raise TokengraftError(f"{where}: empty 'text'")
        return Example("text", completion=text, meta=meta, where=where)
    messages = obj["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise TokengraftError(f"{where}: 'messages' must be a list of at least two turns (a prompt, then the assistant reply)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TokengraftError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise TokengraftError(f"{where}: the last message must have role 'assistant' (it is the completion), got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise TokengraftError(f"{where}: empty completion (the last assistant message is empty)")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return Example("chat", completion=messages[-1]["content"], messages=turns, meta=meta, where=where)


def load_examples(path: str | Path) -> list[Example]:
    """Read a JSONL file (blank lines skipped); every error names file and line."""
    path = Path(path)
    if not path.is_file():
        raise TokengraftError(f"data file {path} does not exist")
    examples: list[Example] = []
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokengraftError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                      "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokengraftError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            examples.append(parse_row(obj, where))
    if not examples:
        raise TokengraftError(f"data file {path} holds no examples")
    return examples


def as_examples(rows: Iterable[Example | dict[str, Any]], source: str = "row") -> list[Example]:
    """Accept parsed examples or raw dicts (e.g. from a task generator)."""
    return [r if isinstance(r, Example) else parse_row(r, f"{source} {i + 1}") for i, r in enumerate(rows)]


def split_rows(rows: Sequence[Any], validation_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic train/validation split; both parts keep the original order.

    A positive fraction yields at least one validation row (when there are two rows or
    more) and always leaves at least one training row.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise TokengraftError(f"data.validation_fraction must be in [0, 1), got {validation_fraction}")
    n = len(rows)
    n_val = round(n * validation_fraction)
    if validation_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val_idx], [r for i, r in enumerate(rows) if i in val_idx]


def require_prompt_rows(rows: Sequence[Any]) -> None:
    """``data.know_check`` / ``data.self_answers`` label prompt/completion rows; other forms cannot be labelled."""
    if any(isinstance(e, Example) and e.kind != "prompt" for e in rows):
        raise TokengraftError("data.know_check / data.self_answers need prompt/completion rows in data.train")


def example_text(example: Example) -> str:
    """Everything of a row the model reads or writes (prompt, turns, completion), for searching it."""
    turns = " ".join(m["content"] for m in example.messages or [])
    return "\n".join(x for x in (example.prompt, turns, example.completion) if x)


def missing_tokens(tokens: Iterable[str], texts: Iterable[str], limit: int = 5) -> list[str]:
    """Up to ``limit`` tokens that occur in none of ``texts`` (as text: no tokenizer needed).

    Occurring as text is necessary for a token id to occur after tokenization, so a
    token missing here is certainly missing from the encoded data. The scan stops at
    each token's first occurrence, so only missing tokens read the whole data.
    """
    haystack = "\n".join(texts)
    missing: list[str] = []
    for token in tokens:
        if token not in haystack:
            missing.append(token)
            if len(missing) == limit:
                break
    return missing


def check_data_files(recipe: Recipe) -> None:
    """What training checks in the recipe's own data files, done without a tokenizer or weights.

    ``tokengraft validate`` runs it, and so does training before it loads the model:
    every file is UTF-8 JSON lines of a known row form with a non-empty completion, no
    file is empty, a classifier's validation labels were seen in training, and every
    token of ``tokens.add`` occurs in the training rows (after the validation split).
    Generated data (``data.generate``) is made at train time and checked there; so are
    the tokens of rows the base model relabels (``data.know_check`` / ``data.self_answers``).
    """
    d = recipe.data
    if d.generate or not d.train:
        return
    train_rows = load_examples(d.train)
    validation = load_examples(d.validation) if d.validation else []
    if recipe.task == "classification":
        labels = label_set([(r.label, r.where) for r in as_labelled_rows(train_rows, "train")])
        for row in as_labelled_rows(validation, "validation"):
            labels.to_id(row.label, row.where)
    if d.know_check or d.self_answers:
        require_prompt_rows(train_rows)
        return  # the base model relabels the rows at train time (know_check writes <PASS> targets): checked there
    if not d.validation and d.validation_fraction > 0:
        train_rows, _ = split_rows(train_rows, d.validation_fraction, recipe.seed)
    texts = [example_text(e) for e in train_rows]
    if d.system and any(e.kind != "text" for e in train_rows):
        texts.append(d.system)  # rendered into every chat prompt
    missing = missing_tokens(recipe.tokens.all_tokens(), texts)
    if missing:
        names = ", ".join(repr(t) for t in missing)
        split = " after holding out data.validation_fraction" if not d.validation and d.validation_fraction > 0 else ""
        if recipe.task == "classification":  # the classifier recipe's own wording (it reads tokens, never writes them)
            raise TokengraftError(f"token(s) {names} occurs in no training text ({d.train}{split}), so its row "
                                  "would never train; add rows that contain it or remove it from tokens.add")
        raise TokengraftError(f"new token(s) {names} never occur in the training data ({d.train}{split}); "
                              "add examples that use them or remove them from tokens.add")


# ----------------------------------------------------------------------------- rendering


PLAIN_FORMAT = "tokengraft-plain-v1"
"""Name of the plain prompt format; its chat template starts with a Jinja comment holding it."""

PLAIN_NEXT_TURN = "\nQuestion:"
"""Where the plain format's next turn starts: generation stops there too (``ChatFormat.stop_strings``)."""


def plain_chat_template(tokenizer: Any) -> str:
    """The plain format (module docstring) as a Jinja chat template for ``tokenizer``.

    Only the BOS line depends on the tokenizer: it is written when the tokenizer adds
    BOS by itself, because ``apply_chat_template(tokenize=True)`` tokenizes without
    special tokens.
    """
    ids = tokenizer("a")["input_ids"]
    bos = tokenizer.bos_token_id is not None and list(ids[:1]) == [tokenizer.bos_token_id]
    return (
        "{#- " + PLAIN_FORMAT + ": Question/Answer turns for a base model without a chat template -#}\n"
        + ("{{- bos_token -}}\n" if bos else "")
        + "{%- for message in messages -%}\n"
        "{%- set text = message['content'] -%}\n"
        "{%- set sep = '' if (text[:1] == '<' or text[:1].strip() == '') else ' ' -%}\n"
        "{%- if message['role'] == 'system' -%}{{- text + '\\n\\n' -}}\n"
        "{%- elif message['role'] == 'user' -%}{{- 'Question:' + sep + text + '\\n' -}}\n"
        "{%- elif message['role'] == 'assistant' -%}{{- 'Answer:' + sep + text + eos_token -}}"
        "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}\n"
        "{%- else -%}{{- raise_exception('the plain prompt format has system, user and assistant turns, not ' "
        "+ message['role']) -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{- 'Answer:' -}}{%- endif -%}\n"
    )


def is_plain_template(template: Any) -> bool:
    """Whether a chat template is the plain format (possibly behind a prefix, e.g. ``tokens.expand``'s)."""
    return isinstance(template, str) and ("{#- " + PLAIN_FORMAT) in template


def prompt_format(tokenizer: Any) -> str:
    """``"chat_template"`` (the tokenizer's own) or ``"plain"`` (tokengraft's, stamped or to be stamped)."""
    template = getattr(tokenizer, "chat_template", None)
    return "plain" if not template or is_plain_template(template) else "chat_template"


def ensure_chat_template(tokenizer: Any) -> str:
    """Give a tokenizer without a chat template the plain one; returns `prompt_format`.

    Called when tokens are grafted, so everything saved from the run renders prompts
    exactly as training did.
    """
    if not getattr(tokenizer, "chat_template", None):
        if tokenizer.eos_token_id is None:
            raise TokengraftError("the tokenizer has no EOS token and no chat template: completions could not "
                                  "teach the model to stop; set tokenizer.eos_token")
        tokenizer.chat_template = plain_chat_template(tokenizer)
    return prompt_format(tokenizer)


def describe_prompt_format(tokenizer: Any) -> dict[str, str]:
    """What `inspect` reports: which format prompts are rendered in, how a turn ends, and an example prompt."""
    fmt = ChatFormat(tokenizer)
    return {"kind": fmt.kind, "end_of_turn": fmt.end_of_turn or (tokenizer.eos_token or ""),
            "example_prompt": fmt.prompt_text("What is 2+2?")}


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, template: str | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False,
                                             chat_template=template)
    except Exception as exc:  # jinja raises its own errors (e.g. "system role not supported")
        roles = "/".join(m["role"] for m in messages)
        raise TokengraftError(f"the tokenizer's chat template rejects a {roles} conversation: {exc}"
                              " (templates without a system role need data.system: null)") from None


class ChatFormat:
    """How one tokenizer turns examples into prompt/completion ids (training *and* inference).

    Eval and generate should call ``encode_prompt`` so inference sees exactly the
    prompt format the model was trained on. A tokenizer without a chat template uses
    the plain format (``plain_chat_template``); ``kind`` says which one is in use.
    """

    def __init__(self, tokenizer: Any, system: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system = system
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.eos_id: int | None = tokenizer.eos_token_id
        self.kind = prompt_format(tokenizer)
        # None: the tokenizer's own template; the plain one is passed explicitly when the tokenizer has none.
        self.template: str | None = None if self.has_template else plain_chat_template(tokenizer)
        if self.kind == "plain" and self.eos_id is None:
            raise TokengraftError("the tokenizer has no EOS token and no chat template: completions could not "
                                  "teach the model to stop; set tokenizer.eos_token")
        self.end_of_turn = self._detect_end_of_turn()
        # Without a detectable end-of-turn string the completion ends with the EOS id.
        self.append_eos = not self.end_of_turn
        if self.append_eos and self.eos_id is None:
            raise TokengraftError("the tokenizer has no EOS token and no chat template end-of-turn: "
                                  "completions could not teach the model to stop; set tokenizer.eos_token")

    def _detect_end_of_turn(self) -> str:
        """Render a sentinel reply; what follows it up to the newline closes a turn (``<|im_end|>``)."""
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=self.template)
        except Exception:
            return ""
        if _SENTINEL not in rendered:
            return ""
        tail = rendered.split(_SENTINEL, 1)[1].split("\n", 1)[0]
        return tail if tail.strip() else ""

    @property
    def stop_strings(self) -> list[str]:
        """Text that ends an answer besides the end-of-turn token.

        In the plain format a base model never emits EOS after an answer (Gemma 3 270M
        answers " Paris" and goes on with "\\nQuestion: ..."), so generation also stops
        where the next turn would start. A tuned model stops at the EOS it was trained on.
        """
        return [PLAIN_NEXT_TURN] if self.kind == "plain" else []

    def messages_for(self, prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system}] + messages
        return messages

    def prompt_text(self, prompt: str | list[dict[str, str]]) -> str:
        """The rendered prompt, ending where the assistant starts writing."""
        return _render(self.tokenizer, self.messages_for(prompt), generation_prompt=True, template=self.template)

    def completion_text(self, completion: str, prompt: str | list[dict[str, str]] = "") -> str:
        """What follows the prompt: the answer and its end of turn.

        In the plain format it is read off the template's rendering of the whole
        exchange (the separator before the answer depends on the answer); with a chat
        template it is the answer followed by the detected end-of-turn string.
        """
        if self.kind != "plain":
            return completion + self.end_of_turn
        messages = self.messages_for(prompt)
        before = _render(self.tokenizer, messages, generation_prompt=True, template=self.template)
        full = _render(self.tokenizer, messages + [{"role": "assistant", "content": completion}],
                       generation_prompt=False, template=self.template)
        if not full.startswith(before):
            raise TokengraftError("the plain chat template renders a conversation that does not start with its "
                                  "prompt; was the tokenizer's chat_template edited?")
        return full[len(before):]

    def render(self, example: Example) -> tuple[str, str]:
        if example.kind == "text":
            return "", example.completion
        prompt: str | list[dict[str, str]] = example.messages if example.kind == "chat" else example.prompt
        return self.prompt_text(prompt), self.completion_text(example.completion, prompt)

    def _ids(self, texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]

    def encode_prompt(self, prompt: str | list[dict[str, str]]) -> list[int]:
        # The rendered text already holds BOS etc. (the plain template writes it when the
        # tokenizer would add one), as apply_chat_template(tokenize=True) does.
        return self._ids([self.prompt_text(prompt)], special=False)[0]

    def encode(self, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, completion ids) per example; text rows have empty prompt ids."""
        rendered = [self.render(e) for e in examples]
        prompts = self._ids([p for (p, _), e in zip(rendered, examples) if e.kind != "text"], special=False)
        completions = self._ids([c for (_, c), e in zip(rendered, examples) if e.kind != "text"], special=False)
        texts = self._ids([c for (_, c), e in zip(rendered, examples) if e.kind == "text"], special=True)
        out: list[tuple[list[int], list[int]]] = []
        pi = ti = 0
        for e in examples:
            if e.kind == "text":
                ids = texts[ti]
                ti += 1
                if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                    ids = ids + [self.eos_id]
                out.append(([], ids))
            else:
                comp = completions[pi] + ([self.eos_id] if self.append_eos else [])
                out.append((prompts[pi], comp))
                pi += 1
        return out


# ----------------------------------------------------------------------------- token checks


def token_ids(tokenizer: Any, tokens: Iterable[str]) -> dict[str, int]:
    """Map each new token string to its single id; a split token is an error (guard, DESIGN)."""
    out: dict[str, int] = {}
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise TokengraftError(f"token {token!r} is split into {len(ids)} pieces by the tokenizer: it was not added as one token")
        out[token] = ids[0]
    return out


@dataclass
class TokenUse:
    """READ: the token appears in prompts (must be understood); WRITE: in completions (must be produced)."""

    read_examples: int = 0
    read_count: int = 0
    write_examples: int = 0
    write_count: int = 0


@dataclass
class DatasetStats:
    rows: int = 0  # rows given
    examples: int = 0  # encoded sequences kept (text rows longer than max_length count once per window)
    total_tokens: int = 0
    supervised_tokens: int = 0  # labels != -100
    max_tokens: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    truncated_prompts: int = 0  # left-truncated under on_overflow: truncate_prompt
    split_texts: int = 0  # text rows split into max_length windows
    tokens: dict[str, TokenUse] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "examples": self.examples, "total_tokens": self.total_tokens,
            "supervised_tokens": self.supervised_tokens, "max_tokens": self.max_tokens,
            "dropped": dict(self.dropped), "truncated_prompts": self.truncated_prompts,
            "split_texts": self.split_texts,
            "tokens": {t: vars(u).copy() for t, u in self.tokens.items()},
        }

    def table(self) -> str:
        """A compact human summary, one line of totals then one line per new token."""
        pct = 100.0 * self.supervised_tokens / self.total_tokens if self.total_tokens else 0.0
        lines = [f"examples {self.examples} (rows {self.rows})  tokens {self.total_tokens}  "
                 f"supervised {self.supervised_tokens} ({pct:.1f}%)  longest {self.max_tokens}"]
        if self.dropped:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
            lines.append(f"dropped {self.dropped_total}: {reasons}")
        if self.truncated_prompts:
            lines.append(f"prompts left-truncated: {self.truncated_prompts}")
        if self.split_texts:
            lines.append(f"text rows split into windows: {self.split_texts}")
        if self.tokens:
            width = max(len("token"), *(len(t) for t in self.tokens))
            lines.append(f"{'token':<{width}}  {'READ ex':>8} {'READ n':>8}  {'WRITE ex':>8} {'WRITE n':>8}")
            for t, u in self.tokens.items():
                lines.append(f"{t:<{width}}  {u.read_examples:>8} {u.read_count:>8}  {u.write_examples:>8} {u.write_count:>8}")
        return "\n".join(lines)


def check_tokens_used(stats: DatasetStats, tokens: Iterable[str]) -> None:
    """Refuse new tokens that never occur in the data: their rows would get no direct signal."""
    unused = [t for t in tokens if (u := stats.tokens.get(t)) is None or (u.read_count == 0 and u.write_count == 0)]
    if unused:
        names = ", ".join(repr(t) for t in unused)
        dropped = (f" ({stats.dropped_total} example(s) longer than data.max_length were dropped and may have held "
                   "them: raise data.max_length)") if stats.dropped_total else ""
        raise TokengraftError(f"new token(s) {names} never occur in the training data (neither in prompts nor in "
                              f"completions){dropped}; add examples that use them or remove them from tokens.add")


# ----------------------------------------------------------------------------- encoding


def _count(use: TokenUse, ids: list[int], tid: int, side: str) -> None:
    n = ids.count(tid)
    if n:
        if side == "read":
            use.read_examples += 1
            use.read_count += n
        else:
            use.write_examples += 1
            use.write_count += n


def _windows(ids: list[int], max_length: int) -> list[list[int]]:
    """Split a long text into windows overlapping by one token, so every token after the
    first is a prediction target exactly once (position j predicts j+1)."""
    if len(ids) <= max_length:
        return [ids]
    stride = max_length - 1
    out = []
    for start in range(0, len(ids) - 1, stride):
        out.append(ids[start:start + max_length])
    return out


def encode_examples(
    rows: Iterable[Example | dict[str, Any]],
    tokenizer: Any,
    max_length: int,
    system: str | None = None,
    on_overflow: str = "drop",
    new_tokens: Sequence[str] = (),
) -> tuple[list[dict[str, list[int]]], DatasetStats]:
    """Tokenize and mask: prompt tokens get label -100, completion tokens (with end-of-turn) train.

    ``on_overflow`` decides what happens when prompt+completion exceeds ``max_length``:
    ``drop`` (counted in ``stats.dropped['too_long']``), ``error`` (TokengraftError), or
    ``truncate_prompt`` (cut the prompt from the left; if the completion alone does not
    fit, drop as ``completion_too_long``). A completion is never cut. Text rows are
    split into windows instead (no token is lost and every token still trains).
    """
    if on_overflow not in OVERFLOW_MODES:
        raise TokengraftError(f"data.on_overflow must be one of {', '.join(OVERFLOW_MODES)}, got {on_overflow!r}")
    if max_length < 2:
        raise TokengraftError(f"data.max_length must be at least 2, got {max_length}")
    examples = as_examples(rows)
    ids_of = token_ids(tokenizer, new_tokens)
    fmt = ChatFormat(tokenizer, system=system)
    stats = DatasetStats(rows=len(examples), tokens={t: TokenUse() for t in ids_of})
    encoded: list[dict[str, list[int]]] = []
    for start in range(0, len(examples), _BATCH):
        chunk = examples[start:start + _BATCH]
        for example, (p_ids, c_ids) in zip(chunk, fmt.encode(chunk)):
            pieces: list[tuple[list[int], list[int]]] = []
            if example.kind == "text":
                windows = _windows(c_ids, max_length)
                stats.split_texts += int(len(windows) > 1)
                pieces = [([], w) for w in windows]
            elif len(p_ids) + len(c_ids) <= max_length:
                pieces = [(p_ids, c_ids)]
            elif on_overflow == "error":
                raise TokengraftError(
                    f"{example.where}: prompt+completion is {len(p_ids) + len(c_ids)} tokens, over data.max_length="
                    f"{max_length}; raise data.max_length, or set data.on_overflow: drop (or truncate_prompt)")
            elif on_overflow == "truncate_prompt" and len(c_ids) < max_length:
                # Keep at least one prompt token: the first completion token is predicted from it.
                pieces = [(p_ids[len(p_ids) - (max_length - len(c_ids)):], c_ids)]
                stats.truncated_prompts += 1
            else:
                reason = "completion_too_long" if on_overflow == "truncate_prompt" else "too_long"
                stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
            for prompt, completion in pieces:
                input_ids = prompt + completion
                if example.kind == "text":
                    # Every token is its own label (the model shifts internally); position 0
                    # can never be a target, so -100 there keeps supervised_tokens exact.
                    labels = [IGNORE_INDEX] + completion[1:]
                else:
                    labels = [IGNORE_INDEX] * len(prompt) + completion
                encoded.append({"input_ids": input_ids, "labels": labels})
                stats.examples += 1
                stats.total_tokens += len(input_ids)
                stats.supervised_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
                stats.max_tokens = max(stats.max_tokens, len(input_ids))
                for token, tid in ids_of.items():
                    # Text rows both read and write their tokens (causal LM on the whole text).
                    _count(stats.tokens[token], completion if example.kind == "text" else prompt, tid, "read")
                    _count(stats.tokens[token], completion, tid, "write")
    return encoded, stats


# ----------------------------------------------------------------------------- batching


class Collator:
    """Right-pads a list of ``{"input_ids", "labels"}`` into tensors.

    ``input_ids`` are padded with the pad id (EOS id when the tokenizer has no pad
    token: masked out by ``attention_mask`` and -100 labels, so its value is harmless),
    ``labels`` with -100. Other keys in the features are ignored. Deterministic.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise TokengraftError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise TokengraftError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}")
        self.pad_id = int(pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise TokengraftError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        input_ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(features), length), dtype=torch.long)
        with_labels = all("labels" in f for f in features)
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
            if with_labels:
                labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if with_labels:
            batch["labels"] = labels
        return batch

# ----------------------------------------------------------------------------- classification rows
# ``{"text", "label"}`` rows (``task: classification``), shared by the classifier's training and
# evaluation so that truncation, the pad-token refusal and the padding side are the same in both.
# The classifier picks the rightmost token that is not the config's pad id, so batches are
# right-padded with exactly that id.


@dataclass
class LabelledRow:
    """One ``{"text", "label"}`` row of a classification split; ``where`` names it in errors."""

    text: str
    label: Any
    where: str
    meta: dict[str, Any] = field(default_factory=dict)


def as_labelled_rows(rows: list[Any], source: str) -> list[LabelledRow]:
    """Generated dicts or parsed JSONL examples (data.py's ``text`` form) as classification rows."""
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, Example):
            if r.kind != "text" or "label" not in r.meta:
                raise TokengraftError(f"{r.where}: a classification row is {{\"text\": ..., \"label\": ...}}; "
                                      f"this one is a {r.kind} row" + ("" if "label" in r.meta else " without 'label'"))
            out.append(LabelledRow(r.completion, r.meta["label"], r.where, dict(r.meta)))
            continue
        where = f"{source} row {i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or "label" not in r:
            raise TokengraftError(f"{where}: a classification row needs a string 'text' and a 'label'")
        if not r["text"].strip():
            raise TokengraftError(f"{where}: empty 'text'")
        out.append(LabelledRow(r["text"], r["label"], where, {k: v for k, v in r.items() if k != "text"}))
    return out


def encode_labelled_rows(rows: list[LabelledRow], tokenizer: Any, labels: LabelSet, max_length: int,
                on_overflow: str = "drop", pad_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """``[{"input_ids", "labels", "row"}]`` (``row`` indexes ``rows``) and the number dropped as too long.

    ``truncate_prompt`` keeps the LAST ``max_length`` tokens: the classifier reads the
    final position, so the end of the text is the part that must survive. A text ending
    in the pad token (``pad_id``) is refused: the classifier would skip that token and
    silently read an earlier position.
    """
    items: list[dict[str, Any]] = []
    dropped = 0
    ids = tokenizer([r.text for r in rows])["input_ids"] if rows else []
    for index, (row, seq) in enumerate(zip(rows, ids)):
        label = labels.to_id(row.label, row.where)
        if not seq:
            raise TokengraftError(f"{row.where}: the text tokenizes to nothing")
        if len(seq) > max_length:
            if on_overflow == "error":
                raise TokengraftError(f"{row.where}: {len(seq)} tokens, more than data.max_length {max_length}; "
                                      "raise data.max_length or set data.on_overflow: drop")
            if on_overflow == "drop":
                dropped += 1
                continue
            seq = seq[-max_length:]
        if pad_id is not None and seq[-1] == pad_id:
            raise TokengraftError(f"{row.where}: the text ends with the pad token {tokenizer.convert_ids_to_tokens(pad_id)!r}, "
                                  "which the classifier skips when it looks for the last token; remove it from the text")
        items.append({"input_ids": list(seq), "labels": label, "row": index})
    return items, dropped


class ClassificationCollator:
    """Right-pads ``input_ids`` with the classifier's pad id; ``labels`` become a [B] tensor."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise TokengraftError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)  # [B, T]
        attention = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)  # [B]
        return batch
