"""Prefix tuning through PEFT: learned key/value vectors prepended in every layer.

PEFT 0.21 passes the prefix as a transformers ``DynamicCache`` and reads the number
of KV heads from ``config.num_key_value_heads``, so GQA models (Llama, Qwen, Mistral,
Gemma) work with transformers 5. Configs that describe their KV heads differently
(Falcon's ``multi_query`` / ``num_kv_heads``) get a prefix with one K/V per *query*
head, which the attention then cannot concatenate: we refuse those up front.

Prompt tuning (virtual input embeddings) is not offered: PEFT captures the input
embedding module when it wraps the model, so it would bypass the row-sparse
embedding that rows.py attaches afterwards and the new tokens would not train.
The prefix is not a weight delta, so a merged export is impossible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import TokengraftError
from .lora import peft_task_type
from .spec import MethodSpec, require_positive


@dataclass
class PrefixSpec(MethodSpec):
    """``num_virtual_tokens`` learned K/V positions in every layer."""

    type: ClassVar[str] = "prefix"
    wraps_model: ClassVar[bool] = True
    num_virtual_tokens: int = 20
    seed: int = 0

    def validate(self) -> None:
        require_positive(self.type, "num_virtual_tokens", self.num_virtual_tokens, allow_none=False)

    def where(self, arch: Any) -> str:
        return f"{self.num_virtual_tokens} virtual K/V positions in all {arch.num_blocks} blocks"

    def merge_blocker(self) -> str | None:
        return "prefix: a learned prefix is extra attention context, not a weight delta to fold into the weights"

    def apply(self, model: nn.Module, arch: Any) -> nn.Module:
        from peft import PrefixTuningConfig, get_peft_model

        check_supported(model, arch)
        task = peft_task_type(model)
        if task is None:
            raise TokengraftError(f"prefix: {type(model).__name__} is neither a causal LM nor a sequence classifier; "
                                  "PEFT's prefix tuning needs one of those")
        config = PrefixTuningConfig(task_type=task, num_virtual_tokens=self.num_virtual_tokens)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return get_peft_model(model, config)


def check_supported(model: nn.Module, arch: Any) -> None:
    """Refuse models whose KV-head count PEFT cannot see (it would fail deep inside attention)."""
    config = model.config
    heads = arch.attention.num_heads
    kv = arch.attention.num_kv_heads
    if kv is not None and heads is not None and kv != heads and getattr(config, "num_key_value_heads", None) != kv:
        raise TokengraftError(
            f"prefix: this {arch.model_type} model has {kv} KV head(s) for {heads} query heads but its config does not "
            "say so as num_key_value_heads, so PEFT would build a prefix of the wrong width; use lora or adapter")
    if getattr(config, "is_encoder_decoder", False):
        raise TokengraftError("prefix: encoder-decoder models are not supported; use lora")
