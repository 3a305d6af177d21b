"""Parameter-efficient methods: build specs from recipe dicts, apply them, save/load/merge them.

Methods (one module each): ``lora``, ``alora`` (activated LoRA: acts only from an
invocation token onward), ``prefix`` (all three wrap the model with PEFT, so at most one
of them), ``adapter`` (bottleneck adapters on forward hooks) and ``freeze``
(attention_only / bitfit / top_k_blocks / pattern). They compose, e.g. LoRA on
attention + BitFit + post-FFN adapters. ``classification`` turns a causal LM into a
sequence classifier whose head every method trains along.

Layout: spec.py (the base dataclass, field checks, `unwrap_peft`), registry.py (the ONE
type -> spec registry), apply.py (`apply_methods`, `load_methods`, `reapply_methods`), state.py (what was
made trainable; save and merge). This package imports only schema, constants and errors
from tokengraft: the recipe (config.py) sits above it and reads its registry.
"""

from __future__ import annotations

from tokengraft.methods.adapter import AdapterSpec
from tokengraft.methods.alora import AloraSpec
from tokengraft.methods.apply import apply_methods, load_methods, reapply_methods
from tokengraft.methods.freeze import FreezeSpec
from tokengraft.methods.lora import LoraSpec
from tokengraft.methods.prefix import PrefixSpec
from tokengraft.methods.registry import REGISTRY, build_spec, build_specs
from tokengraft.methods.spec import MethodSpec, unwrap_peft
from tokengraft.methods.state import MethodRecord, MethodsState, merge

__all__ = ["REGISTRY", "MethodSpec", "LoraSpec", "AloraSpec", "AdapterSpec", "PrefixSpec", "FreezeSpec", "MethodRecord",
           "MethodsState", "build_spec", "build_specs", "apply_methods", "load_methods", "reapply_methods", "merge",
           "unwrap_peft"]
