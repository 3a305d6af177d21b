"""Names that the recipe, the core and the tasks must spell the same way: one definition each.

Torch-free and import-free on purpose: the recipe checks, the CLI's ``--help`` and the
core all read these, so none of them pays for torch to learn a strategy name. Each
closed set is written once as a ``Literal`` (what the recipe dataclasses annotate, so
the loader checks it) and once derived as a tuple (what error messages list).
"""

from __future__ import annotations

import typing
from typing import Literal

BUILTIN_ALIAS = "smollm2-135m-instruct"
"""The default built-in model's MODEL spec: the default model everywhere (models.py fetches it)."""

BUILTIN_ALIASES: tuple[str, ...] = (BUILTIN_ALIAS, "gemma3-270m")
"""Every built-in MODEL alias (builtin.BUILTIN_MODELS says where each one comes from); the others are opt-in."""

InitStrategy = Literal["mean", "hewitt", "text", "subwords", "spherical", "random"]
INIT_STRATEGIES: tuple[str, ...] = typing.get_args(InitStrategy)
"""How a new token's row starts (core/vocab.py implements each one)."""

Side = Literal["both", "input", "output"]
SIDES: tuple[str, ...] = typing.get_args(Side)
"""Which rows of a token train: the input embedding (READ), the output head (WRITE), or both."""

Backend = Literal["rows", "peft", "full"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
"""Where trainable token rows live: row-sparse overlay, PEFT trainable tokens, or whole matrices."""

IGNORE_INDEX = -100
"""Label of a position that is not trained on (the prompt); the value transformers' losses skip."""

VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` accepts (vllm/config/lora.py, 0.32); an adapter's r must not exceed it.
The LoRA-adapter export prints it and serve-check passes it."""


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


Engine = Literal["ddp", "deepspeed", "fsdp"]
ENGINES: tuple[str, ...] = typing.get_args(Engine)
"""How several processes share a training run: replicas (DDP), DeepSpeed ZeRO shards, or FSDP2 shards."""

Answers = Literal["tuned", "base"]
ANSWERS: tuple[str, ...] = typing.get_args(Answers)
"""``eval.answers``: who writes a <PASS> run's answers: the tuned model, or the base model it was trained from."""
