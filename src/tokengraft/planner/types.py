"""The planner's vocabulary: measured facts, the workload, and the plan they add up to.

`measure` produces `Facts` and a `Workload` (the expensive part: a meta-device
model and an activation trace); `assemble` turns them into a `Plan` for a choice
of knobs (arithmetic only). Both import these types from here, so neither has
to import the other for them. ``gib`` / ``parse_size`` are the units the table
prints and ``--budget`` reads.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from tokengraft.errors import TokengraftError

GiB = 1024**3


@dataclass
class LineItem:
    key: str  # stable id for scripts ("weights", "token_rows_grad", ...)
    label: str
    bytes: int
    detail: str = ""


@dataclass
class Plan:
    """Per-device memory at the training peak, line by line."""

    items: list[LineItem]  # what is resident at the peak phase (sums to `total`)
    phases: dict[str, int]  # total at each phase of a step
    peak_phase: str
    total: int
    budget: int | None
    device: str
    assumptions: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    all_items: dict[str, int] = field(default_factory=dict)  # every component, whatever the phase
    loaded_weights: int = 0  # bytes of the base model as loaded (before grafting)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.total <= self.budget

    @property
    def verdict(self) -> str:
        if self.budget is None:
            return "no budget given"
        margin = self.budget - self.total
        word = "fits" if margin >= 0 else "does NOT fit"
        return f"{word}: {gib(self.total)} of {gib(self.budget)} ({'margin' if margin >= 0 else 'over by'} {gib(abs(margin))})"

    @property
    def growth_over_load(self) -> int:
        """Peak minus the base weights as loaded: what training adds to a loaded model."""
        return self.total - self.loaded_weights

    def item(self, key: str) -> int:
        return self.all_items.get(key, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "total_bytes": self.total, "budget_bytes": self.budget, "fits": self.fits,
            "verdict": self.verdict, "peak_phase": self.peak_phase, "phases_bytes": self.phases,
            "items": [dataclasses.asdict(i) for i in self.items], "all_items_bytes": self.all_items,
            "loaded_weights_bytes": self.loaded_weights, "growth_over_load_bytes": self.growth_over_load,
            "assumptions": self.assumptions, "notes": self.notes, "advice": self.advice,
        }


def gib(n: float) -> str:
    """Human size in binary units (what nvidia-smi and PyTorch's OOM messages print)."""
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size * 0.95 or unit == "KiB":
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"  # pragma: no cover


def parse_size(text: str) -> int:
    """``15GB`` / ``15GiB`` / ``800MB`` / ``1.5T`` -> bytes. GB means GiB here, as GPUs are sold and PyTorch reports."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise TokengraftError(f"--budget {text!r} is not a size; write e.g. 15GB, 15GiB or 800MB")
    scale = {"": GiB, "k": 1024, "m": 1024**2, "g": GiB, "t": 1024**4}[match.group(2).lower()]
    if match.group(2) == "" and match.group(3):
        scale = 1  # plain bytes: "1000B"
    return int(float(match.group(1)) * scale)


@dataclass
class ActivationTrace:
    """Bytes autograd keeps after the forward pass, at one (batch, seq_len)."""

    per_block: list[int]
    outside: int  # final norm, rotary tables and other tensors saved outside the blocks
    by_role: dict[str, int]  # summed over blocks: attention, mlp, norms, methods, other
    kernel: str  # how attention was accounted: "fused", "fused+mask", "eager", "traced-math"
    batch: int
    seq_len: int
    # Inputs of the `kept_inputs` modules (bitsandbytes 8-bit linears) that nothing else keeps, per block:
    # LLM.int8's matmul holds its input for backward even when its weight is frozen (added for 8-bit plans).
    kept_inputs_per_block: list[int] = field(default_factory=list)


@dataclass
class Facts:
    """Everything measured from the meta model; `assemble` combines it with the knobs."""

    model_type: str
    hidden: int
    num_blocks: int
    tied: bool
    base_rows: int  # rows of the embedding matrix before grafting
    head_rows: int | None  # rows of the LM head (None: no head)
    vocab_after: int  # rows after adding tokens (for backends that resize; pad_to_multiple_of applied)
    vocab_rows: int  # logits width with the rows backend (no resize, no rounding)
    new_tokens: int
    existing_trained: int
    weight_bytes: int  # base model as loaded (quantisation applied)
    weight_detail: str
    weights_by_quant: dict[str, tuple[int, str]]  # "none" / "4bit" / "8bit" -> (bytes, detail), for the advice
    matrix_bytes_per_row: int  # one embedding row in the load dtype
    load_dtype_bytes: int
    weights_mapped: bool  # CPU load in the stored dtype: tensors are views of the memory-mapped safetensors file
    compute_dtype_bytes: int
    method_params: list[tuple[int, int, tuple[int, ...]]]  # (numel, bytes per element, shape) of new method params
    unfrozen_params: list[tuple[int, int, tuple[int, ...]]]  # base params the methods made trainable
    method_names: list[str]
    trace: ActivationTrace
    block_input_bytes: int  # one block's input hidden state at (batch, seq_len): what checkpointing keeps
    notes: list[str] = field(default_factory=list)
    widest_linear: int = 0  # weights of the largest quantizable linear: its de-quantised copy is a step temporary
    dequant_bytes: int = 4  # element size of that copy (4bit: the compute dtype; 8bit: the activations' dtype)


@dataclass
class Workload:
    """Shapes of one micro-batch: what the activations and logits scale with."""

    batch: int
    seq_len: int  # longest sequence of the largest batch (batches are padded to their longest)
    supervised: int  # supervised positions in that batch (labels != -100)
    source: str  # how these were found
    padded: bool = True  # batches carry a padding mask (examples of different lengths)
