"""The ONE method registry: recipe ``type`` names -> the spec dataclass that owns the method's fields.

The recipe loader (config.py), the run-directory loader and the CLI all build specs
through here, so a method exists for all of them or for none. A new method is one
module with a `MethodSpec` subclass, listed in `REGISTRY`; the order here is the order
error messages list the types in.
"""

from __future__ import annotations

from typing import Any

from tokengraft.errors import TokengraftError
from tokengraft.methods.adapter import AdapterSpec
from tokengraft.methods.alora import AloraSpec
from tokengraft.methods.freeze import FreezeSpec
from tokengraft.methods.lora import LoraSpec
from tokengraft.methods.prefix import PrefixSpec
from tokengraft.methods.spec import MethodSpec, spec_from_dict

REGISTRY: dict[str, type[MethodSpec]] = {cls.type: cls for cls in (LoraSpec, AloraSpec, AdapterSpec, PrefixSpec,
                                                                   FreezeSpec)}


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
    """Validated specs; at most one of them may wrap the model with PEFT."""
    specs = [build_spec(d) for d in items]
    wrapping = [s.type for s in specs if s.wraps_model]
    if len(wrapping) > 1:
        raise TokengraftError(f"methods: only one of lora/alora/prefix per recipe (got {' and '.join(wrapping)}); "
                              "PEFT wraps the model once")
    return specs
