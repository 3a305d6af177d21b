"""Sequence classification from a causal LM's weights (reference 002's starting point).

`build_classifier` turns a loaded causal LM into ``AutoModelForSequenceClassification``
with the same backbone tensors and a fresh, seeded ``score`` head. The head is
always trained: `apply_methods` unfreezes it on any model that has one, so
``methods: []`` is the linear-probe ("head only") baseline and every method of the
registry composes with it. With LoRA or prefix, PEFT's sequence-classification
wrapper keeps the head trainable itself (``modules_to_save``); we count it there.

The classifier reads the hidden state of the last non-pad token, so the config
needs ``pad_token_id``; when missing we take the tokenizer's pad token, else EOS.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tokengraft.errors import TokengraftError

HEAD_NAMES = ("score", "classifier")


def head_module_name(model: nn.Module) -> str | None:
    """Attribute name of the classification head on a (plain) classifier model, else None."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return None
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    return None


def classifier_config(config: Any, num_labels: int, tokenizer: Any = None) -> Any:
    """A copy of a causal-LM config set up for ``num_labels`` classes with a pad token."""
    if num_labels < 1:
        raise TokengraftError(f"num_labels must be at least 1, got {num_labels}")
    config = copy.deepcopy(config)
    config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None:
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        pad = pad if pad is not None else getattr(config, "eos_token_id", None)
        if isinstance(pad, list):
            pad = pad[0] if pad else None
        if pad is None:
            raise TokengraftError("the model config has neither pad_token_id nor eos_token_id; the classifier cannot "
                                  "find the last token; give the tokenizer a pad token")
        config.pad_token_id = pad
    return config


def build_classifier(model: nn.Module, num_labels: int, tokenizer: Any = None, seed: int = 0) -> nn.Module:
    """A ``...ForSequenceClassification`` sharing nothing with ``model`` but holding copies of its backbone weights.

    Only the LM head is dropped and only the classification head is new; anything
    else missing or left over means the two classes disagree about the backbone,
    which is an error rather than a silently random layer.
    """
    from transformers import AutoModelForSequenceClassification

    config = classifier_config(model.config, num_labels, tokenizer)
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the head's init is random
        try:
            clf = AutoModelForSequenceClassification.from_config(config, dtype=param.dtype)
        except ValueError as exc:
            raise TokengraftError(f"{config.model_type} has no sequence-classification class in transformers "
                                  f"({str(exc).splitlines()[0]})") from None
    head = head_module_name(clf)
    if head is None:
        raise TokengraftError(f"{type(clf).__name__} has no score/classifier head that tokengraft recognises")
    state = model.state_dict()
    result = clf.load_state_dict(state, strict=False)
    lm_head = {n for n in state if n.split(".")[0] in ("lm_head", "embed_out")}
    missing = [n for n in result.missing_keys if n.split(".")[0] != head]
    unexpected = [n for n in result.unexpected_keys if n not in lm_head]
    if missing or unexpected:
        raise TokengraftError(f"cannot map {type(model).__name__} weights onto {type(clf).__name__}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    clf.to(param.device)
    clf.eval()
    return clf


def config_classifier(config: Any, num_labels: int = 2) -> nn.Module | None:
    """The classifier built on the meta device (for parameter counts), or None if the family has none."""
    from transformers import AutoModelForSequenceClassification

    config = classifier_config(config, num_labels)
    with torch.device("meta"):
        try:
            return AutoModelForSequenceClassification.from_config(config)
        except ValueError:
            return None
