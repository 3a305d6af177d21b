"""LoRA through PEFT, with targets resolved from structural roles instead of guessed names.

``targets`` is a preset (``attention``, ``attention_mlp``, ``all_linear``, taken from
ArchInfo's per-family resolution: q/k/v/o on Llama/Qwen, query_key_value/dense/... on
GPT-NeoX, c_attn/attn.c_proj/mlp.c_fc/mlp.c_proj on GPT-2) or a list of roles
(``q``, ``v``, ``down`` ...) or block-relative module names (``self_attn.q_proj``).

PEFT is handed the *full* dotted module names, never bare suffixes: on GPT-2 the
suffix ``c_proj`` names both the attention output and the second MLP layer, and a
suffix list would silently put LoRA on both. We never use PEFT's ``all-linear``
shortcut either: it would also target the head, which rows.py owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import (MethodSpec, base_layer, block_range_text, fail, require_positive, resolve_top_blocks, unwrap_peft)

PRESETS = ("attention", "attention_mlp", "all_linear")
ROLES = ("q", "k", "v", "o", "qkv", "up", "gate", "down")


@dataclass
class LoraSpec(MethodSpec):
    """Low-rank updates on chosen linear layers; merges into plain weights."""

    type: ClassVar[str] = "lora"
    wraps_model: ClassVar[bool] = True
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: str | list[str] = "attention"
    top_k_blocks: int | None = None   # None = every block
    seed: int = 0                     # LoRA's A matrices are random; B starts at zero so step 0 is the base model

    def validate(self) -> None:
        require_positive(self.type, "r", self.r, allow_none=False)
        require_positive(self.type, "alpha", self.alpha, allow_none=False)
        if not 0.0 <= self.dropout < 1.0:
            raise fail(self.type, "dropout", f"must be in [0, 1), got {self.dropout}")
        require_positive(self.type, "top_k_blocks", self.top_k_blocks)
        if isinstance(self.targets, str) and self.targets not in PRESETS:
            raise fail(self.type, "targets", f"must be one of {', '.join(PRESETS)} or a list of roles/module names, "
                                             f"got {self.targets!r}")
        if isinstance(self.targets, list) and not self.targets:
            raise fail(self.type, "targets", "is an empty list")

    def where(self, arch: Any) -> str:
        rels = resolve_relative_targets(self, arch)
        blocks = resolve_top_blocks(self.type, "top_k_blocks", arch, self.top_k_blocks)
        return f"inside {', '.join(rels)} ({block_range_text(blocks)})"

    def check(self, model: nn.Module, arch: Any) -> None:
        """Targets must name layers of this model and the block range must fit its depth."""
        self.where(arch)
        target_module_names(self, arch)

    def apply(self, model: nn.Module, arch: Any) -> nn.Module:
        return wrap_with_peft(model, self.peft_config(model, arch), self.seed)

    def peft_config(self, model: nn.Module, arch: Any, **extra: Any) -> Any:
        """PEFT's ``LoraConfig`` for these settings (``extra``: further LoraConfig fields, e.g. aLoRA's invocation)."""
        from peft import LoraConfig

        names = target_module_names(self, arch)
        base = unwrap_peft(model)
        kinds = {_layer_kind(base_layer(base.get_submodule(n))) for n in names}
        if None in kinds:
            bad = sorted({type(base_layer(base.get_submodule(n))).__name__ for n in names
                          if _layer_kind(base_layer(base.get_submodule(n))) is None})
            raise TokengraftError(f"lora: targets include layers of type {', '.join(bad)}, which are not linear "
                                  "layers PEFT can adapt; choose other targets")
        # GPT-2's Conv1D stores weights as (in, out): PEFT must transpose them.
        fan_in_fan_out = "conv1d" in kinds
        if len(kinds) > 1:
            raise TokengraftError("lora: targets mix Conv1D and Linear layers; PEFT needs one fan_in_fan_out setting")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=names,
                          fan_in_fan_out=fan_in_fan_out, bias="none", task_type=peft_task_type(model), **extra)


def wrap_with_peft(model: nn.Module, config: Any, seed: int) -> nn.Module:
    """``get_peft_model`` with LoRA's random A matrices drawn from ``seed`` (the global RNG is left as it was)."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def _layer_kind(module: nn.Module) -> str | None:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, nn.Linear):  # includes subclasses such as FalconLinear
        return "linear"
    return None


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task type from the model class: it decides the wrapper (generate for LMs, head handling for classifiers)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

    name = type(model).__name__
    if name.endswith("ForSequenceClassification") or name in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
        return "SEQ_CLS"
    if name.endswith("ForCausalLM") or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "CAUSAL_LM"
    return None


def _linear_roles(arch: Any) -> dict[str, str]:
    return dict(getattr(arch, "linear_roles", None) or {})


def resolve_relative_targets(spec: LoraSpec, arch: Any) -> list[str]:
    """Block-relative module names (``self_attn.q_proj``) for the spec's targets."""
    if isinstance(spec.targets, str):
        rels = list((getattr(arch, "lora_targets", None) or {}).get(spec.targets) or [])
        if not rels:
            raise TokengraftError(f"lora: targets '{spec.targets}' resolves to no layer in this {arch.model_type} model; "
                                  "list module names explicitly (see `tokengraft inspect`)")
        return rels
    roles = _linear_roles(arch)
    rels: list[str] = []
    for item in spec.targets:
        if item in ROLES:
            found = [rel for rel, role in roles.items() if role == item]
            if not found:
                raise fail(spec.type, "targets", f"role '{item}' does not exist in this {arch.model_type} model "
                                                 f"(roles: {', '.join(sorted(set(roles.values())))})")
        elif item in roles:
            found = [item]
        else:
            found = [rel for rel in roles if rel.endswith("." + item)]
            if not found:
                raise fail(spec.type, "targets", f"'{item}' names no linear layer in a {arch.model_type} block "
                                                 f"(layers: {', '.join(roles)})")
            if len(found) > 1:
                raise fail(spec.type, "targets", f"'{item}' is ambiguous in this {arch.model_type} model "
                                                 f"({', '.join(found)}); write one of those names or a role")
        rels.extend(r for r in found if r not in rels)
    return rels


def target_module_names(spec: LoraSpec, arch: Any) -> list[str]:
    """Full dotted module names PEFT matches exactly (``model.layers.3.self_attn.q_proj``)."""
    rels = resolve_relative_targets(spec, arch)
    blocks = resolve_top_blocks(spec.type, "top_k_blocks", arch, spec.top_k_blocks)
    return [f"{arch.block_path(i)}.{rel}" for i in blocks for rel in rels]
