"""Selective unfreezing: train some of the base weights in place.

Modes (reference 001 describes the first two on Qwen2.5):

- ``attention_only``: the attention projections (q/k/v/o or fused qkv, weights and
  biases) of the top-k blocks.
- ``bitfit``: only bias vectors (projections and norms) of the top-k blocks. Many
  modern models have no biases at all (Llama) or only q/k/v biases (Qwen2), so an
  empty selection is an error, not a silent no-op run.
- ``top_k_blocks``: every parameter of the top-k blocks.
- ``pattern``: a regex searched in parameter names (names as in the plain model).

Embedding and head rows are never unfrozen here: new-token rows are the job of
``rows.py``, and unfreezing a full vocab x hidden matrix is exactly what tokengraft
avoids. Trained weights stay in their tensors, so a merged export is the model itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import (MethodSpec, base_layer, block_range_text, canonical_name, fail, require_positive, resolve_top_blocks, unwrap_peft)

MODES = ("attention_only", "bitfit", "top_k_blocks", "pattern")


@dataclass
class FreezeSpec(MethodSpec):
    """Unfreeze a structural subset of the base weights."""

    type: ClassVar[str] = "freeze"
    mode: str = "attention_only"
    top_k: int = 4          # blocks counted from the output end; the reference's choice for a 28-block model
    pattern: str | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise fail(self.type, "mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        require_positive(self.type, "top_k", self.top_k, allow_none=False)
        if self.mode == "pattern":
            if not self.pattern:
                raise fail(self.type, "pattern", "is required when mode is 'pattern' (a regex over parameter names)")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise fail(self.type, "pattern", f"is not a valid regex ({exc})") from None
        elif self.pattern is not None:
            raise fail(self.type, "pattern", f"is only used with mode 'pattern' (mode is {self.mode!r})")

    def where(self, arch: Any) -> str:
        if self.mode == "pattern":
            return f"parameters matching /{self.pattern}/"
        blocks = block_range_text(resolve_top_blocks(self.type, "top_k", arch, self.top_k))
        return {
            "attention_only": f"attention projections (weights+biases), {blocks}",
            "bitfit": f"bias vectors only, {blocks}",
            "top_k_blocks": f"whole blocks, {blocks}",
        }[self.mode]

    def check(self, model: nn.Module, arch: Any) -> None:
        """The selection must be non-empty on this model (BitFit on a model without biases is not)."""
        self.where(arch)
        select_parameters(self, model, arch)

    def apply(self, model: nn.Module, arch: Any) -> nn.Module:
        base = unwrap_peft(model)
        params = select_parameters(self, base, arch)
        if any(not p.is_floating_point() for p in params):  # bitsandbytes' packed 4-bit / int8 weights
            raise TokengraftError(f"freeze {self.mode}: the selection includes quantized base weights, which are "
                                  "stored as integers and cannot train; use lora (QLoRA), freeze mode bitfit, "
                                  "or load the base with model.quantization: none")
        for p in params:
            p.requires_grad_(True)
        return model


def _is_method_param(name: str) -> bool:
    """Parameters added by methods (LoRA, adapters, prefix) are not base weights."""
    return "lora_" in name or name.startswith("tokengraft_") or ".tokengraft_" in name or "prompt_encoder" in name


def select_parameters(spec: FreezeSpec, base: nn.Module, arch: Any) -> list[nn.Parameter]:
    """The base parameters a freeze spec unfreezes; raises when the selection is empty."""
    if spec.mode == "pattern":
        return _select_pattern(spec, base, arch)
    blocks = resolve_top_blocks(spec.type, "top_k", arch, spec.top_k)
    selected: list[nn.Parameter] = []
    for i in blocks:
        block = base.get_submodule(arch.block_path(i))
        if spec.mode == "attention_only":
            rels = [getattr(arch.attention, r) for r in ("q", "k", "v", "o", "qkv")]
            rels = [r for r in rels if r]
            if not rels:
                raise TokengraftError(f"freeze attention_only: no attention projections were found in this {arch.model_type} "
                                      "model's blocks; use mode top_k_blocks or pattern")
            for rel in rels:
                selected.extend(base_layer(block.get_submodule(rel)).parameters(recurse=False))
        elif spec.mode == "bitfit":
            selected.extend(p for n, p in block.named_parameters()
                            if n.rsplit(".", 1)[-1] == "bias" and not _is_method_param(n))
        else:  # top_k_blocks
            selected.extend(p for n, p in block.named_parameters() if not _is_method_param(n))
    if not selected and spec.mode == "bitfit":
        raise TokengraftError(
            f"BitFit selects nothing: this {arch.model_type} model has no bias parameters in "
            f"{block_range_text(blocks)}; choose freeze mode attention_only or lora")
    if not selected:
        raise TokengraftError(f"freeze {spec.mode} selects nothing in {block_range_text(blocks)} of this {arch.model_type} model")
    return _dedupe(selected)


def _embedding_param_names(base: nn.Module, arch: Any) -> set[int]:
    """ids of the token embedding / head matrices, which freeze modes must never touch."""
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(base, getter, lambda: None)()
        if module is not None:
            ids.update(id(p) for p in module.parameters())
    return ids


def _select_pattern(spec: FreezeSpec, base: nn.Module, arch: Any) -> list[nn.Parameter]:
    regex = re.compile(spec.pattern or "")
    embedding_ids = _embedding_param_names(base, arch)
    selected: list[nn.Parameter] = []
    for name, p in base.named_parameters():
        plain = canonical_name(name)
        if _is_method_param(plain) or not regex.search(plain):
            continue
        if id(p) in embedding_ids:
            raise TokengraftError(
                f"freeze: pattern /{spec.pattern}/ matches the token embedding or head ({plain}); new-token rows "
                "are trained row-sparsely by the tokens section, never as a whole matrix; narrow the pattern")
        selected.append(p)
    if not selected:
        examples = [canonical_name(n) for n, _ in base.named_parameters()][:3]
        raise TokengraftError(f"freeze: pattern /{spec.pattern}/ matches no parameter; names look like {', '.join(examples)}")
    return _dedupe(selected)


def _dedupe(params: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
