"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) injected with forward hooks.

An adapter maps a sub-layer's output ``h`` to ``h + up(act(down(h)))``: a small
residual MLP through a ``bottleneck``-wide space. ``up`` starts at zero (weight and
bias), so at step 0 the model computes exactly what the base model computes; ``down``
is random (seeded) so gradients reach ``up`` from the first step.

Placement (reference 002's injection points):
- ``post_attn``: on the output of the attention module, before the residual add;
- ``post_ffn``: on the output of the feed-forward module, before the residual add;
- ``both``. Naming used in the literature: ``houlsby`` = both, ``pfeiffer`` = post_ffn only.

Why hooks: reference 002 injects by assigning a new ``forward`` to the block class,
which changes every instance of that class in the process and breaks whenever the
signature changes. A forward hook on the attention / MLP module that ArchInfo found
touches only this model and only the hidden-state output (first element when the
module returns a tuple, as attention modules do). The adapters live in an
``nn.ModuleDict`` attached to the model root as ``tokengraft_adapters`` (keys like
``"5_post_ffn"``) so they are ordinary parameters: in ``parameters()``, the state dict,
moved by ``.to()``. They cannot be folded into the base weights (the activation is
non-linear), so a merged export refuses; the run-directory form loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import (MethodSpec, block_range_text, fail, module_device_dtype, require_positive, resolve_top_blocks, unwrap_peft)

CONTAINER = "tokengraft_adapters"
PLACEMENTS = {"post_attn": ("post_attn",), "post_ffn": ("post_ffn",), "both": ("post_attn", "post_ffn"),
              "houlsby": ("post_attn", "post_ffn"), "pfeiffer": ("post_ffn",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
DEFAULT_BOTTLENECK = 64  # reference 002's size; ~2 x 64 x hidden parameters per adapter


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with ``up`` zero-initialised: the identity until trained."""

    def __init__(self, hidden: int, bottleneck: int, activation: str, dropout: float,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden, device=device, dtype=dtype)

    def reset(self, generator: torch.Generator) -> None:
        """Seeded init: down ~ U(+-1/sqrt(hidden)) (nn.Linear's scale), up = 0, biases = 0."""
        if self.down.weight.device.type == "meta":
            return
        bound = 1.0 / math.sqrt(self.down.in_features)
        with torch.no_grad():
            w = torch.empty(self.down.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            self.down.weight.copy_(w)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (batch, seq, hidden) -> same
        return h + self.up(self.dropout(self.act(self.down(h))))


def _hook(adapter: BottleneckAdapter):
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return adapter(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (adapter(output[0]),) + output[1:]
        raise TokengraftError(f"adapter: {type(module).__name__} returned {type(output).__name__}, not a hidden-state "
                              "tensor or tuple; adapters cannot attach to this module")
    return hook


@dataclass
class AdapterSpec(MethodSpec):
    """Bottleneck adapters after attention and/or the feed-forward block."""

    type: ClassVar[str] = "adapter"
    placement: str = "post_ffn"
    bottleneck: int | None = None        # width of the bottleneck; default 64
    reduction_factor: int | None = None  # alternative: bottleneck = hidden // reduction_factor
    activation: str = "relu"
    dropout: float = 0.0
    top_k_blocks: int | None = None      # None = every block
    seed: int = 0

    def validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise fail(self.type, "placement", f"must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.bottleneck is not None and self.reduction_factor is not None:
            raise fail(self.type, "bottleneck", "and 'reduction_factor' are alternatives; give one")
        require_positive(self.type, "bottleneck", self.bottleneck)
        require_positive(self.type, "reduction_factor", self.reduction_factor)
        require_positive(self.type, "top_k_blocks", self.top_k_blocks)
        if self.activation not in ACTIVATIONS:
            raise fail(self.type, "activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise fail(self.type, "dropout", f"must be in [0, 1), got {self.dropout}")

    def width(self, hidden: int) -> int:
        if self.reduction_factor is not None:
            if hidden // self.reduction_factor < 1:
                raise fail(self.type, "reduction_factor", f"{self.reduction_factor} leaves no bottleneck for hidden size {hidden}")
            return hidden // self.reduction_factor
        return self.bottleneck or DEFAULT_BOTTLENECK

    def sites(self) -> tuple[str, ...]:
        return PLACEMENTS[self.placement]

    def where(self, arch: Any) -> str:
        blocks = block_range_text(resolve_top_blocks(self.type, "top_k_blocks", arch, self.top_k_blocks))
        text = {"post_attn": "after attention", "post_ffn": "after FFN"}
        return f"{' + '.join(text[s] for s in self.sites())} (bottleneck {self.width(arch.hidden_size)}), {blocks}"

    def merge_blocker(self) -> str | None:
        return "adapter: bottleneck adapters are extra non-linear modules and cannot be folded into the base weights"

    def apply(self, model: nn.Module, arch: Any) -> nn.Module:
        """Attach adapters and hooks; the handles are kept on the container for `remove_adapters`."""
        base = unwrap_peft(model)
        blocks = resolve_top_blocks(self.type, "top_k_blocks", arch, self.top_k_blocks)
        width = self.width(arch.hidden_size)
        container = getattr(base, CONTAINER, None)
        if container is None:
            container = AdapterContainer()
            base.add_module(CONTAINER, container)
        generator = torch.Generator().manual_seed(self.seed)
        for i in blocks:
            block = base.get_submodule(arch.block_path(i))
            device, dtype = module_device_dtype(block)
            for site in self.sites():
                key = f"{i}_{site}"
                if key in container:
                    raise TokengraftError(f"adapter: block {i} already has a {site} adapter; two adapter methods overlap")
                target = block.get_submodule(_site_module(arch, site))
                adapter = BottleneckAdapter(arch.hidden_size, width, self.activation, self.dropout, device, dtype)
                adapter.reset(generator)
                container[key] = adapter
                container.handles.append(target.register_forward_hook(_hook(adapter)))
        return model


class AdapterContainer(nn.ModuleDict):
    """The adapters plus their hook handles (handles are not state: they are rebuilt on load)."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: list[RemovableHandle] = []


def _site_module(arch: Any, site: str) -> str:
    """Block-relative path of the module whose output the adapter transforms.

    The attention / feed-forward module when ArchInfo found one; else the last
    projection of that sub-layer (OPT keeps fc1/fc2 directly on the block, so the
    FFN output is fc2's output).
    """
    if site == "post_attn":
        path = arch.attention.module or arch.attention.o
        what = "attention module or output projection"
    else:
        path = arch.mlp.module or arch.mlp.down
        what = "feed-forward module or down projection"
    if not path:
        raise TokengraftError(f"adapter: no {what} was found in this {arch.model_type} model's blocks; "
                              f"{site} adapters cannot attach (try lora)")
    return path


def remove_adapters(model: nn.Module) -> None:
    """Detach the hooks and drop the container: the model computes the base function again."""
    base = unwrap_peft(model)
    container = getattr(base, CONTAINER, None)
    if container is None:
        return
    for handle in container.handles:
        handle.remove()
    delattr(base, CONTAINER)
