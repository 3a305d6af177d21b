"""Apply methods to a model, or re-apply them and load their trained weights from a run directory.

`apply_methods` first freezes every base parameter, so what is trainable afterwards
is exactly what the methods chose and a method that selects nothing is detected
(and refused) instead of training nothing. The PEFT-wrapping method runs first:
PEFT marks everything except its own weights as frozen when it wraps, which would
undo the other methods if they ran before it. Token rows are not a method: core/rows.py
attaches them after `apply_methods` and re-enables its own parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.adapter import CONTAINER
from tokengraft.methods.classification import head_module_name
from tokengraft.methods.registry import build_specs
from tokengraft.methods.spec import MethodSpec, unwrap_peft
from tokengraft.methods.state import INDEX_FILE, WEIGHTS_FILE, MethodRecord, MethodsState, read_index


def _trainable(model: nn.Module) -> dict[int, tuple[str, nn.Parameter]]:
    return {id(p): (n, p) for n, p in model.named_parameters() if p.requires_grad}


def apply_methods(model: nn.Module, arch: Any, specs: list[dict[str, Any] | MethodSpec]) -> tuple[nn.Module, MethodsState]:
    """Freeze the base, apply each method, and return ``(model, state)``.

    The returned model is a PEFT wrapper when lora/prefix is used, else ``model``
    itself. ``state.records`` lists, per method, the parameters it made trainable
    (names in the returned model) and their count. A classifier's head (see
    classification.py) is always made trainable and recorded as ``head``.
    """
    specs = build_specs(list(specs))
    # A PeftModel or our adapter container means methods ran already. (A plain model may carry
    # ``peft_config`` from PEFT's trainable-tokens injection, which graft.py does before us: fine.)
    if unwrap_peft(model) is not model or hasattr(unwrap_peft(model), CONTAINER):
        raise TokengraftError("methods were already applied to this model; apply them once, to a fresh base model")
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    ordered = [s for s in specs if s.wraps_model] + [s for s in specs if not s.wraps_model]
    records: list[MethodRecord] = []
    for spec in ordered:
        before = _trainable(model)
        model = spec.apply(model, arch)
        after = _trainable(model)
        new = {k: v for k, v in after.items() if k not in before}
        if not new:
            raise TokengraftError(f"{spec.type} selects nothing trainable in this {arch.model_type} model "
                                  f"({spec.where(arch) or spec.to_dict()}); change its settings")
        records.append(MethodRecord.from_params(spec, spec.where(arch), new.values()))
    head = head_module_name(unwrap_peft(model))
    if head is not None:
        before = _trainable(model)
        for n, p in unwrap_peft(model).get_submodule(head).named_parameters():
            if "original_module" not in n:  # PEFT's frozen original next to its trainable copy
                p.requires_grad_(True)
        new = {k: v for k, v in _trainable(model).items() if k not in before}
        if new:
            records.append(MethodRecord.from_params(None, f"classification head '{head}'", new.values()))
        for record in records:  # PEFT's classifier wrapper trains the head as part of lora/prefix
            if any(f"{head}.modules_to_save." in n for n in record.names):
                record.where += f" + classification head '{head}'"
    # New modules (LoRA dropout, adapters) are born in train mode; match the model's mode so an
    # eval-mode model stays deterministic after methods are applied.
    model.train(was_training)
    # Records follow the order the user wrote, with the head last.
    position = {id(s): i for i, s in enumerate(specs)}
    records.sort(key=lambda r: position[id(r.spec)] if r.spec is not None else len(specs))
    return model, MethodsState(model=model, specs=specs, records=records)


def load_methods(model: nn.Module, arch: Any, specs: list[Any] | None, run_dir: str | Path) -> tuple[nn.Module, MethodsState]:
    """Apply ``specs`` (default: those saved in ``run_dir``) to a fresh base model and load their weights."""
    index = read_index(run_dir)
    saved = build_specs(index["specs"])
    specs = saved if specs is None else build_specs(list(specs))
    if [s.to_dict() for s in specs] != [s.to_dict() for s in saved]:
        raise TokengraftError(f"the methods in {run_dir} ({[s.to_dict() for s in saved]}) differ from the ones "
                              f"requested ({[s.to_dict() for s in specs]}); load with the saved recipe")
    weights = Path(run_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise TokengraftError(f"{run_dir} has {INDEX_FILE} but no {WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TokengraftError(f"{weights} is damaged ({exc}); re-run training or restore it") from None
    return reapply_methods(model, arch, specs, tensors, source=str(weights))


def reapply_methods(model: nn.Module, arch: Any, specs: list[Any], tensors: dict[str, torch.Tensor], *,
                    source: str = "the saved method weights") -> tuple[nn.Module, MethodsState]:
    """Apply ``specs`` to a fresh base and copy trained ``tensors`` in (names as `MethodsState.tensors` gives them).

    The same specs on the same structure give the same names, whatever the base layers are: a
    merged export re-applies LoRA trained on bitsandbytes layers to their de-quantised copies.
    """
    model, state = apply_methods(model, arch, specs)
    expected = {n: p for r in state.records for n, p in zip(r.names, r.params)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise TokengraftError(f"{source} does not match the methods applied to this model "
                              f"(missing {missing[:2]}, unexpected {extra[:2]}); was it trained on another base model?")
    with torch.no_grad():
        for name, p in expected.items():
            t = tensors[name]
            if t.shape != p.shape:
                raise TokengraftError(f"{source}: {name} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(t.to(device=p.device, dtype=p.dtype))
    return model, state
