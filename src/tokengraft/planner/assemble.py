"""From measured facts to the plan: peak moments, the budget table, and the first thing to change.

``measure.gather`` measures what needs the model (parameter counts, the activation
trace); `assemble` here is arithmetic on those facts for one choice of the cheap
knobs (backend, checkpointing, batch, optimiser, ...). That split is what lets the
advice re-assemble the plan with one setting changed at a time (no new trace),
in an order that costs the run least: a different token backend or the supervised-only head change nothing
about what is learned; checkpointing costs time; a smaller micro-batch with gradient
accumulation keeps the effective batch; Adafactor and 4-bit weights change the
optimisation; a shorter ``data.max_length`` changes the data. Changes accumulate
until the plan fits, and the first one is named first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from tokengraft.config import Recipe, zero_stage
from tokengraft.planner.types import GiB, Facts, LineItem, Plan, Workload, gib

# A CUDA context plus cuBLAS/cuDNN workspaces, outside PyTorch's allocator (typical 0.3-0.8 GiB).
CUDA_CONTEXT_BYTES = int(0.5 * GiB)
# PyTorch's caching allocator rounds and fragments: a few percent over live tensor bytes.
CUDA_ALLOCATOR_SLACK = 0.05
# On CPU: the Trainer, accelerate, the data loader and autograd bookkeeping during a step, measured
# on this machine (benchmarks/plan_vs_measured.py) as RSS growth that no tensor explains (16-26 MiB).
CPU_FRAMEWORK_BYTES = 24 * 1024**2
# DeepSpeed on CPU: engine state and the shared-memory communication buffers of its CPU backend, measured
# (benchmarks/plan_zero.py) as resident memory at the start of training beyond the weights and what a
# process without DeepSpeed holds there (~20 MiB, ZeRO-2 and ZeRO-3 alike).
DEEPSPEED_CPU_BYTES = 20 * 1024**2


# ----------------------------------------------------------------------------- assemble: knobs + facts -> plan


@dataclass
class Knobs:
    """The settings the advice may change; everything else is fixed by the facts."""

    backend: str
    sides: str
    gradient_checkpointing: bool
    supervised_head_only: bool
    batch: int
    grad_accum: int
    optimizer: str
    device: str
    quantization: str = "none"
    devices: int = 1  # processes sharing the run (one device each)
    sharding: str = "none"  # none (each device holds everything: one process or DDP), zero1..zero3, fsdp

    @classmethod
    def from_recipe(cls, recipe: Recipe, device: str, batch: int, devices: int = 1,
                    sharding: str | None = None) -> "Knobs":
        t = recipe.train
        head_only = t.supervised_head_only and not any(
            (m.type if hasattr(m, "type") else m.get("type")) == "prefix" for m in recipe.methods)
        return cls(backend=recipe.tokens.backend, sides=recipe.tokens.sides,
                   gradient_checkpointing=t.gradient_checkpointing, supervised_head_only=head_only,
                   batch=batch, grad_accum=t.grad_accum, optimizer=t.optimizer, device=device,
                   quantization=recipe.model.quantization, devices=devices,
                   sharding=sharding if sharding is not None else recipe_sharding(recipe))


SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")


def recipe_sharding(recipe: Recipe) -> str:
    """The planner's name for the recipe's ``distributed`` engine: none (ddp), zero1..zero3 or fsdp."""
    engine = recipe.distributed.engine
    if engine == "deepspeed":
        return f"zero{zero_stage(recipe.distributed)}"
    return "fsdp" if engine == "fsdp" else "none"


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


# bitsandbytes' 8-bit optimizers keep tensors under 4096 elements in 32-bit state (``min_8bit_size``) and
# quantize the others block-wise: one byte per moment element plus an fp32 absmax per 256 of them.
BNB_MIN_8BIT_SIZE = 4096
BNB_OPTIM_BLOCK = 256


def _optimizer_state(shapes: list[tuple[int, int, tuple[int, ...]]], optimizer: str) -> int:
    """AdamW: exp_avg and exp_avg_sq like the parameter (torch keeps them in the parameter's dtype).
    Adafactor (beta1 None, as build_optimizer makes it): a row and a column second-moment
    vector for each matrix, a full one for vectors. Paged 8-bit AdamW: two 8-bit moments with
    their block constants (fp32 for small tensors); paged memory can move to the host under
    pressure, so on a GPU this is an upper bound."""
    total = 0
    for numel, size, shape in shapes:
        if optimizer == "adafactor":
            total += (_numel(shape[:-1]) + shape[-1]) * size if len(shape) >= 2 else numel * size
        elif optimizer == "paged_adamw_8bit":
            total += 2 * (numel + 4 * -(-numel // BNB_OPTIM_BLOCK)) if numel >= BNB_MIN_8BIT_SIZE else 2 * numel * 4
        else:
            total += 2 * numel * size
    return total


def _optimizer_temp(groups: list[list[tuple[int, int, tuple[int, ...]]]], optimizer: str, device: str) -> int:
    """Temporaries of one optimiser step, per parameter group (build_optimizer: token rows, then the rest).

    Single-tensor AdamW (CPU) computes ``denom = sqrt(v) / c`` (two temporaries) while the
    previous parameter's ``denom`` is still bound to the loop variable: previous + 2 x current.
    Foreach AdamW (CUDA) takes the square roots of a whole group at once: 1 x the group.
    Adafactor (transformers) works in fp32 one parameter at a time: grad^2 and grad^2 + eps (or
    the update and its negation) while the previous parameter's update is still bound;
    half-precision parameters add fp32 copies of the gradient and the parameter.
    Paged 8-bit AdamW (bitsandbytes) updates each tensor in place in one kernel: nothing.
    """
    if optimizer == "paged_adamw_8bit":
        return 0  # bitsandbytes updates each tensor in one fused kernel, in place
    worst = 0
    for shapes in groups:
        previous = 0
        for numel, size, _ in shapes:
            if optimizer == "adafactor":
                half = size != 4
                here = previous + 2 * numel * 4 + (2 * numel * 4 if half else 0)
                previous = numel * 4 * (2 if half else 1)  # the last update (+ the fp32 parameter copy)
            elif device == "cuda":
                here = sum(n * s for n, s, _ in shapes)
            else:
                here = previous + 2 * numel * size
                previous = numel * size
            worst = max(worst, here)
    return worst


def assemble(facts: Facts, work: Workload, knobs: Knobs, recipe_budget: int | None = None) -> Plan:
    """Combine measured facts with the knobs into a peak, moment by moment.

    What lives across steps (weights, trainable copies, optimiser state from step 2 on)
    is under every moment. On top of it, the moments of one step:

    - loss: every saved activation + the logits working set (+ PEFT's merged head copy,
      which the head keeps for backward);
    - head backward: every saved activation + the gradient of the logits + the dense
      head gradient (full and peft backends);
    - blocks backward: the block activations + one block's working gradients (with
      checkpointing: the block inputs + one block recomputed) + head gradients that persist;
    - backward end: every gradient + the dense embedding gradient the last op makes;
    - optimizer step: every gradient + the step's temporaries.
    """
    H, c = facts.hidden, facts.compute_dtype_bytes
    scale = knobs.batch / work.batch  # activations and logits scale exactly with the batch
    n_sup = max(1, round(work.supervised * scale))
    tokens = knobs.batch * work.seq_len
    rows_trained = facts.new_tokens + facts.existing_trained
    two_sided = knobs.sides == "both" and not facts.tied and facts.head_rows is not None
    V = facts.vocab_after if knobs.backend != "rows" else facts.vocab_rows  # logits width after grafting
    row_bytes = facts.matrix_bytes_per_row
    persistent: dict[str, tuple[int, str, str]] = {}  # key -> (bytes, label, detail)

    def put(key: str, value: int, label: str, detail: str = "") -> None:
        if value:
            persistent[key] = (int(value), label, detail)

    weight_bytes, weight_detail = facts.weights_by_quant[knobs.quantization]
    put("weights", weight_bytes, "frozen base weights", weight_detail)
    sides_n = 2 if two_sided else 1
    token_shapes: list[tuple[int, int, tuple[int, ...]]] = []
    head_dense_grad = head_grad_kept = emb_grad_transient = merged_head = 0
    head_trains = knobs.sides != "input" and facts.head_rows is not None
    if rows_trained:
        if knobs.backend == "rows":
            # Row parameters are fp32 [n, H] (rows.py) beside the frozen matrices; no resize.
            token_shapes = [(rows_trained * H, 4, (rows_trained, H))] * sides_n
            put("token_rows", rows_trained * H * 4 * sides_n, "token rows (rows backend)",
                f"{rows_trained:,} x {H} fp32 x {sides_n} side(s)")
        else:
            # Resizing allocates new [V', H] matrices and frees the old ones, except on CPU when the
            # weights are views of the memory-mapped checkpoint: the old pages stay mapped (and
            # resident) while the model lives, so the whole new matrix is extra.
            matrices = 1 if facts.tied or facts.head_rows is None else 2
            grown = facts.vocab_after > facts.base_rows
            rows_added = facts.vocab_after if (grown and facts.weights_mapped) else facts.vocab_after - facts.base_rows
            put("resized_rows", rows_added * row_bytes * matrices,
                "resized matrices (new copies; the mapped originals stay)" if facts.weights_mapped and grown
                else "rows added to the base matrices by resizing",
                f"{facts.base_rows:,} -> {facts.vocab_after:,} rows")
            if knobs.backend == "peft":
                # TrainableTokens: a delta [n, H] in the weight dtype per wrapped matrix ...
                token_shapes = [(rows_trained * H, facts.load_dtype_bytes, (rows_trained, H))] * sides_n
                put("token_rows", rows_trained * row_bytes * sides_n, "token deltas (PEFT trainable tokens)",
                    f"{rows_trained:,} x {H} x {sides_n} side(s)")
                # ... and every forward builds W.index_copy(delta): a full [V, H] copy. The head's copy
                # is saved for backward (F.linear needs it) and its gradient is a dense [V, H] too;
                # the embedding's dense gradient comes last, before its rows are gathered.
                if head_trains:
                    merged_head = head_dense_grad = V * row_bytes
                emb_grad_transient = V * row_bytes if knobs.sides != "output" else 0
            else:  # full: PEFT modules_to_save, a trainable copy of each whole matrix
                token_shapes = [(V * H, facts.load_dtype_bytes, (V, H))] * sides_n
                put("token_rows", V * row_bytes * sides_n, "trainable matrix copies (full backend)",
                    f"{V:,} x {H} x {sides_n} matri{'ces' if sides_n > 1 else 'x'}")
                head_dense_grad = head_grad_kept = V * row_bytes if head_trains else 0
                # Tied: the head's gradient lands first, the embedding's dense gradient is added at
                # the end (a second [V, H] for a moment). Untied: that gradient *is* the .grad.
                emb_grad_transient = V * row_bytes if (facts.tied and knobs.sides == "both") else 0
    put("method_params", sum(n * s for n, s, _ in facts.method_params), "method weights (" + "+".join(facts.method_names) + ")",
        f"{sum(n for n, _, _ in facts.method_params):,} params")
    trainable_shapes = token_shapes + facts.method_params + facts.unfrozen_params
    grads = sum(n * s for n, s, _ in trainable_shapes)
    # Gradients of weights inside the blocks (LoRA, adapters, unfrozen) appear block by block as
    # backward descends. With checkpointing the resident set does not shrink meanwhile, so all of
    # them meet the last recomputed block; without it, freed activations make room and one
    # block's worth is what adds to the peak.
    method_grads = sum(n * s for n, s, _ in facts.method_params + facts.unfrozen_params)
    block_grads = method_grads if knobs.gradient_checkpointing else method_grads // max(1, facts.num_blocks)
    block_grads_detail = "all blocks (checkpointing)" if knobs.gradient_checkpointing else "one block's"
    put("optimizer_state", _optimizer_state(trainable_shapes, knobs.optimizer), f"optimizer state ({knobs.optimizer})",
        "2 moments per parameter" if knobs.optimizer == "adamw" else "factored second moments")

    tr = facts.trace
    per_block = list(tr.per_block)
    if knobs.quantization == "8bit" and tr.kept_inputs_per_block:  # LLM.int8 keeps each linear's input
        per_block = [a + b for a, b in zip(per_block, tr.kept_inputs_per_block)]
    blocks_saved = sum(per_block) * scale
    widest_block = max(per_block or [0]) * scale
    outside = tr.outside * scale
    per_token = sum(per_block) / max(1, facts.num_blocks * work.batch * work.seq_len)
    if knobs.gradient_checkpointing:
        # Each block keeps only its input; backward recomputes one block at a time.
        resident = facts.num_blocks * facts.block_input_bytes * scale + outside
        in_backward = resident + widest_block
        act_detail = f"checkpointed: {facts.num_blocks} block inputs; {gib(widest_block)} while one block is recomputed"
    else:
        resident = in_backward = blocks_saved + outside
        act_detail = f"{facts.num_blocks} blocks x {per_token / 1024:.1f} KiB/token, attention {tr.kernel}"
    act_label = f"activations (batch {knobs.batch} x {work.seq_len} tokens)"
    # Backward works through one block at a time: the residual-stream gradient (twice: in and
    # out of the block) plus gradients of the block's widest intermediates.
    bwd_work = 2 * H * c * tokens + 0.25 * widest_block
    # A quantized linear de-quantises its weight for every matmul (forward and the input gradient):
    # one layer's full-size copy at a time, freed right after.
    dequant = facts.widest_linear * facts.dequant_bytes if knobs.quantization != "none" else 0
    loss_set, logit_grad, logit_detail = _logits(knobs, work, n_sup, V, c)
    accumulated = {"grads_accumulated": (grads, "gradients held across micro-batches", f"grad_accum {knobs.grad_accum}")} \
        if knobs.grad_accum > 1 else {}
    moments: dict[str, dict[str, tuple[int, str, str]]] = {
        "loss": {"activations": (int(resident), act_label, act_detail),
                 "logits": (int(loss_set), "logits, log-softmax and their gradient", logit_detail),
                 "peft_merged_head": (merged_head, "PEFT merged head copy (kept for backward)", f"{V:,} x {H}"),
                 **accumulated},
        "head backward": {"activations": (int(resident), act_label, act_detail),
                          "logits_grad": (int(logit_grad), "gradient of the logits", logit_detail),
                          "peft_merged_head": (merged_head, "PEFT merged head copy (kept for backward)", f"{V:,} x {H}"),
                          "head_grad": (head_dense_grad, "dense head gradient", f"{V:,} x {H}"),
                          **accumulated},
        "blocks backward": {"activations": (int(in_backward), act_label, act_detail),
                            "backward_work": (int(bwd_work), "backward working gradients", "residual stream + one block"),
                            "head_grad": (head_grad_kept, "head gradient (kept)", f"{V:,} x {H}"),
                            "block_grads": (block_grads, "gradients of the block weights so far", block_grads_detail),
                            "dequantized_weight": (dequant, "de-quantised weight of one linear (transient)",
                                                   f"{facts.widest_linear:,} weights x {facts.dequant_bytes} B"),
                            **accumulated},
        "backward end": {"grads": (grads, "gradients of the trainable parameters", ""),
                         "embedding_dense_grad": (emb_grad_transient, "dense embedding gradient (last op of backward)",
                                                  f"{V:,} x {H}")},
        "optimizer step": {"grads": (grads, "gradients of the trainable parameters", ""),
                           "optimizer_temp": (_optimizer_temp([token_shapes, facts.method_params + facts.unfrozen_params],
                                                              knobs.optimizer, knobs.device),
                                              "optimizer step temporaries", "")},
    }
    if knobs.sharding != "none":
        _shard(persistent, moments, facts, knobs, trainable_shapes, weight_bytes)
    base = sum(v[0] for v in persistent.values())
    raw = {name: base + sum(v[0] for v in parts.values()) for name, parts in moments.items()}
    if knobs.device == "cuda":
        overhead = {name: int(CUDA_CONTEXT_BYTES + CUDA_ALLOCATOR_SLACK * value) for name, value in raw.items()}
        over_label = "CUDA context + allocator slack"
    else:
        overhead = {name: CPU_FRAMEWORK_BYTES for name in raw}
        over_label = "framework (Trainer, autograd bookkeeping)"
    phases = {name: raw[name] + overhead[name] for name in raw}
    peak_phase = max(phases, key=lambda k: phases[k])
    line_items = [LineItem(k, label, v, d) for k, (v, label, d) in persistent.items()]
    line_items += [LineItem(k, label, v, d) for k, (v, label, d) in moments[peak_phase].items() if v]
    line_items.append(LineItem("overhead", over_label, overhead[peak_phase], ""))
    every = {k: v[0] for k, v in persistent.items()}
    for parts in moments.values():
        for k, v in parts.items():
            if v[0]:
                every[k] = max(every.get(k, 0), int(v[0]))
    every["overhead"] = overhead[peak_phase]
    return Plan(items=line_items, phases=phases, peak_phase=peak_phase, total=phases[peak_phase],
                budget=recipe_budget, device=knobs.device, assumptions={}, all_items=every,
                loaded_weights=weight_bytes)


Items = dict[str, tuple[int, str, str]]


def _shard(persistent: Items, moments: dict[str, Items], facts: Facts, knobs: Knobs,
           trainable_shapes: list[tuple[int, int, tuple[int, ...]]], weight_bytes: int) -> None:
    """Per-device memory when ``knobs.devices`` processes share the run through DeepSpeed ZeRO or FSDP2 (in place).

    ZeRO-1 partitions the optimiser state, ZeRO-2 also the gradients, ZeRO-3 and FSDP2 also
    the parameters, the frozen base included: for a graft, whose trained part is small,
    that is the one large saving. DeepSpeed keeps an fp32 master copy of its partition of
    the trained parameters (fp32 runs too) and a gradient bucket (the Trainer's ``auto``
    size: hidden^2 elements). Sharded parameters are gathered while they work: ZeRO-3
    gathers a module for its forward (and its backward, for modules that pass gradients),
    so the head matrix is whole around the loss and a block plus the prefetched next one
    during the blocks' backward; FSDP2 keeps its root unit (embedding, head, token rows,
    final norm) whole from forward to the end of backward, and a block plus the next.
    """
    n, kind = knobs.devices, knobs.sharding

    def part(items: Items, key: str) -> None:
        if key in items and items[key][0]:
            value, label, detail = items[key]
            items[key] = (-(-value // n), label, f"{detail}; 1/{n} per device" if detail else f"1/{n} per device")

    zero = kind.startswith("zero")
    stage = int(kind[-1]) if zero else 3
    part(persistent, "optimizer_state")
    for parts in moments.values():
        part(parts, "optimizer_temp")
    if zero:
        if knobs.device == "cpu":
            persistent["deepspeed_cpu"] = (DEEPSPEED_CPU_BYTES, "DeepSpeed on CPU: engine state, shared-memory buffers",
                                           "measured")
        master = sum(numel for numel, _, _ in trainable_shapes) * 4
        persistent["zero_master"] = (-(-master // n), "DeepSpeed fp32 master copy of the trained partition",
                                     f"1/{n} per device")
        bucket = facts.hidden * facts.hidden * 4 * (2 if stage == 3 else 1)
        persistent["zero_buckets"] = (bucket, "DeepSpeed gradient (and prefetch) buckets", "hidden^2 elements each")
    if stage >= 2:
        for parts in moments.values():
            for key in ("grads", "grads_accumulated", "block_grads"):
                part(parts, key)
    if stage < 3:
        return
    for key in ("weights", "token_rows", "method_params"):
        part(persistent, key)
    embedding = facts.base_rows * facts.matrix_bytes_per_row
    head = 0 if (facts.tied or facts.head_rows is None) else facts.head_rows * facts.matrix_bytes_per_row
    block = max(0, weight_bytes - embedding - head) // max(1, facts.num_blocks)
    two_blocks = (2 * block, "gathered: a block and the prefetched next one", "frozen weights, whole while they work")
    if kind == "fsdp":
        root = (embedding + head, "gathered: FSDP2 root unit (embedding, head, rows)", "whole from forward to backward end")
        for name, parts in moments.items():
            parts["gathered_root"] = root
            if name in ("loss", "head backward", "blocks backward"):
                parts["gathered_blocks"] = two_blocks
        return
    head_matrix = (head or embedding, "gathered: the head matrix", "whole around the loss")
    moments["loss"]["gathered_head"] = head_matrix
    moments["head backward"]["gathered_head"] = head_matrix
    moments["blocks backward"]["gathered_blocks"] = two_blocks


def _logits(knobs: Knobs, work: Workload, n_sup: int, V: int, c: int) -> tuple[int, int, str]:
    """(working set around the loss, gradient reaching the head, description).

    Supervised-only head: logits for the n supervised positions only. Cross-entropy keeps
    the fp32 log-softmax; its backward holds it with the incoming gradient and the outgoing
    one: 3 x n x V fp32 (+ the half-precision logits while they are cast up).
    All positions: the model's [B, T, V] logits (the row head builds them twice: base and
    concatenated), then the supervised rows are gathered; backward scatters the gradient
    back through the gather and the slice: two [B, T, V] tensors at once.
    """
    sup = n_sup * V * (12 + (c if c != 4 else 0))
    if knobs.supervised_head_only:
        return sup, n_sup * V * c, f"supervised positions only: {n_sup:,} x {V:,} vocab"
    full = knobs.batch * work.seq_len * V * c
    return max(sup, full + 2 * n_sup * V * 4, 2 * full), full, \
        f"all positions: {knobs.batch} x {work.seq_len} x {V:,} vocab ({n_sup:,} supervised)"


# ----------------------------------------------------------------------------- advice and table


Change = tuple[str, Callable[[Knobs, Facts, Workload], tuple[Knobs, Workload] | None]]


def _changes() -> list[Change]:
    def backend(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, backend="rows"), w) if k.backend != "rows" and f.new_tokens + f.existing_trained else None

    def head_only(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, supervised_head_only=True), w) if not k.supervised_head_only else None

    def checkpointing(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, gradient_checkpointing=True), w) if not k.gradient_checkpointing else None

    def micro_batch(k: Knobs, f: Facts, w: Workload):
        if k.batch <= 1:
            return None
        return dataclasses.replace(k, batch=1, grad_accum=k.grad_accum * k.batch), w

    def adafactor(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, optimizer="adafactor"), w) if k.optimizer != "adafactor" else None

    def shard_base(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, sharding="zero3"), w) if k.devices > 1 and k.sharding not in ("zero3", "fsdp") \
            else None

    def four_bit(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, quantization="4bit"), w) if k.quantization != "4bit" else None

    return [
        ("use tokens.backend: rows (row-sparse token rows, no vocab x hidden copy)", backend),
        ("set train.supervised_head_only: true (logits only where labels train)", head_only),
        ("turn on train.gradient_checkpointing: true", checkpointing),
        ("use train.batch_size: 1 with train.grad_accum x batch (same effective batch)", micro_batch),
        ("use train.optimizer: adafactor (factored second moments)", adafactor),
        ("shard the frozen base over the devices: distributed.engine: deepspeed, zero_stage: 3", shard_base),
        ("load the base in model.quantization: 4bit", four_bit),
    ]


def advise(facts: Facts, work: Workload, knobs: Knobs, plan: Plan) -> list[str]:
    """What to change, in order, until the plan fits the budget (empty when it fits or no budget)."""
    if plan.budget is None or plan.fits:
        return []
    advice: list[str] = []
    current, total = knobs, plan.total
    for text, change in _changes():
        changed = change(current, facts, work)
        if changed is None:
            continue
        new_knobs, new_work = changed
        new_total = assemble(facts, new_work, new_knobs, plan.budget).total
        if new_total >= total:
            continue
        advice.append(f"{text}: saves {gib(total - new_total)} -> {gib(new_total)}")
        current, total = new_knobs, new_total
        if total <= plan.budget:
            break
    if total > plan.budget:
        advice.append(f"still {gib(total - plan.budget)} over after these: shorten data.max_length "
                      f"(activations and logits scale with it) or use a device with more memory")
    return advice


def table(plan: Plan) -> str:
    """The reference-004 style budget: one line per resident item at the peak, then the verdict."""
    a = plan.assumptions
    head = (f"tokengraft plan: {a.get('model_type')} on {plan.device}, {a.get('quantization')} weights "
            f"({a.get('dtype')}), backend {a.get('backend')}, {a.get('new_tokens', 0):,} new tokens, "
            f"batch {a.get('batch_size')} x {a.get('seq_len')} tokens, checkpointing "
            f"{'on' if a.get('gradient_checkpointing') else 'off'}, optimizer {a.get('optimizer')}")
    if a.get("devices", 1) > 1 or a.get("sharding", "none") != "none":
        how = {"none": "replicated (DDP)", "fsdp": "FSDP2"}.get(a.get("sharding"), f"DeepSpeed {a.get('sharding')}")
        head += f"; per device of {a.get('devices')}, {how}"
    width = max([len(i.label) for i in plan.items] + [24])
    lines = [head, ""]
    for item in plan.items:
        detail = f"  ({item.detail})" if item.detail else ""
        lines.append(f"{item.label:<{width}}  {gib(item.bytes):>11}{detail}")
    lines.append("─" * (width + 14))
    lines.append(f"{'peak (' + plan.peak_phase + ')':<{width}}  {gib(plan.total):>11}")
    others = ", ".join(f"{name} {gib(v)}" for name, v in plan.phases.items() if name != plan.peak_phase)
    lines.append(f"{'other phases':<{width}}  {others}")
    if plan.budget is not None:
        lines.append(f"{'budget':<{width}}  {gib(plan.budget):>11}  -> {plan.verdict}")
    lines.append(f"workload: {a.get('workload_source')}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if plan.advice:
        lines.append(f"first change: {plan.advice[0]}")
        for more in plan.advice[1:]:
            lines.append(f"then:         {more}")
    return "\n".join(lines)
