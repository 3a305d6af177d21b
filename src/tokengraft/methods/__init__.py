"""The PEFT methods registry: build specs from recipe dicts, apply them, save/load/merge them.

Methods (one module each): ``lora``, ``prefix`` (both wrap the model with PEFT, so at
most one of them), ``adapter`` (bottleneck adapters on forward hooks) and ``freeze``
(attention_only / bitfit / top_k_blocks / pattern). They compose, e.g. LoRA on
attention + BitFit + post-FFN adapters.

`apply_methods` first freezes every base parameter, so what is trainable afterwards
is exactly what the methods chose and a method that selects nothing is detected
(and refused) instead of training nothing. The PEFT-wrapping method runs first:
PEFT marks everything except its own weights as frozen when it wraps, which would
undo the other methods if they ran before it. Token rows are not a method: rows.py
attaches them after `apply_methods` and re-enables its own parameters.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.adapter import CONTAINER, AdapterSpec
from tokengraft.methods.classification import head_module_name
from tokengraft.methods.freeze import FreezeSpec
from tokengraft.methods.lora import LoraSpec
from tokengraft.methods.prefix import PrefixSpec
from tokengraft.methods.spec import MethodSpec, spec_from_dict, unwrap
from tokengraft.methods.state import MethodRecord, MethodsState, load_methods, merge

REGISTRY: dict[str, type[MethodSpec]] = {cls.type: cls for cls in (LoraSpec, AdapterSpec, PrefixSpec, FreezeSpec)}

__all__ = ["REGISTRY", "MethodSpec", "LoraSpec", "AdapterSpec", "PrefixSpec", "FreezeSpec", "MethodRecord",
           "MethodsState", "build_spec", "build_specs", "apply_methods", "load_methods", "merge"]


def build_spec(d: dict[str, Any] | MethodSpec) -> MethodSpec:
    """A validated spec from ``{"type": "lora", ...}``; errors name the field to fix."""
    if isinstance(d, MethodSpec):
        return d
    if not isinstance(d, dict):
        raise TokengraftError(f"a method must be a mapping with a 'type' key, got {d!r}")
    kind = d.get("type")
    if kind not in REGISTRY:
        raise TokengraftError(f"method field 'type' must be one of {', '.join(REGISTRY)}, got {kind!r}")
    return spec_from_dict(REGISTRY[kind], d)


def build_specs(items: list[dict[str, Any] | MethodSpec]) -> list[MethodSpec]:
    specs = [build_spec(d) for d in items]
    wrapping = [s.type for s in specs if s.wraps_model]
    if len(wrapping) > 1:
        raise TokengraftError(f"methods: only one of lora/prefix per recipe (got {' and '.join(wrapping)}); "
                              "PEFT wraps the model once")
    return specs


def _trainable(model: nn.Module) -> dict[int, tuple[str, nn.Parameter]]:
    return {id(p): (n, p) for n, p in model.named_parameters() if p.requires_grad}


def apply_methods(model: nn.Module, arch: Any, specs: list[dict[str, Any] | MethodSpec]) -> tuple[nn.Module, MethodsState]:
    """Freeze the base, apply each method, and return ``(model, state)``.

    The returned model is a PEFT wrapper when lora/prefix is used, else ``model``
    itself. ``state.records`` lists, per method, the parameters it made trainable
    (names in the returned model) and their count. A classifier's head (see
    classification.py) is always made trainable and recorded as ``head``.
    """
    specs = build_specs(list(specs))
    # A PeftModel or our adapter container means methods ran already. (A plain model may carry
    # ``peft_config`` from PEFT's trainable-tokens injection, which graft.py does before us: fine.)
    if unwrap(model) is not model or hasattr(unwrap(model), CONTAINER):
        raise TokengraftError("methods were already applied to this model; apply them once, to a fresh base model")
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    ordered = [s for s in specs if s.wraps_model] + [s for s in specs if not s.wraps_model]
    records: list[MethodRecord] = []
    for spec in ordered:
        before = _trainable(model)
        model = spec.apply(model, arch)
        after = _trainable(model)
        new = {k: v for k, v in after.items() if k not in before}
        if not new:
            raise TokengraftError(f"{spec.type} selects nothing trainable in this {arch.model_type} model "
                                  f"({spec.where(arch) or spec.to_dict()}); change its settings")
        records.append(MethodRecord.from_params(spec, spec.where(arch), new.values()))
    head = head_module_name(unwrap(model))
    if head is not None:
        before = _trainable(model)
        for n, p in unwrap(model).get_submodule(head).named_parameters():
            if "original_module" not in n:  # PEFT's frozen original next to its trainable copy
                p.requires_grad_(True)
        new = {k: v for k, v in _trainable(model).items() if k not in before}
        if new:
            records.append(MethodRecord.from_params(None, f"classification head '{head}'", new.values()))
        for record in records:  # PEFT's classifier wrapper trains the head as part of lora/prefix
            if any(f"{head}.modules_to_save." in n for n in record.names):
                record.where += f" + classification head '{head}'"
    # New modules (LoRA dropout, adapters) are born in train mode; match the model's mode so an
    # eval-mode model stays deterministic after methods are applied.
    model.train(was_training)
    # Records follow the order the user wrote, with the head last.
    position = {id(s): i for i, s in enumerate(specs)}
    records.sort(key=lambda r: position[id(r.spec)] if r.spec is not None else len(specs))
    return model, MethodsState(model=model, specs=specs, records=records)
