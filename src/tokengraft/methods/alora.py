"""Activated LoRA (aLoRA; Greenewald et al. 2025, PEFT >= 0.18): LoRA that acts only from an invocation onward.

Every position before the invocation sequence, and every prompt that lacks it, runs
the base weights exactly: a prompt without a grafted token (say no style token) is the
base model by construction, bit for bit, not by training. Positions from the start of
the LAST invocation onward (the invocation itself included) get the low-rank update.

What PEFT provides and what tokengraft adds:

- PEFT's ``LoraConfig(alora_invocation_tokens=[...])`` builds the LoRA layers with its
  aLoRA variant, which applies the update only to the last ``alora_offsets[i]``
  positions of row ``i`` (``None``: nowhere). The weights are ordinary ``lora_A`` /
  ``lora_B`` matrices under PEFT's names.
- PEFT looks for ONE invocation sequence, and only inside ``PeftModel.forward`` /
  ``generate``. The style task needs one adapter that either style token invokes, and
  tokengraft's training loss, generation and any direct call must agree. So the
  offsets are computed here, for any of several invocation sequences, by a pre-hook
  on the transformers model itself (every path runs through it), and handed to the
  LoRA layers by pre-hooks; PEFT's own copy of the invocation is cleared after the
  layers are built so its per-call search cannot overwrite them. During cached
  decoding a row stays active once its invocation was seen (PEFT does the same).
- ``invocation`` lists token strings, each one invocation on its own (a string that
  tokenizes to several ids is a sequence); an empty list means every token the recipe
  adds (``tokens.add``). They are resolved to ids by `bind` with the run's tokenizer.

PEFT's limits hold: causal language models only; the update cannot be merged into the
base weights (``merge_blocker``: no ``export --merged`` / ``--gguf``); its docs advise a
larger rank than plain LoRA (``r`` defaults to 32 here), since only part of each sequence
adapts. PEFT refuses beam search with aLoRA; here the activation follows each row through
the cache and a prompt's beams share it, so nothing refuses it, but it is untested. The run directory (``tokengraft.load``) is the
form that runs it. Serving elsewhere (docs/tasks.md): vLLM 0.32 refuses aLoRA adapters;
llama.cpp's server runs one (one invocation sequence per adapter, one aLoRA per request),
so an adapter with several invocations would be converted once per invocation (untested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.lora import LoraSpec, peft_task_type, wrap_with_peft
from tokengraft.methods.spec import fail, unwrap_peft

ACTIVATION_ATTR = "tokengraft_alora"  # the `Activation` on the transformers model (inspection, tests)


def invocation_starts(input_ids: torch.Tensor, sequences: list[list[int]]) -> torch.Tensor:
    """``[B]``: where the last occurrence of any of ``sequences`` starts in each row of ``input_ids`` ``[B, T]``; -1: none."""
    batch, length = input_ids.shape
    device = input_ids.device
    positions = torch.arange(length, device=device)
    best = torch.full((batch,), -1, dtype=torch.long, device=device)
    singles = [s[0] for s in sequences if len(s) == 1]
    if singles and length:
        hit = torch.isin(input_ids, torch.tensor(singles, dtype=input_ids.dtype, device=device))  # [B, T]
        best = torch.maximum(best, torch.where(hit, positions, -1).max(dim=1).values)
    for seq in (s for s in sequences if 1 < len(s) <= length):
        windows = input_ids.unfold(1, len(seq), 1)  # [B, T - L + 1, L]
        hit = (windows == torch.tensor(seq, dtype=input_ids.dtype, device=device)).all(dim=-1)
        best = torch.maximum(best, torch.where(hit, positions[: hit.shape[1]], -1).max(dim=1).values)
    return best


class Activation:
    """Which positions of the current batch the adapter acts on, as PEFT's ``alora_offsets``.

    ``offsets[i]`` counts back from the end of row ``i``: the adapter acts on its last
    ``offsets[i]`` positions, or nowhere when None. A forward that continues a cache
    (decoding) keeps rows active whose invocation came earlier.
    """

    def __init__(self, sequences: list[list[int]]) -> None:
        self.sequences = [list(s) for s in sequences]
        self.offsets: list[int | None] | None = None
        self.active: list[bool] | None = None

    def update(self, input_ids: torch.Tensor | None, continuing: bool) -> None:
        if input_ids is None:  # inputs_embeds only: no ids to search, so the base model (PEFT does the same)
            self.offsets = self.active = None
            return
        starts = invocation_starts(input_ids, self.sequences).tolist()
        length = int(input_ids.shape[1])
        if continuing and self.active is not None:
            if len(self.active) != len(starts):
                raise TokengraftError("alora: a forward continued a cache built for another batch; start decoding "
                                      "from the prompt (generate) so the invocation can be found")
            before = self.active
        else:  # a fresh sequence (or a cache this model never saw: its earlier part counts as not invoked)
            before = [False] * len(starts)
        self.offsets = [length - s if s >= 0 else (length if was else None) for s, was in zip(starts, before)]
        self.active = [s >= 0 or was for s, was in zip(starts, before)]


def _cache_length(cache: Any) -> int:
    getter = getattr(cache, "get_seq_length", None)
    if callable(getter):
        return int(getter())
    return 1 if cache else 0  # a legacy tuple cache: any content means decoding continues


def _before_model(activation: Activation):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.24 renamed past_key_values
        activation.update(input_ids, continuing=cache is not None and _cache_length(cache) > 0)
    return hook


def _into_layer(activation: Activation):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["alora_offsets"] = activation.offsets
        return args, kwargs
    return hook


@dataclass
class AloraSpec(LoraSpec):
    """LoRA that acts only from an invocation token onward; prompts without it run the base model exactly."""

    type: ClassVar[str] = "alora"
    r: int = 32                       # PEFT's docs: aLoRA often needs a larger rank than LoRA
    alpha: float = 32.0
    invocation: list[str] = field(default_factory=list)  # each string invokes on its own; [] = every token in tokens.add

    def validate(self) -> None:
        super().validate()
        for i, text in enumerate(self.invocation):
            if not text:
                raise fail(self.type, "invocation", f"entry {i} is empty")

    def bind(self, tokenizer: Any, tokens: list[str]) -> AloraSpec:
        strings = list(self.invocation) or list(tokens)
        if not strings:
            raise fail(self.type, "invocation", "is empty and the recipe adds no token to invoke the adapter; "
                                                "list the invoking tokens (e.g. invocation: ['<STYLE_TERSE>'])")
        sequences = []
        for text in strings:
            ids = list(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise fail(self.type, "invocation", f"{text!r} tokenizes to nothing")
            sequences.append(ids)
        bound = dataclasses.replace(self)
        bound.invocation_ids = sequences  # type: ignore[attr-defined]  # not a recipe field: never saved
        return bound

    def where(self, arch: Any) -> str:
        invoked = ", ".join(self.invocation) if self.invocation else "any token in tokens.add"
        return f"{super().where(arch)}, active from {invoked} onward"

    def check(self, model: nn.Module, arch: Any) -> None:
        super().check(model, arch)
        _check_causal_lm(model)

    def merge_blocker(self) -> str | None:
        return ("alora: an activated LoRA acts only from its invocation tokens onward, so its update cannot be "
                "folded into the base weights (PEFT cannot merge aLoRA either)")

    def apply(self, model: nn.Module, arch: Any) -> nn.Module:
        _check_causal_lm(model)
        sequences = getattr(self, "invocation_ids", None)
        on_meta = next(model.parameters()).device.type == "meta"
        if sequences is None and not on_meta:  # planning on the meta device counts parameters only
            raise TokengraftError("alora: the invocation tokens were not resolved against a tokenizer; build the "
                                  "model with tokengraft.graft (or apply spec.bind(tokenizer, tokens))")
        # PEFT builds its aLoRA variant only for a non-empty invocation; any placeholder does on meta.
        config = self.peft_config(model, arch, alora_invocation_tokens=list(sequences[0]) if sequences else [0])
        wrapped = wrap_with_peft(model, config, self.seed)
        # PEFT would search for its one sequence in every PeftModel call and overwrite the offsets below.
        wrapped.peft_config["default"].alora_invocation_tokens = None
        if sequences is not None:
            install_activation(wrapped, sequences)
        return wrapped


def install_activation(model: nn.Module, sequences: list[list[int]]) -> Activation:
    """Hook the aLoRA layers of a PEFT model so they act from any of ``sequences`` onward (see the module doc)."""
    from peft.tuners.lora import LoraLayer

    base = unwrap_peft(model)
    if hasattr(base, ACTIVATION_ATTR):
        raise TokengraftError("alora: this model already has activation hooks; apply methods to a fresh base model")
    activation = Activation(sequences)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and getattr(m, "lora_variant", None)]
    if not layers:
        raise TokengraftError("alora: PEFT built no aLoRA layer (PEFT >= 0.18 is needed for activated LoRA)")
    base.register_forward_pre_hook(_before_model(activation), with_kwargs=True)
    for layer in layers:
        layer.register_forward_pre_hook(_into_layer(activation), with_kwargs=True)
    setattr(base, ACTIVATION_ATTR, activation)
    return activation


def _check_causal_lm(model: nn.Module) -> None:
    if peft_task_type(model) != "CAUSAL_LM":
        raise TokengraftError(f"alora: activated LoRA works on causal language models only (PEFT's aLoRA); "
                              f"{type(model).__name__} is not one: use lora")
