"""The memory planner: what a recipe needs per device, before any weight is loaded.

Reference 004 lost a day to out-of-memory errors that a budget table would have
predicted: a 1.87 GiB gradient for the *whole* embedding matrix when only the new
rows trained. ``plan(recipe)`` builds that table from the config alone, in two steps
that live in two modules:

- ``measure``: what needs the model. Parameters are counted on a meta-device model
  with the recipe's methods applied by the real registry code; activations are
  traced (every tensor autograd keeps for backward, counted once, per block and per
  role). The result is `Facts` and a `Workload`.
- ``assemble``: arithmetic on those facts for one choice of the cheap knobs (batch
  size, backend, checkpointing, optimiser, ...): logits, gradients, optimiser state
  and step temporaries, PEFT's merged matrix copy, quantised weights with their
  constants, LLM.int8's kept inputs and the de-quantised weight of a step; each formula's
  comment says where it comes from. The peak is the largest of the moments of a step
  (loss, head backward, blocks backward, backward end, optimiser step) on top of
  what lives across steps. Because assembling is cheap, the advice re-assembles the
  plan with one setting changed at a time, without tracing again.

A worked example: reference 004's run (Qwen2.5-14B, 4-bit body, 44k new rows, Adafactor,
batch 1 x 128, checkpointing) planned against its 15 GB card from the model's config.json
alone, in ``configs/ref004_qwen14b_4bit.yaml`` (its header states the verdict; docs/quantization.md).

The types both share (`Plan`, `LineItem`, `Facts`, `Workload`, ``gib``, ``parse_size``)
are in ``types``; printing the plan for ``tokengraft plan`` is ``cli.plan``'s job.
"""

from __future__ import annotations

import warnings

from tokengraft.config import Recipe
from tokengraft.errors import TokengraftError
from tokengraft.planner.assemble import SHARDINGS, Knobs, advise, assemble, table
from tokengraft.planner.measure import gather, resolve_device
from tokengraft.planner.types import GiB, LineItem, Plan, gib, parse_size

__all__ = ["GiB", "LineItem", "Plan", "SHARDINGS", "gib", "parse_size", "plan", "table"]


def plan(recipe: Recipe, *, new_tokens: int | None = None, budget: int | None = None, device: str | None = None,
         seq_len: int | None = None, supervised_tokens: int | None = None, scan_data: bool = True,
         devices: int = 1, sharding: str | None = None) -> Plan:
    """Plan a recipe's peak memory per device without loading weights; advice when over ``budget``.

    ``devices`` processes share the run (one device each); ``sharding`` is how: none (one
    process or DDP), zero1, zero2, zero3 or fsdp (default: the recipe's ``distributed``
    section). ``train.batch_size`` stays per device, so activations do not shrink.
    """
    if devices < 1:
        raise TokengraftError(f"--devices must be 1 or more, got {devices}")
    if sharding is not None and sharding not in SHARDINGS:
        raise TokengraftError(f"sharding {sharding!r} is not one of {', '.join(SHARDINGS)}")
    dev = resolve_device(recipe, device)
    with warnings.catch_warnings():  # deprecation chatter from applying methods to a throwaway meta model
        warnings.simplefilter("ignore")
        facts, work = gather(recipe, new_tokens=new_tokens, device=dev, seq_len=seq_len,
                             supervised=supervised_tokens, scan_data=scan_data)
    knobs = Knobs.from_recipe(recipe, dev, work.batch, devices=devices, sharding=sharding)
    result = assemble(facts, work, knobs, budget)
    result.assumptions = {
        "model": recipe.model.name, "model_type": facts.model_type, "device": dev,
        "dtype": recipe.model.dtype, "quantization": recipe.model.quantization,
        "quant_type": recipe.model.quant_type if recipe.model.quantization == "4bit" else None,
        "double_quant": recipe.model.double_quant if recipe.model.quantization == "4bit" else None,
        "compute_dtype_bytes": facts.compute_dtype_bytes, "backend": knobs.backend, "sides": knobs.sides,
        "new_tokens": facts.new_tokens, "existing_rows_trained": facts.existing_trained,
        "vocab_rows": {"base": facts.base_rows, "after": facts.vocab_after}, "hidden": facts.hidden,
        "blocks": facts.num_blocks, "tied": facts.tied, "batch_size": knobs.batch, "grad_accum": knobs.grad_accum,
        "seq_len": work.seq_len, "supervised_positions": work.supervised, "workload_source": work.source,
        "gradient_checkpointing": knobs.gradient_checkpointing, "supervised_head_only": knobs.supervised_head_only,
        "optimizer": knobs.optimizer, "attention": facts.trace.kernel, "methods": facts.method_names,
        "activation_bytes_by_role": facts.trace.by_role, "devices": knobs.devices, "sharding": knobs.sharding,
    }
    result.notes = list(facts.notes)
    if knobs.sharding in ("zero3", "fsdp") and knobs.devices > 1:
        result.notes.append(f"start-up: each process loads the whole base ({gib(result.loaded_weights)}) into host "
                            "memory before the engine shards it; the figures are for training")
    result.advice = advise(facts, work, knobs, result)
    return result
