"""The base of every method's settings dataclass, and the dict -> dataclass validation.

A recipe lists methods as plain dicts (``{"type": "lora", "r": 16}``). Each method
module declares one dataclass; `spec_from_dict` checks field names and types from
the dataclass annotations so every method gets the same clear errors ("lora: unknown
field 'rank'; known fields: alpha, dropout, r, ...") without hand-written parsing.
Range checks that are specific to a method live in its ``validate``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.schema import coerce_value


@dataclass
class MethodSpec:
    """Settings of one method. Subclasses set ``type`` and implement ``apply``.

    ``wraps_model`` marks methods that go through PEFT's ``get_peft_model`` (LoRA,
    prefix): they replace the model object, so at most one of them per recipe.
    """

    type: ClassVar[str] = ""
    wraps_model: ClassVar[bool] = False

    def validate(self) -> None:
        """Raise TokengraftError naming the bad field; called by `spec_from_dict`."""

    def check(self, model: nn.Module, arch: Any) -> None:
        """Raise TokengraftError when the spec cannot apply to this model; works on the meta device.

        The recipe check before any weight is read (`tokengraft validate --check-model`):
        resolving where the parameters would go raises on block ranges past the depth;
        methods whose selection depends on more than ``where`` add their own checks.
        """
        self.where(arch)

    def bind(self, tokenizer: Any, tokens: list[str]) -> MethodSpec:
        """The spec resolved against the run's tokenizer and the tokens it grafts (``tokens``).

        Most methods name no token and return themselves; aLoRA turns its invocation
        strings into ids here. Called by ``core.graft`` before `apply`, on training and
        on loading alike, so both resolve the same ids.
        """
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}

    def where(self, arch: Any) -> str:
        """Where the trainable parameters sit, for tables and audits."""
        return ""

    def merge_blocker(self) -> str | None:
        """None when the trained weights fold into a plain checkpoint, else why not (one clause, no advice)."""
        return None


def fail(spec_type: str, field: str, message: str) -> TokengraftError:
    return TokengraftError(f"{spec_type}: field '{field}' {message}")


def spec_from_dict(cls: type[MethodSpec], d: dict[str, Any]) -> MethodSpec:
    """Build and validate ``cls`` from a recipe dict (the ``type`` key is ignored here)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if k != "type" and k not in fields)
    if unknown:
        raise TokengraftError(f"{cls.type}: unknown field '{unknown[0]}'; known fields: {', '.join(sorted(fields)) or '(none)'}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in d:
            try:  # the recipe's own type checks, so method fields and recipe fields read alike
                kwargs[name] = coerce_value(d[name], hints[name], name)
            except TokengraftError as exc:
                raise fail(cls.type, name, str(exc).removeprefix(f"{name} ")) from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise TokengraftError(f"{cls.type}: field '{name}' is required")
    spec = cls(**kwargs)
    spec.validate()
    return spec


def require_positive(spec_type: str, field: str, value: int | float | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise fail(spec_type, field, f"must be positive, got {value!r}")


def resolve_top_blocks(spec_type: str, field: str, arch: Any, k: int | None) -> list[int]:
    """Indices of the last ``k`` blocks (all blocks when k is None); k past the depth is an error."""
    n = int(arch.num_blocks)
    if k is None:
        return list(range(n))
    if k > n:
        raise fail(spec_type, field, f"is {k} but this {arch.model_type} model has only {n} blocks")
    return list(range(n - k, n))


def block_range_text(blocks: list[int]) -> str:
    if not blocks:
        return "no blocks"
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks[0]}-{blocks[-1]}"
    return "blocks " + ",".join(str(b) for b in blocks)


def base_layer(module: nn.Module) -> nn.Module:
    """The original layer under a PEFT wrapper (LoRA replaces ``q_proj`` by a layer holding ``base_layer``)."""
    getter = getattr(module, "get_base_layer", None)
    return getter() if callable(getter) else module


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first floating parameter (new weights must match it)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def unwrap_peft(model: Any) -> Any:
    """The transformers model under a PEFT wrapper, or the model itself (module paths there match ArchInfo's).

    The one definition for the whole package: methods wrap models, and everything above
    them (rows, graft, training, export) needs the plain model back.
    """
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def canonical_name(name: str) -> str:
    """A parameter name with PEFT's ``base_layer.`` hop removed, i.e. its name in the plain model."""
    return name.replace(".base_layer.", ".")
