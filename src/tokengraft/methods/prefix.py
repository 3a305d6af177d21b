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

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.lora import peft_task_type
from tokengraft.methods.spec import MethodSpec, require_positive


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
        if task == "SEQ_CLS":
            check_classifier_takes_prefix(model)
        config = PrefixTuningConfig(task_type=task, num_virtual_tokens=self.num_virtual_tokens)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return get_peft_model(model, config)


def takes_past_key_values(module: nn.Module) -> bool:
    """Whether ``module.forward`` names ``past_key_values`` (transformers >= 5.24 renames it ``cache``)."""
    return "past_key_values" in inspect.signature(module.forward).parameters


def check_classifier_takes_prefix(model: nn.Module) -> None:
    """PEFT hands a classifier's prefix over as ``past_key_values`` and only where a forward names that argument.

    transformers 5.24 renamed it to ``cache`` (the old name still works through ``**kwargs``, but PEFT
    looks at the signature), so PEFT <= 0.21 raises deep inside its forward. Say so before training.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if takes_past_key_values(model) or (backbone is not None and takes_past_key_values(backbone)):
        return
    import peft
    import transformers

    raise TokengraftError(
        f"prefix: PEFT {peft.__version__} cannot pass a prefix to {type(model).__name__} under transformers "
        f"{transformers.__version__} (its forward takes `cache`, not `past_key_values`); use lora or adapter "
        "for classification, or transformers<5.24")


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
