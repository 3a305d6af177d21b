"""Sharded training: DeepSpeed ZeRO and FSDP2 for a graft whose trained part is small.

A graft trains a few tensors (token rows ``[n, H]``, LoRA, adapters) on a large frozen
base. Under DDP and ZeRO-1/2 every rank holds every parameter, so reading a trained
tensor reads its value. Under ZeRO-3 and FSDP2 a parameter lives in shards between
forwards, and reading one gives an empty tensor (ZeRO-3: ``p.data`` is ``[0]``) or a
local shard (FSDP2: a ``DTensor``). What makes the graft work there:

- `training_engine_arguments`: the recipe's ``distributed`` section as ``TrainingArguments``
  keywords (the Trainer's own ``deepspeed=`` / ``fsdp=`` route, accelerate underneath);
  `check_engine` refuses in one line what would not run as asked (FSDP on a CPU, where
  accelerate would silently run DDP; a sharding engine without a launcher);
- `load_device` and `partition_zero3`: a base that needs sharding is loaded into host
  memory and partitioned before the Trainer wraps it, so no device holds it whole;
- `full_trained_tensors`: a context in which the graft's trained tensors read whole on
  every rank (ZeRO-3: ``deepspeed.zero.GatheredParameters`` on the trained parameters
  only; FSDP2: ``DTensor.full_tensor``). Entering it is a collective, so every rank enters
  it and only rank 0 writes: saving gathers the rows and methods, never the whole model
  (no 16-bit copy of the base);
- `load_full`: copy a full tensor into a parameter, sharded or not (resume).

DeepSpeed is an optional dependency (``pip install tokengraft[distributed]``), imported
only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tokengraft.config import DistributedConfig, Recipe, deepspeed_file, shards_parameters, zero_stage
from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError

FSDP_ON_CPU = ("FSDP needs GPUs: on CPU accelerate {version} and the Trainer silently run DDP instead (every rank "
               "holds the whole model); use distributed.engine: deepspeed with zero_stage: 3 to shard on CPU, "
               "or distributed.engine: ddp")


# ----------------------------------------------------------------------------- arguments


def deepspeed_config(dist: DistributedConfig) -> dict[str, Any]:
    """The DeepSpeed config of a recipe: the user's file (if any) with what tokengraft owns filled in.

    ``"auto"`` values are filled by the Trainer from ``TrainingArguments`` (batch size,
    accumulation, clipping, precision) and, for the bucket sizes, from the model's width.
    There is no optimizer section: the Trainer hands DeepSpeed tokengraft's optimiser
    (token rows on their own learning rate), so DeepSpeed builds none (no cpu_adam build).
    """
    config = deepspeed_file(dist.deepspeed_config) if dist.deepspeed_config else {}
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = zero_stage(dist)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
                "train_batch_size"):
        config.setdefault(key, "auto")
    config.setdefault("bf16", {"enabled": "auto"})
    config.setdefault("fp16", {"enabled": "auto"})
    zero.setdefault("reduce_bucket_size", "auto")
    if zero["stage"] == 3:
        zero.setdefault("stage3_prefetch_bucket_size", "auto")
        zero.setdefault("stage3_param_persistence_threshold", "auto")
    return config


def fsdp_config() -> dict[str, Any]:
    """FSDP2 through the Trainer: one shard unit per decoder block (the model's ``_no_split_modules``) plus the root.

    The root unit holds the embedding, the head and the token rows; FSDP2 keeps each
    parameter's own dtype, so the rows stay fp32 beside a bf16 base. Written against
    transformers' documented ``fsdp_config``; not run here (no GPU).
    """
    return {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT", "cpu_ram_efficient_loading": False}


def fsdp_requested(recipe: Recipe) -> bool:
    """FSDP asked for in the recipe, or by ``accelerate launch --use_fsdp`` / an FSDP accelerate config."""
    return recipe.distributed.engine == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def check_engine(recipe: Recipe, device: torch.device) -> None:
    """Refuse what would not run as asked: FSDP on a CPU (accelerate falls back to DDP without a word), a
    sharding engine without a launcher (DeepSpeed would look for MPI), DeepSpeed not installed."""
    if fsdp_requested(recipe) and device.type == "cpu":
        import accelerate

        raise TokengraftError(FSDP_ON_CPU.format(version=accelerate.__version__))
    engine = recipe.distributed.engine
    if engine != "ddp" and "WORLD_SIZE" not in os.environ:
        raise TokengraftError(f"distributed.engine: {engine} runs under a launcher: accelerate launch --multi_gpu "
                              "--num_processes N -m tokengraft train ... (torchrun --nproc_per_node 1 for one "
                              "process); without one, set distributed.engine: ddp")
    if engine == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise TokengraftError("distributed.engine: deepspeed needs DeepSpeed: pip install 'tokengraft[distributed]' "
                                  "(or pip install deepspeed)") from None


def training_engine_arguments(recipe: Recipe) -> dict[str, Any]:
    """``TrainingArguments`` keywords for the recipe's engine (none for ddp: the launcher gives DDP)."""
    engine = recipe.distributed.engine
    if engine == "deepspeed":
        return {"deepspeed": deepspeed_config(recipe.distributed)}
    if engine == "fsdp":
        return {"fsdp": True, "fsdp_config": fsdp_config()}
    return {}


def load_device(recipe: Recipe, device: torch.device) -> torch.device:
    """Where the base is loaded: host memory when the engine will shard it across GPUs (ZeRO-3, FSDP).

    Loaded onto each GPU whole, a base that needs sharding would not fit before it is
    sharded; from host memory the engine places only each rank's shards on its GPU
    (`partition_zero3`; FSDP2 moves module by module). Not run here (no GPU).
    """
    return torch.device("cpu") if device.type == "cuda" and shards_parameters(recipe.distributed) else device


def partition_zero3(model: nn.Module, args: Any) -> None:
    """Partition the built graft for ZeRO-3 before the Trainer wraps it: DeepSpeed's ``zero.Init(module=model)``.

    This is DeepSpeed's documented way to partition a model already built in memory.
    Without it the engine would first move the whole module to the device (``module.to``),
    then partition it. It also installs DeepSpeed's memory-efficient ``F.linear`` (for the
    rest of the process, as ``zero.Init`` always does), which gathers a frozen weight again
    in backward instead of keeping it from the forward.
    """
    import deepspeed

    deepspeed.init_distributed()  # DeepSpeed's view of accelerate's process group (its config checks the batch sizes)
    deepspeed.zero.Init(module=model, config_dict_or_path=args.hf_deepspeed_config.config)


# ----------------------------------------------------------------------------- reading and writing shards


def is_dtensor(tensor: Any) -> bool:
    """An FSDP2 shard. Importing ``torch.distributed.tensor`` costs seconds, so it is not imported here:
    when nothing has imported it yet, no tensor can be one."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)



def zero3_partitioned(parameter: torch.Tensor) -> bool:
    """A parameter that DeepSpeed ZeRO-3 partitioned (its ``data`` is empty between forwards)."""
    return hasattr(parameter, "ds_id")


def trained_parameters(g: Graft) -> list[nn.Parameter]:
    """The graft's trainable parameters as the live model holds them, in the model's order (same on every rank).

    FSDP2 replaces each parameter with a new ``DTensor`` parameter, so the graft's own
    references (rows, method records) are re-pointed at the live ones first (`relink`).
    """
    relink(g)
    return [p for p in g.model.parameters() if p.requires_grad]


def relink(g: Graft) -> None:
    """Point the graft's row and method references at the parameters the model holds now."""
    if g.rows is not None:
        hf = g.hf_model
        embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        live_in = getattr(embedding, "rows", None)
        if isinstance(g.rows.input_rows, nn.Parameter) and isinstance(live_in, nn.Parameter):
            g.rows.input_rows = live_in
        live_out = getattr(head, "rows", None)
        if isinstance(g.rows.output_rows, nn.Parameter) and isinstance(live_out, nn.Parameter):
            g.rows.output_rows = live_out
    if g.methods is not None:
        for record in g.methods.records:
            record.params = [g.model.get_parameter(name) for name in record.names]


@contextlib.contextmanager
def full_trained_tensors(g: Graft, extra: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Inside, ``g.token_rows()``, the methods' tensors and ``extra`` read whole on every rank.

    A collective under ZeRO-3 and FSDP2: every rank must enter, in the same order;
    elsewhere it does nothing. Only the trained parameters (and ``extra``, e.g. the base
    embedding for a snapshot's nearest tokens) are gathered, never the frozen base.
    """
    params = trained_parameters(g)
    wanted = params + [t for t in (extra or []) if all(t is not p for p in params)]
    if any(zero3_partitioned(p) for p in wanted):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for p in wanted if zero3_partitioned(p)]):
            yield
        return
    if any(is_dtensor(p) for p in params):
        with _unsharded_graft(g):
            yield
        return
    yield


@contextlib.contextmanager
def _unsharded_graft(g: Graft) -> Iterator[None]:
    """FSDP2: the graft's references swapped for full copies of the live DTensor parameters, then back."""
    full = {id(p): p.full_tensor() if is_dtensor(p) else p for p in trained_parameters(g)}
    rows_before = (g.rows.input_rows, g.rows.output_rows) if g.rows is not None else None
    records_before = [list(r.params) for r in g.methods.records] if g.methods is not None else []
    try:
        if g.rows is not None:
            g.rows.input_rows = full.get(id(g.rows.input_rows), g.rows.input_rows)
            if g.rows.output_rows is not None:
                g.rows.output_rows = full.get(id(g.rows.output_rows), g.rows.output_rows)
        if g.methods is not None:
            for record in g.methods.records:
                record.params = [full.get(id(p), p) for p in record.params]
        yield
    finally:
        if rows_before is not None:
            g.rows.input_rows, g.rows.output_rows = rows_before
        if g.methods is not None:
            for record, params in zip(g.methods.records, records_before):
                record.params = params


def uses_deepspeed(args: Any) -> bool:
    """Whether the Trainer runs under DeepSpeed: the recipe's engine, or ``accelerate launch --use_deepspeed``."""
    return getattr(args, "hf_deepspeed_config", None) is not None or \
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def full_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The whole tensor's shape, also for a ZeRO-3 partition (whose ``shape`` is ``[0]``; a DTensor's is whole)."""
    return tuple(tensor.ds_shape) if zero3_partitioned(tensor) else tuple(tensor.shape)


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's whole value: a DTensor is gathered (a collective), anything else is itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def load_full(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into a parameter that may be a ZeRO-3 partition or an FSDP2 shard.

    Every rank passes the same value, in the same order (gathering a ZeRO-3 parameter is a
    collective). Under DeepSpeed this writes the parameter, not the optimiser's fp32 master
    copy: it is for a run that will not step again (resume restores from DeepSpeed's files).
    """
    if zero3_partitioned(parameter):
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0), torch.no_grad():
            parameter.data.copy_(value.to(parameter.data))
        return
    with torch.no_grad():
        if is_dtensor(parameter):
            from torch.distributed.tensor import distribute_tensor  # loaded already: the parameter is a DTensor

            local = distribute_tensor(value.to(parameter.dtype), parameter.device_mesh, parameter.placements,
                                      src_data_rank=None)
            parameter.copy_(local)
        else:
            parameter.copy_(value.to(parameter))


def sharded(model: Any) -> bool:
    """Whether any parameter of the model lives in shards (ZeRO-3 or FSDP2)."""
    return any(zero3_partitioned(p) or is_dtensor(p) for p in model.parameters())

