"""The recipe: one YAML file describes a whole run.

Sections are dataclasses; the string under each field is its documentation
(``schema_docs()`` collects them, so the docs cannot drift from the code). Loading
checks every key and type before anything heavy happens, and every error names the
field and the fix: unknown keys get the closest valid key, enums list their values.

Method entries (``methods:``) are validated by the method modules' own spec
dataclasses (``tokengraft.methods.*``), so their fields are defined in one place.

Paths: relative data paths in the YAML resolve against the YAML file's directory;
relative paths given as command-line overrides resolve against the current
directory (that is where the user typed them). Saved recipes hold absolute paths.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from tokengraft.errors import TokengraftError

BUILTIN_MODEL = "smollm2-135m-instruct"  # models.BUILTIN_ALIAS, repeated so `validate` stays import-light
INIT_STRATEGIES = ("mean", "hewitt", "text", "subwords", "spherical", "random")
GENERATOR_TASKS = ("pass", "style", "lexicon", "classification")  # tasks that can write their own data (data.generate)
TASK_TOKENS = {"pass": ["<PASS>"], "style": ["<STYLE_TERSE>", "<STYLE_VERBOSE>"]}
# Familiar names from transformers/PEFT, so a habit gets a precise hint.
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size":
           "batch_size", "gradient_accumulation_steps": "grad_accum", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "rank": "r", "torch_dtype": "dtype", "model_name": "name", "lr_scheduler_type": "scheduler",
           "max_seq_length": "max_length", "seq_len": "max_length", "target_modules": "targets", "bf16": "precision"}

Number = int | float


def _f(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
       lo_open: bool = False, hi_open: bool = False, factory: Any = dataclasses.MISSING) -> Any:
    """A field with an allowed range (checked at load time; None values skip the check)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    name: str = BUILTIN_MODEL
    """MODEL spec: the built-in alias, a local HF directory, a .gguf file, or a hub id."""
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    """Weights dtype when loading."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the base weights quantized (needs CUDA + bitsandbytes; checked at train time)."""
    trust_remote_code: bool = False
    """Run the model repository's own code. Off unless you trust the source."""


@dataclass
class TokenInit:
    input: str | dict[str, str] = "mean"
    """Init strategy for input-embedding rows, or {token: strategy, '*': default}."""
    output: str | dict[str, str] = "mean"
    """Init strategy for output (head) rows; ignored for tied models."""


@dataclass
class TokensConfig:
    add: list[str] = _f(factory=list)
    """Token strings to add to the vocabulary."""
    add_file: str | None = None
    """A text file with one token per line, appended to `add` (for whole vocabularies)."""
    special: bool = True
    """Add as special (control) tokens, never split and skipped by decode(skip_special_tokens); else normal added tokens."""
    single_word: bool = False
    """Normal added tokens only: match only as whole words."""
    word_start: bool = False
    """Normal added tokens only: add each word as " word" (with its leading space). Byte-level BPE tokenizers
    (GPT-2, Llama 3, SmolLM2, Qwen) fold the space into a word's first piece, so a bare "word" token still costs
    a separate space token in running text and saves nothing on two-piece words."""
    init: TokenInit = field(default_factory=TokenInit)
    """Row init: one strategy for both sides, or {input: ..., output: ...}. Strategies: mean, hewitt, text, subwords, spherical, random."""
    init_text: dict[str, str] = _f(factory=dict)
    """For init `text`: the text whose token rows are averaged, per token (e.g. {'<PASS>': 'unknown'})."""
    train_existing: list[str | int] = _f(factory=list)
    """Existing token strings or ids whose rows also train (e.g. untrained chat-template tokens)."""
    sides: Literal["both", "input", "output"] = "both"
    """Which rows train: input embeddings, output head, or both (tied models share one row)."""
    backend: Literal["rows", "peft", "full"] = "rows"
    """rows: row-sparse trainable rows (O(new x hidden)); peft: PEFT trainable_tokens; full: whole matrices (baseline)."""
    pad_to_multiple_of: int | None = _f(None, lo=1)
    """Round the resized vocabulary up to a multiple of this (tensor-core friendly)."""
    spherical_scale: float = _f(1.5, lo=0, lo_open=True)
    """For init `spherical`: radius = scale x base row std x sqrt(hidden)."""

    def all_tokens(self) -> list[str]:
        """`add` followed by the lines of `add_file`, duplicates removed, order kept."""
        tokens = list(self.add)
        if self.add_file:
            tokens += read_token_file(self.add_file)
        return list(dict.fromkeys(tokens))


@dataclass
class DataConfig:
    train: str | None = None
    """Training JSONL (prompt/completion, messages, or text rows)."""
    validation: str | None = None
    """Validation JSONL; when null, `validation_fraction` of train is held out."""
    validation_fraction: float = _f(0.1, lo=0, hi=1, hi_open=True)
    """Share of train held out for validation when no validation file is given (0 = none)."""
    generate: bool = False
    """Let the task generator write the data into the run directory (tasks pass, style, lexicon)."""
    generate_options: dict[str, Any] = _f(factory=dict)
    """Passed to the task generator."""
    max_length: int = _f(256, lo=2)
    """Longest sequence in tokens; longer examples are dropped (never silently cut)."""
    on_overflow: Literal["drop", "error", "truncate_prompt"] = "drop"
    """Too-long examples: drop (counted), error, or truncate_prompt (left-cut the prompt, never the completion)."""
    system: str | None = None
    """System prompt for chat templates; null = the template's default."""
    self_answers: bool = False
    """Task pass: answerable training questions the base model answers right train on ITS answer, not the short gold."""
    know_check: bool = False
    """Task pass (R-Tuning): answerable training questions the base model answers wrong become <PASS> targets."""


@dataclass
class TrainConfig:
    epochs: Number = _f(3, lo=0, lo_open=True)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 = use epochs."""
    batch_size: int = _f(8, lo=1)
    """Examples per device per step."""
    grad_accum: int = _f(1, lo=1)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum)."""
    lr: float = _f(2.0e-4, lo=0, lo_open=True)
    """Learning rate of the method parameters (LoRA, adapters, unfrozen weights)."""
    token_lr: float = _f(1.0e-3, lo=0, lo_open=True)
    """Learning rate of the new-token rows (new rows start far from trained ones and need a larger step)."""
    weight_decay: float = _f(0.0, lo=0)
    """Decoupled (AdamW-style) weight decay."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """adafactor keeps almost no optimizer state (large vocabularies, reference 004)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = _f(0.03, lo=0, hi=1, hi_open=True)
    """Share of the steps spent warming the learning rate up from 0."""
    max_grad_norm: float = _f(1.0, lo=0)
    """Gradient clipping norm; 0 = off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more time."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto = fp32 on CPU, bf16 where the GPU supports it."""
    logging_steps: int = _f(10, lo=1)
    """Log the loss every N steps."""
    eval_steps: int = _f(50, lo=0)
    """Evaluate every N steps; 0 = only at the end."""
    save_steps: int = _f(100, lo=0)
    """Checkpoint every N steps; 0 = only at the end."""
    save_total_limit: int | None = _f(2, lo=1)
    """Keep at most this many checkpoints (null = all)."""
    snapshot_steps: int = _f(0, lo=0)
    """Save the token rows every N steps (for drift plots); 0 = off."""
    report_to: list[str] = _f(factory=list)
    """Trackers, e.g. [tensorboard]."""
    supervised_head_only: bool = True
    """Run the LM head only where labels != -100 (saves the vocab-sized logits of prompt tokens)."""
    objective: Literal["ce", "idk"] = "ce"
    """ce: cross-entropy; idk: uncertainty-aware loss that moves mass to <PASS> (task pass only)."""


@dataclass
class EvalConfig:
    max_new_tokens: int = _f(32, lo=1)
    """Generation length for task metrics."""
    batch_size: int = _f(16, lo=1)
    """Prompts per generation batch."""
    pass_bias: float | None = None
    """Calibrated <PASS> logit bias (written by calibration)."""
    target_false_pass: float = _f(0.05, lo=0, hi=1, lo_open=True, hi_open=True)
    """Calibration target: share of answerable questions allowed to get <PASS>."""


@dataclass
class Recipe:
    seed: int = 42
    """Seeds data splits, init and training."""
    task: Literal["pass", "style", "lexicon", "generic", "classification"] = "generic"
    """Task metrics and data generator; generic = no task metrics."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    tokens: TokensConfig = field(default_factory=TokensConfig)
    """Which tokens to add or train, how their rows start, and where they live."""
    methods: list[Any] = field(default_factory=lambda: [_default_lora()])
    """Methods applied to the base model, each {type: lora|adapter|prefix|freeze, ...its fields}."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and how it is rendered and cut."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Task evaluation and calibration."""

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain YAML types; `Recipe` rebuilt from it compares equal."""
        return _to_plain(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=120)
        path.write_text(f"# tokengraft train {path}\n{body}", encoding="utf-8")
        return path

    def summary(self) -> str:
        tokens = self.tokens.add[:3] + (["..."] if len(self.tokens.add) > 3 else [])
        n_tokens = str(len(self.tokens.add)) + (f" + file {Path(self.tokens.add_file).name}" if self.tokens.add_file else "")
        methods = ", ".join(_method_text(m) for m in self.methods) or "none (token rows only)"
        data = "generated by the task" if self.data.generate else Path(self.data.train or "?").name
        steps = f"{self.train.max_steps} steps" if self.train.max_steps > 0 else f"{self.train.epochs} epochs"
        return (f"task {self.task}, model {self.model.name}, tokens {n_tokens} {tokens}, backend {self.tokens.backend}, "
                f"methods {methods}, data {data}, {steps} lr {self.train.lr:g} token_lr {self.train.token_lr:g}")


# ----------------------------------------------------------------------------- methods (delegated)


_METHOD_MODULES = ("lora", "adapter", "prefix", "freeze")


@lru_cache(maxsize=1)
def method_types() -> dict[str, type]:
    """type name -> spec dataclass, from the method modules that exist (they own the fields)."""
    found: dict[str, type] = {}
    for name in _METHOD_MODULES:
        try:
            module = importlib.import_module(f".methods.{name}", __package__)
        except ImportError:
            continue
        for obj in vars(module).values():
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and getattr(obj, "type", "") == name:
                found[name] = obj
    return found


def _method_from_dict(raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise TokengraftError(f"{where} must be a mapping like {{type: lora, r: 16}}, got {raw!r}")
    registry = method_types()
    kind = raw.get("type")
    if kind not in registry:
        raise TokengraftError(f"{where}.type must be one of {', '.join(registry) or '(no method modules installed)'}, got {kind!r}"
                              + _suggest(str(kind), list(registry)))
    cls = registry[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key != "type" and key not in names:
            raise _unknown_key(f"{where}.{key}", key, names)
    from tokengraft.methods.spec import spec_from_dict

    try:
        return spec_from_dict(cls, raw)
    except TokengraftError as exc:
        raise TokengraftError(f"{where}: {exc}") from None


def _default_lora() -> Any:
    registry = method_types()
    if "lora" not in registry:
        return {"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.05}
    return _method_from_dict({"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.05}, "methods[0]")


def _method_text(m: Any) -> str:
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    kind = d.pop("type", "?")
    main = {k: d[k] for k in ("targets", "r", "placement", "mode", "num_virtual_tokens") if k in d}
    return f"{kind}({' '.join(f'{k}={v}' for k, v in main.items())})"


# ----------------------------------------------------------------------------- coercion


def _suggest(key: str, valid: list[str]) -> str:
    alias = difflib.get_close_matches(key, list(ALIASES), n=1, cutoff=0.8)
    if alias and ALIASES[alias[0]] in valid:
        return f"; did you mean '{ALIASES[alias[0]]}'?"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown_key(dotted: str, key: str, valid: list[str]) -> TokengraftError:
    hint = _suggest(key, valid) or f" (valid keys: {', '.join(valid)})"
    return TokengraftError(f"unknown key '{dotted}'{hint}")


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if set(args) == {int, float}:
            return "a number"
        return " or ".join(_type_text(a) for a in args)
    if origin is list:
        inner = _type_text(typing.get_args(tp)[0])
        plural = {"a string": "strings", "an integer": "integers", "a number": "numbers", "anything": ""}
        return f"a list of {plural[inner]}" if plural.get(inner) else ("a list" if inner == "anything" else f"a list (items: {inner})")
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
            Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce_value(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lossless fixes only (1 -> 1.0, '1e-4' -> 0.0001)."""
    bad = TokengraftError(f"{name} must be {_type_text(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if tp is TokenInit and isinstance(value, str):
            value = {"input": value, "output": value}  # one strategy for both sides
        return _build(tp, value, name)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise TokengraftError(f"{name} must be one of {', '.join(typing.get_args(tp))}; got {value!r}"
                              + _suggest(str(value), list(typing.get_args(tp))))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, name)
            except TokengraftError as exc:
                if typing.get_origin(arg) is Literal and isinstance(value, str):
                    raise exc from None  # a misspelt enum: the list of values is the useful message
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [coerce_value(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vtype = typing.get_args(tp)
        return {str(k): coerce_value(v, vtype, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


def _check_range(value: Any, meta: typing.Mapping[str, Any], name: str) -> None:
    if value is None or not meta or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta["lo_open"] else value < lo):
        raise TokengraftError(f"{name} must be {'>' if meta['lo_open'] else '>='} {lo:g}, got {value}")
    if hi is not None and (value >= hi if meta["hi_open"] else value > hi):
        raise TokengraftError(f"{name} must be {'<' if meta['hi_open'] else '<='} {hi:g}, got {value}")


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise TokengraftError(f"{path or 'the recipe'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise _unknown_key(dotted, str(key), list(fields))
        if cls is Recipe and key == "methods":
            if value is None:
                value = []
            if not isinstance(value, list):
                raise TokengraftError(f"methods must be a list of {{type: ..., ...}} entries, got {value!r}")
            kwargs[key] = [_method_from_dict(m, f"methods[{i}]") for i, m in enumerate(value)]
            continue
        kwargs[key] = coerce_value(value, hints[key], dotted)
        _check_range(kwargs[key], fields[key].metadata, dotted)
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict") and not isinstance(obj, Recipe) and dataclasses.is_dataclass(obj):
        return _to_plain(obj.to_dict())  # method specs know their own form (with `type`)
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- loading


def read_token_file(path: str | Path) -> list[str]:
    """One token per line; blank lines skipped; surrounding whitespace stripped."""
    p = Path(path)
    if not p.is_file():
        raise TokengraftError(f"tokens.add_file {p} does not exist")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative data/token-file paths absolute against ``base`` (in place)."""
    for section, key in (("data", "train"), ("data", "validation"), ("tokens", "add_file")):
        sect = raw.get(section)
        if isinstance(sect, dict) and isinstance(sect.get(key), str) and sect[key]:
            p = Path(sect[key]).expanduser()
            sect[key] = str(p if p.is_absolute() else (base / p).resolve())
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        name = model["name"]
        candidate = base / name
        if name != BUILTIN_MODEL and not Path(name).is_absolute() and candidate.exists():
            model["name"] = str(candidate.resolve())


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise TokengraftError(f"override {dotted}: {'.'.join(parts[:i])} has {len(node)} entries; "
                                      f"'{part}' is not an index 0..{len(node) - 1}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise TokengraftError(f"override {dotted}: {here} is not a section")
        if here == "tokens.init" and isinstance(node.get(part), str):
            node[part] = {"input": node[part], "output": node[part]}
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise TokengraftError(f"override {dotted}: index '{last}' is out of range ({len(node)} entries)")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TokengraftError(f"override {dotted}: {'.'.join(parts[:-1])} is not a section")


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=1e-4`` -> ("train.lr", 0.0001); the value is YAML (lists, null, numbers)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TokengraftError(f"override {text!r} must look like key=value (e.g. train.lr=1e-4)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise TokengraftError(f"override {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return key, parsed


def apply_overrides(recipe: Recipe, overrides: typing.Iterable[str] = (), base: Path | None = None) -> Recipe:
    """A new Recipe with dotted overrides applied to the effective config (so defaults can be overridden too)."""
    raw = recipe.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
    _resolve_paths(raw, base or Path.cwd())
    return _build(Recipe, raw, "")


def recipe_from_dict(raw: Any, base: Path | None = None) -> Recipe:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise TokengraftError(f"a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    _resolve_paths(raw, base or Path.cwd())
    return _build(Recipe, raw, "")


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = (), validate: bool = True) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, and check it (without loading weights)."""
    path = Path(path)
    if not path.is_file():
        raise TokengraftError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TokengraftError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    try:
        recipe = recipe_from_dict(raw, base=path.resolve().parent)
        recipe = apply_overrides(recipe, overrides)
        if validate:
            validate_recipe(recipe)
    except TokengraftError as exc:
        raise TokengraftError(f"{path}: {exc}") from None
    return recipe


# ----------------------------------------------------------------------------- validation


def _init_strategies(init: str | dict[str, str], side: str, tokens: list[str]) -> dict[str, str]:
    """token -> strategy for one side, with the same rules as vocab.add_tokens."""
    if isinstance(init, str):
        mapping = {t: init for t in tokens}
    else:
        for key in init:
            if key != "*" and key not in tokens:
                raise TokengraftError(f"tokens.init.{side} names {key!r}, which is not a token being added"
                                      + _suggest(key, tokens))
        mapping = {t: init.get(t, init.get("*", "mean")) for t in tokens}
        if not tokens:
            mapping = {k: v for k, v in init.items()}
    for token, strategy in mapping.items():
        if strategy not in INIT_STRATEGIES:
            raise TokengraftError(f"tokens.init.{side} for {token!r} is {strategy!r}; use one of {', '.join(INIT_STRATEGIES)}"
                                  + _suggest(strategy, list(INIT_STRATEGIES)))
    return mapping


def validate_recipe(recipe: Recipe, check_model: bool = False) -> list[str]:
    """Check cross-field rules (and, with ``check_model``, model-dependent ones on the meta device).

    Raises TokengraftError for anything that cannot run or would fail silently; returns
    notes about settings that are legal but ignored.
    """
    notes: list[str] = []
    t, d, tr = recipe.tokens, recipe.data, recipe.train
    # tokens
    for i, token in enumerate(t.add):
        if not token.strip():
            raise TokengraftError(f"tokens.add[{i}] is empty; remove it")
    dupes = sorted({x for x in t.add if t.add.count(x) > 1})
    if dupes:
        raise TokengraftError(f"tokens.add lists {dupes[0]!r} more than once")
    tokens = t.all_tokens()
    sides = [_init_strategies(t.init.input, "input", tokens), _init_strategies(t.init.output, "output", tokens)]
    text_tokens = sorted({k for side in sides for k, v in side.items() if v == "text" and k != "*"})
    for key in t.init_text:
        if key not in tokens:
            raise TokengraftError(f"tokens.init_text has {key!r}, which is not in tokens.add" + _suggest(key, tokens))
    missing = [tok for tok in text_tokens if tok not in t.init_text]
    if missing:
        raise TokengraftError(f"tokens.init_text has no entry for {missing[0]!r}, needed by init 'text' "
                              f"(e.g. tokens.init_text: {{{missing[0]!r}: 'unknown'}}), or use init: mean")
    for i, item in enumerate(t.train_existing):
        if isinstance(item, int) and item < 0:
            raise TokengraftError(f"tokens.train_existing[{i}] is a negative id ({item})")
    if (t.single_word or t.word_start) and t.special:
        raise TokengraftError("tokens.single_word / word_start apply to normal added tokens; set tokens.special: false")
    if t.single_word and t.word_start:
        # single_word wants a non-word character before the match, but a " word" token starts with the space
        # that follows the previous word: it would never match in running text.
        raise TokengraftError("tokens.word_start and tokens.single_word exclude each other; drop single_word")
    if not tokens and not t.train_existing:
        if recipe.task in TASK_TOKENS:
            raise TokengraftError(f"task {recipe.task} needs its tokens in tokens.add (e.g. {TASK_TOKENS[recipe.task]})")
        if not (recipe.task == "lexicon" and d.generate):
            notes.append("no tokens to add or train: this is plain fine-tuning of the methods")
    # methods
    kinds = [m.type if hasattr(m, "type") else m.get("type") for m in recipe.methods]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise TokengraftError(f"methods lists '{kind}' {kinds.count(kind)} times; merge them into one entry")
    wrapping = [m.type for m in recipe.methods if getattr(m, "wraps_model", False)]
    if len(wrapping) > 1:
        raise TokengraftError(f"methods {' and '.join(wrapping)} both wrap the model with PEFT; keep one of them")
    # task / objective
    if tr.objective == "idk" and recipe.task != "pass":
        raise TokengraftError(f"train.objective: idk needs task: pass (it moves probability to <PASS>); task is {recipe.task}")
    if recipe.task == "classification" and tr.supervised_head_only:
        notes.append("train.supervised_head_only is ignored for task classification")
    if recipe.eval.pass_bias is not None and recipe.task != "pass":
        notes.append("eval.pass_bias is ignored outside task pass")
    if tr.max_steps == 0 or tr.max_steps < -1:
        raise TokengraftError(f"train.max_steps must be -1 (use epochs) or a positive number of steps, got {tr.max_steps}")
    if recipe.model.device != "auto" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", recipe.model.device):
        raise TokengraftError(f"model.device must be auto, cpu, mps, cuda or cuda:N; got {recipe.model.device!r}")
    # data
    if d.generate:
        if recipe.task not in GENERATOR_TASKS:
            raise TokengraftError(f"task {recipe.task} has no data generator; set data.generate: false and data.train: FILE.jsonl")
        if d.train or d.validation:
            raise TokengraftError("data.generate is true and data.train/validation are set; "
                                  "set data.generate: false to use your files, or remove data.train")
    elif not d.train:
        hint = " or data.generate: true" if recipe.task in GENERATOR_TASKS else ""
        raise TokengraftError(f"data.train is required (a JSONL file){hint}")
    for key in ("train", "validation"):
        value = getattr(d, key)
        if value and not Path(value).is_file():
            raise TokengraftError(f"data.{key}: file {value} does not exist")
    if d.generate_options and not d.generate:
        notes.append("data.generate_options is ignored because data.generate is false")
    if (d.know_check or d.self_answers) and recipe.task != "pass":
        raise TokengraftError("data.know_check / data.self_answers label <PASS> training rows; they need task: pass")
    if not d.validation and d.validation_fraction == 0 and not d.generate and tr.eval_steps:
        notes.append("no validation data (data.validation null, validation_fraction 0): evaluation is skipped")
    if check_model:
        notes += _check_with_model(recipe)
    return notes


def _check_with_model(recipe: Recipe) -> list[str]:
    """Model-dependent checks on the meta device: no weights are read.

    Methods may expose ``check(model, arch)``; otherwise we ask them where they would
    put their parameters, which resolves targets and block ranges (and raises on
    LoRA names that do not exist, top_k past the depth, BitFit without biases).
    """
    from tokengraft.models import load_config_model, load_tokenizer

    notes: list[str] = []
    model = load_config_model(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    try:
        from tokengraft.core.arch import describe
    except ImportError:  # arch.py not available: structural method checks are skipped
        return ["model checks skipped: tokengraft.core.arch is not available"]
    arch = describe(model)
    for i, spec in enumerate(recipe.methods):
        try:
            if hasattr(spec, "check"):
                spec.check(model, arch)
                continue
            spec.where(arch)
            if spec.type == "freeze":
                from tokengraft.methods.freeze import select_parameters

                select_parameters(spec, model, arch)
            elif spec.type == "lora":
                from tokengraft.methods.lora import target_module_names

                target_module_names(spec, arch)
        except TokengraftError as exc:
            raise TokengraftError(f"methods[{i}] ({spec.type}) on {recipe.model.name}: {exc}") from None
    try:
        tokenizer = load_tokenizer(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    except TokengraftError as exc:  # e.g. a config-only directory: training will refuse it with this message
        return notes + [f"tokenizer checks skipped: {exc}"]
    vocab = tokenizer.get_vocab()
    for i, item in enumerate(recipe.tokens.train_existing):
        if isinstance(item, int) and item >= len(tokenizer):
            raise TokengraftError(f"tokens.train_existing[{i}] is id {item}, past the tokenizer's {len(tokenizer)} tokens")
        if isinstance(item, str) and item not in vocab:
            raise TokengraftError(f"tokens.train_existing[{i}] {item!r} is not a token of {recipe.model.name}; "
                                  "list new tokens under tokens.add")
    known = [tok for tok in recipe.tokens.all_tokens() if tok in vocab]
    if known:
        notes.append(f"{len(known)} token(s) already exist in the vocabulary and keep their ids (e.g. {known[0]!r})")
    return notes


# ----------------------------------------------------------------------------- defaults and docs


def default_recipe(task: str = "generic") -> Recipe:
    """A sensible starting recipe per task (data generated for tasks that have a generator)."""
    tasks = typing.get_args(typing.get_type_hints(Recipe)["task"])
    if task not in tasks:
        raise TokengraftError(f"unknown task {task!r}; use one of {', '.join(tasks)}" + _suggest(task, list(tasks)))
    recipe = Recipe(task=task)  # type: ignore[arg-type]
    recipe.data.generate = task in GENERATOR_TASKS
    if task == "pass":
        recipe.tokens.add = ["<PASS>"]
        recipe.tokens.init = TokenInit("text", "text")
        recipe.tokens.init_text = {"<PASS>": "unknown"}
    elif task == "style":
        recipe.tokens.add = ["<STYLE_TERSE>", "<STYLE_VERBOSE>"]
        recipe.tokens.init = TokenInit("text", "mean")
        recipe.tokens.init_text = {"<STYLE_TERSE>": "brief", "<STYLE_VERBOSE>": "detailed"}
    elif task == "lexicon":
        # Whole new words: normal (not special) tokens that decode as text, initialised
        # from their own subword pieces; trained through the embeddings alone (reference 004).
        recipe.tokens.special = False
        recipe.tokens.init = TokenInit("subwords", "subwords")
        recipe.methods = []
        recipe.train.lr = 5e-4
        recipe.train.token_lr = 5e-4
    return recipe


@lru_cache(maxsize=None)
def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal under it in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value
    return docs


def schema_docs(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, doc) for every recipe field, in file order: the reference for recipes."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((dotted, "section", docs.get(f.name, "")))
            rows += schema_docs(tp, dotted + ".")
        else:
            rows.append((dotted, _type_text(tp), docs.get(f.name, "")))
    return rows
