"""Dataclasses as a checked file format: the recipe machinery, with no recipe in it.

The recipe (config.py) and each method's settings (methods/*) are plain dataclasses.
This module turns a parsed YAML mapping into one of them and back, and documents them:

- `option` declares a field with an allowed range (and, rarely, its own parser);
- `build` checks every key and value against the annotations: unknown keys get the
  closest valid key (`suggest`), enums list their values, numbers are range-checked;
  `coerce_value` makes only lossless fixes (1 -> 1.0, YAML 1.1's '1e-4' -> 0.0001);
- `to_plain` is the inverse: YAML types that `build` reads back to an equal object;
- `field_docs` reads the string literal under each field, so the reference for recipe
  keys is the code itself and cannot drift from it.

Every error is a TokengraftError that names the dotted key and the fix. Torch-free.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

from tokengraft.errors import TokengraftError

# Familiar names from transformers/PEFT, so a habit gets a precise hint.
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size":
           "batch_size", "gradient_accumulation_steps": "grad_accum", "lora_alpha": "alpha", "lora_dropout": "dropout",
           "rank": "r", "torch_dtype": "dtype", "model_name": "name", "lr_scheduler_type": "scheduler",
           "max_seq_length": "max_length", "seq_len": "max_length", "target_modules": "targets", "bf16": "precision",
           "bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant",
           "bnb_4bit_compute_dtype": "compute_dtype", "load_in_4bit": "quantization", "load_in_8bit": "quantization"}

Parser = Callable[[Any, str], Any]
"""A field's own reader: (raw YAML value, dotted key) -> the field's value."""


def option(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, factory: Any = dataclasses.MISSING,
           parse: Parser | None = None) -> Any:
    """A dataclass field with an allowed range, checked by `build` (None values skip the check).

    ``parse`` replaces the annotation-driven coercion for fields whose YAML form is not
    their Python form (a shorthand, or entries that pick their own dataclass).
    """
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "parse": parse}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- errors


def suggest(key: str, valid: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the alias or closest valid key, else ``""``."""
    alias = difflib.get_close_matches(key, list(ALIASES), n=1, cutoff=0.8)
    if alias and ALIASES[alias[0]] in valid:
        return f"; did you mean '{ALIASES[alias[0]]}'?"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(dotted: str, key: str, valid: list[str]) -> TokengraftError:
    """The error for a key the dataclass does not have: a suggestion, else the valid keys."""
    hint = suggest(key, valid) or f" (valid keys: {', '.join(valid)})"
    return TokengraftError(f"unknown key '{dotted}'{hint}")


def type_text(tp: Any) -> str:
    """An annotation in words, for errors and the docs ('a list of strings', 'one of a, b')."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if set(args) == {int, float}:
            return "a number"
        return " or ".join(type_text(a) for a in args)
    if origin is list:
        inner = type_text(typing.get_args(tp)[0])
        plural = {"a string": "strings", "an integer": "integers", "a number": "numbers", "anything": ""}
        return f"a list of {plural[inner]}" if plural.get(inner) else ("a list" if inner == "anything" else f"a list (items: {inner})")
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
            Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


# ----------------------------------------------------------------------------- reading


def coerce_value(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against the annotation ``tp``; lossless fixes only (1 -> 1.0, '1e-4' -> 0.0001)."""
    bad = TokengraftError(f"{name} must be {type_text(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, name)  # type: ignore[arg-type]
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise TokengraftError(f"{name} must be one of {', '.join(typing.get_args(tp))}; got {value!r}"
                              + suggest(str(value), list(typing.get_args(tp))))
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
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad
        if not math.isfinite(number):  # YAML's .nan / .inf: training would only fail (or NaN) later
            raise TokengraftError(f"{name} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


def check_range(value: Any, meta: typing.Mapping[str, Any], name: str) -> None:
    """Raise when a number falls outside the range `option` declared (no range, no check)."""
    if value is None or not meta or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta["lo_open"] else value < lo):
        raise TokengraftError(f"{name} must be {'>' if meta['lo_open'] else '>='} {lo:g}, got {value}")
    if hi is not None and (value >= hi if meta["hi_open"] else value > hi):
        raise TokengraftError(f"{name} must be {'<' if meta['hi_open'] else '<='} {hi:g}, got {value}")


def build(cls: type, data: Any, path: str) -> Any:
    """``cls`` from a mapping: every key known, every value coerced and range-checked; missing keys keep defaults."""
    if not isinstance(data, dict):
        raise TokengraftError(f"{path or 'the recipe'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise unknown_key(dotted, str(key), list(fields))
        meta = fields[key].metadata
        parse = meta.get("parse")
        kwargs[key] = parse(value, dotted) if parse is not None else coerce_value(value, hints[key], dotted)
        check_range(kwargs[key], meta, dotted)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- writing and docs


def to_plain(obj: Any) -> Any:
    """Plain YAML types; a dataclass with a ``to_dict`` (a method spec) writes its own form."""
    if dataclasses.is_dataclass(obj) and hasattr(obj, "to_dict"):
        return to_plain(obj.to_dict())
    if dataclasses.is_dataclass(obj):
        return fields_to_plain(obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def fields_to_plain(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as plain YAML types (what a ``to_dict`` built on this module returns)."""
    return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@lru_cache(maxsize=None)
def attribute_docs(cls: type) -> dict[str, str]:
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


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, doc) for every field of ``cls`` and its nested dataclasses, in file order."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((dotted, "section", docs.get(f.name, "")))
            rows += field_docs(tp, dotted + ".")  # type: ignore[arg-type]
        else:
            rows.append((dotted, type_text(tp), docs.get(f.name, "")))
    return rows
