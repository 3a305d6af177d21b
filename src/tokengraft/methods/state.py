"""What the methods made trainable, and how to save, load and merge it.

Files in a run directory:
- ``methods.json``: the specs and, per method, the parameter names and counts;
- ``methods.safetensors``: those parameters' tensors, keyed by their names in the
  model that `apply_methods` returned (deterministic for the same base + specs).

Loading (apply.py's `load_methods`) re-applies the same specs to a fresh base model
and copies the tensors in, refusing any missing, extra or mis-shaped tensor: a partial
load would silently be a different model. Saving every method-trainable tensor (LoRA A/B, adapters, prefix,
unfrozen base weights) through one path keeps the format independent of PEFT's own
file layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import MethodSpec, unwrap_peft

WEIGHTS_FILE = "methods.safetensors"
INDEX_FILE = "methods.json"


@dataclass
class MethodRecord:
    """One method's trainable parameters (``spec`` None = a classifier's head)."""

    spec: MethodSpec | None
    where: str
    names: list[str]
    count: int
    params: list[nn.Parameter] = field(repr=False, default_factory=list)

    @property
    def label(self) -> str:
        return self.spec.type if self.spec is not None else "head"

    @classmethod
    def from_params(cls, spec: MethodSpec | None, where: str, items: Iterable[tuple[str, nn.Parameter]]) -> MethodRecord:
        items = sorted(items, key=lambda t: t[0])
        return cls(spec=spec, where=where, names=[n for n, _ in items], count=sum(p.numel() for _, p in items),
                   params=[p for _, p in items])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.label, "spec": self.spec.to_dict() if self.spec else None, "where": self.where,
                "count": self.count, "names": self.names}


@dataclass
class MethodsState:
    """Result of `apply_methods`: the model it returned, the specs, and per-method records."""

    model: nn.Module
    specs: list[MethodSpec]
    records: list[MethodRecord]

    @property
    def num_trainable(self) -> int:
        return sum(r.count for r in self.records)

    @property
    def merge_blockers(self) -> list[str]:
        return [b for s in self.specs if (b := s.merge_blocker())]

    @property
    def mergeable(self) -> bool:
        return not self.merge_blockers

    @property
    def unmergeable_reason(self) -> str | None:
        """Why a merged export is impossible (export.py words the advice), or None."""
        return "; ".join(self.merge_blockers) or None

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for record in self.records:
            for name, p in zip(record.names, record.params):
                out[name] = p.detach().to("cpu").contiguous()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "specs": [s.to_dict() for s in self.specs], "num_trainable": self.num_trainable,
                "mergeable": self.mergeable, "unmergeable_reason": self.unmergeable_reason,
                "records": [r.to_dict() for r in self.records]}

    def save(self, run_dir: str | Path) -> Path:
        """Write ``methods.safetensors`` + ``methods.json`` into ``run_dir``; returns the weights path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        weights = run_dir / WEIGHTS_FILE
        save_file(self.tensors(), str(weights), metadata={"format": "tokengraft-methods-1"})
        (run_dir / INDEX_FILE).write_text(json.dumps(self.to_dict(), indent=2))
        return weights

    def merge(self, model: nn.Module | None = None) -> nn.Module:
        """The plain transformers model with every method folded into its weights.

        LoRA deltas are added with PEFT's ``merge_and_unload``; freeze-trained weights
        and a classifier head already live in the model. Adapters and prefixes cannot
        be folded: the error says so and points to the run-directory form.
        """
        model = self.model if model is None else model
        if not self.mergeable:
            raise TokengraftError(f"{self.unmergeable_reason}; export --merged is unavailable, use the run directory "
                                  "form (tokengraft.load(run_dir))")
        if hasattr(model, "merge_and_unload"):
            merged = model.merge_and_unload()
        else:
            merged = unwrap_peft(model)
        for p in merged.parameters():
            p.requires_grad_(False)
        return merged


def merge(model: nn.Module, state: MethodsState) -> nn.Module:
    """Function form of `MethodsState.merge`."""
    return state.merge(model)


def read_index(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / INDEX_FILE
    if not path.is_file():
        raise TokengraftError(f"{run_dir} has no {INDEX_FILE}; it was not saved with method weights")
    try:
        index = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise TokengraftError(f"{path} is damaged ({exc}); re-run training or restore it") from None
    if not isinstance(index, dict) or not isinstance(index.get("specs"), list):
        raise TokengraftError(f"{path} is damaged: it has no list of method specs; re-run training or restore it")
    return index
