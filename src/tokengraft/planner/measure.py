"""What the planner measures: the meta-device model, its parameters, and an activation trace.

Nothing here reads a weight. `gather` builds the recipe's model on the meta device
(shapes, no memory), applies the recipe's methods with the real registry code (so
LoRA / adapter / freeze counts and dtypes are exactly what training creates), counts
the base weights per quantisation, and traces the activations:

- the transformer body runs forward on the meta device under ``saved_tensors_hooks``
  and every tensor autograd keeps for the backward pass is counted once (by
  storage), per block and per role (attention, MLP, norms, methods). This is the
  per-layer bytes-per-token formula derived from the block itself instead of a
  hand-written per-family table: it sees gated vs. plain MLPs, q/k norms, dropout
  masks, LoRA inputs, and it knows that a frozen linear layer keeps nothing
  (autograd saves an input only when a weight needs its gradient);
- the attention kernel is the one exception: the meta device always picks the math
  kernel, so fused kernels (SDPA flash / memory-efficient, flash-attention 2) are
  stood in for by a function that keeps what they keep (q, k, v, output,
  log-sum-exp; with a padding mask, GQA keys/values repeated per head and the float
  mask, as transformers' SDPA path does). ``eager`` attention is traced as is, T x T
  probabilities included.

The result is `Facts` and a `Workload` (``planner.types``); ``planner.assemble`` turns
them into a `Plan` for any choice of the cheap knobs without tracing again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from tokengraft.config import Recipe
from tokengraft.core.arch import ArchInfo, describe
from tokengraft.core.vocab import register_tokens
from tokengraft.data import encode_examples, load_examples
from tokengraft.errors import TokengraftError
from tokengraft.methods import apply_methods
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import load_config, load_tokenizer, parse_dtype
from tokengraft.planner.types import ActivationTrace, Facts, Workload
from tokengraft.tasks import get_task

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
PLAN_ATTENTION = "tokengraft_plan"


# ----------------------------------------------------------------------------- facts (the expensive part)


def quantized_tensor_bytes(numel: int, out_features: int, quant: str, double_quant: bool = True) -> int:
    """Bytes one quantized linear weight occupies in bitsandbytes 0.50 (checked against the loaded tensors
    by tests/test_quantization.py).

    4bit: two weights per byte, one absmax per 64 weights (fp32; with double quantisation uint8,
    plus one fp32 constant per 256 absmax values, an fp32 offset and a 256-entry fp32 code book),
    and a 16-entry fp32 code book: 0.5625 B/weight, or 0.5159 B/weight + 1.1 KB with double quant.
    8bit (LLM.int8): one int8 per weight and an fp32 scale per output row.
    """
    if quant == "8bit":
        return numel + 4 * out_features
    blocks = -(-numel // 64)
    size = -(-numel // 2) + 16 * 4
    if double_quant:
        return size + blocks + 4 * -(-blocks // 256) + 4 + 256 * 4
    return size + 4 * blocks


def quantized_linears(model: Any) -> list[nn.Module]:
    """The linears transformers hands to bitsandbytes: every exact ``nn.Linear`` / ``Conv1D`` except the
    output embedding (``get_keys_to_not_convert``; tokengraft never passes skip modules)."""
    hf = unwrap_peft(model)
    head = hf.get_output_embeddings()
    return [m for m in hf.modules() if type(m) in (nn.Linear, Conv1D) and m is not head]


def _weights_bytes(model: Any, quant: str, dtype_bytes: int, double_quant: bool = True,
                   quant_type: str = "nf4") -> tuple[int, str]:
    """Frozen base weights as loaded. bitsandbytes packs the linears (`quantized_linears`) and leaves the
    embeddings, the LM head, norms and biases in the load dtype."""
    hf = unwrap_peft(model)
    packed_ids: set[int] = set()
    packed = packed_bytes = 0
    if quant != "none":
        for module in quantized_linears(hf):
            out_features = module.weight.shape[0] if isinstance(module, nn.Linear) else module.weight.shape[1]
            packed_ids.add(id(module.weight))
            packed += module.weight.numel()
            packed_bytes += quantized_tensor_bytes(module.weight.numel(), out_features, quant, double_quant)
    plain = sum(p.numel() for p in hf.parameters() if id(p) not in packed_ids)  # parameters() dedupes ties
    if quant == "4bit":
        code = quant_type.upper() + (" + double quant" if double_quant else "")
        return packed_bytes + plain * dtype_bytes, \
            f"{packed / 1e9:.2f}B params {code} ({packed_bytes / max(1, packed):.3f} B/param) + {plain / 1e9:.2f}B at {dtype_bytes} B"
    if quant == "8bit":
        return packed_bytes + plain * dtype_bytes, f"{packed / 1e9:.2f}B params int8 + {plain / 1e9:.2f}B at {dtype_bytes} B"
    return plain * dtype_bytes, f"{plain / 1e9:.3f}B params at {dtype_bytes} B"


# --- the attention stand-in for fused kernels ---------------------------------------------------


class _TraceState:
    padded = True
    kernel = "sdpa"
    device = "cuda"
    called = False
    math = False  # a call fell back to the math kernel (attention dropout on CPU)

    @classmethod
    def how(cls) -> str:
        if cls.math:
            return "math (attention dropout on CPU)"
        return "fused+mask" if (cls.padded and cls.kernel == "sdpa") else "fused"


class _FusedAttentionSaves(torch.autograd.Function):
    """Keeps what a fused attention kernel keeps for backward: q, k, v, the output, the
    log-sum-exp (fp32, one per query and head) and the additive mask when one is passed.
    Forward-only (planning never runs backward)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, *extra)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the planning attention stand-in has no backward")


class _MathAttentionSaves(torch.autograd.Function):
    """What torch's math SDPA keeps with dropout: the scaled q and k, the softmax probabilities,
    the dropout mask (bool), the dropped probabilities and v."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, t, _ = q.shape
        probs = torch.empty((b, h, t, k.shape[2]), dtype=q.dtype, device=q.device)
        mask = torch.empty(probs.shape, dtype=torch.bool, device=q.device)
        ctx.save_for_backward(torch.empty_like(q), torch.empty_like(k), probs, mask, torch.empty_like(probs), v)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the planning attention stand-in has no backward")


def _plan_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Any, dropout: float = 0.0, scaling: Any = None, is_causal: Any = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA path, as far as memory goes: with a padding mask, GQA keys/values are
    repeated to every head (no ``enable_gqa`` with a mask) and the mask is kept as a float
    [B, 1, T, T] tensor; flash-attention 2 unpads instead and keeps neither."""
    _TraceState.called = True
    groups = query.shape[1] // max(1, key.shape[1])
    if dropout > 0 and _TraceState.device == "cpu":
        # CPU kernels cannot fuse dropout: torch's math path runs and keeps the T x T probabilities.
        _TraceState.math = True
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        out = _MathAttentionSaves.apply(query, key, value)
        return out.transpose(1, 2).contiguous(), None
    extra: list[torch.Tensor] = []
    if _TraceState.padded and _TraceState.kernel == "sdpa":
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        b, _, t, _ = query.shape
        extra.append(torch.empty((b, 1, t, key.shape[2]), dtype=query.dtype, device=query.device))
    out = _FusedAttentionSaves.apply(query, key, value, *extra)
    return out.transpose(1, 2).contiguous(), None


def _register_plan_attention() -> None:
    AttentionInterface.register(PLAN_ATTENTION, _plan_attention)


def _role_of(name: str, arch: ArchInfo) -> str:
    """Role of a (plain-model) module path, for the per-role activation breakdown."""
    if "lora_" in name or "tokengraft_adapters" in name or "prefix" in name:
        return "methods"
    block_prefix = arch.blocks + "."
    if not name.startswith(block_prefix):
        return "other"
    rel = name[len(block_prefix):].partition(".")[2]
    norm_names = list((arch.norms or {}).get("names") or [])
    if any(rel == n or rel.startswith(n + ".") for n in norm_names):
        return "norms"
    if arch.attention.module and (rel == arch.attention.module or rel.startswith(arch.attention.module + ".")):
        return "attention"
    if arch.mlp.module and (rel == arch.mlp.module or rel.startswith(arch.mlp.module + ".")):
        return "mlp"
    if "norm" in rel.lower() or "ln" in rel.lower():
        return "norms"
    return "other"


def trace_activations(model: Any, arch: ArchInfo, batch: int, seq_len: int, *, input_grad: bool,
                      padded: bool = True, device: str = "cuda",
                      kept_inputs: list[nn.Module] | None = None) -> ActivationTrace:
    """Run the body forward on the meta device and count the bytes saved for backward.

    ``input_grad``: whether the embedding output needs a gradient (the input token rows
    train). When nothing upstream of a block needs gradients and no weight in it trains,
    autograd keeps nothing there, and the trace shows it. ``padded``: batches carry a
    padding mask (any batch of more than one example of different lengths).

    ``kept_inputs``: modules whose input autograd keeps although their weight is frozen
    (bitsandbytes' 8-bit linears hold it in their autograd context, out of reach of
    saved-tensor hooks); counted apart, once per storage, in ``kept_inputs_per_block``.

    Families whose attention code tests the implementation name itself (Falcon) cannot
    take the stand-in; they are traced with their own code (the meta math kernel, T x T
    scores included: an upper bound when a fused kernel runs).
    """
    hf = unwrap_peft(model)
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    if body is None or body is hf:
        raise TokengraftError(f"cannot find the transformer body of {type(hf).__name__} to trace its activations")
    kernel = getattr(hf.config, "_attn_implementation", None) or "eager"
    if kernel != "eager":
        _register_plan_attention()
        _TraceState.kernel = "flash" if "flash" in kernel else "sdpa"
        _TraceState.padded, _TraceState.device, _TraceState.called, _TraceState.math = padded, device, False, False
        _set_attn(hf, PLAN_ATTENTION)
        try:
            trace = _trace_once(hf, body, arch, batch, seq_len, input_grad, kept_inputs=kept_inputs)
        except TokengraftError:
            trace = None
        finally:
            _set_attn(hf, kernel)
        if trace is not None and _TraceState.called:
            trace.kernel = _TraceState.how()
            return trace
    try:
        trace = _trace_once(hf, body, arch, batch, seq_len, input_grad, kept_inputs=kept_inputs)
    except TokengraftError:
        # transformers >= 5.24 looks for packed sequences in the position ids when no attention mask is given,
        # and that check calls .item(), which meta tensors cannot answer (Falcon builds its own position ids).
        # An all-ones mask is the same attention and skips the check.
        trace = _trace_once(hf, body, arch, batch, seq_len, input_grad, all_ones_mask=True, kept_inputs=kept_inputs)
    trace.kernel = "eager" if kernel == "eager" else "traced-math"
    return trace


def _trace_once(hf: Any, body: Any, arch: ArchInfo, batch: int, seq_len: int, input_grad: bool,
                all_ones_mask: bool = False, kept_inputs: list[nn.Module] | None = None) -> ActivationTrace:
    param_ids = {p.untyped_storage()._cdata for p in hf.parameters()}
    param_ids |= {b.untyped_storage()._cdata for b in hf.buffers()}
    stack: list[str] = []  # module names currently running, innermost last
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            stack.append(name)
        return hook

    def leave(module: Any, args: Any, output: Any) -> None:  # must return None: a value would replace the output
        if stack:
            stack.pop()

    for name, module in hf.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    block_prefix = arch.blocks + "."
    kept: dict[int, tuple[int, int | None]] = {}  # storage -> (bytes, block) of inputs the kept_inputs modules hold
    held: list[torch.Tensor] = []  # held like bitsandbytes holds them, so no later tensor reuses their storage address

    def keep_input(module: Any, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            storage = x.untyped_storage()
            where = next((n for n in reversed(stack) if n.startswith(block_prefix)), None)
            block = int(where[len(block_prefix):].split(".")[0]) if where is not None else None
            kept.setdefault(storage._cdata, (storage.nbytes(), block))
            held.append(x)

    for module in kept_inputs or []:
        handles.append(module.register_forward_pre_hook(keep_input))
    per_block = [0] * arch.num_blocks
    by_role: dict[str, int] = {}
    outside = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal outside
        storage = t.untyped_storage()
        key = storage._cdata  # the StorageImpl address: one per storage, stable on meta (data_ptr is 0)
        if key in param_ids or key in seen:
            return t
        seen.add(key)
        nbytes = storage.nbytes()
        where = next((n for n in reversed(stack) if n.startswith(block_prefix)), None)
        if where is None:
            outside += nbytes
        else:
            per_block[int(where[len(block_prefix):].split(".")[0])] += nbytes
        role = _role_of(stack[-1] if stack else "", arch)
        by_role[role] = by_role.get(role, 0) + nbytes
        return t

    was_training = hf.training
    hf.train()
    dtype = next((p.dtype for p in hf.parameters() if p.is_floating_point()), torch.float32)
    try:
        x = torch.zeros(batch, seq_len, arch.hidden_size, device="meta", dtype=dtype, requires_grad=input_grad)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mask = torch.ones(batch, seq_len, device="meta", dtype=torch.long) if all_ones_mask else None
            body(inputs_embeds=x, attention_mask=mask, use_cache=False)
    except Exception as exc:  # a model whose forward cannot run on meta tensors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokengraftError(f"cannot trace {arch.model_type} activations on the meta device ({first})") from None
    finally:
        for h in handles:
            h.remove()
        hf.train(was_training)
    kept_per_block = [0] * arch.num_blocks
    for key, (nbytes, block) in kept.items():
        if key not in seen and key not in param_ids and block is not None:  # kept by nothing else
            kept_per_block[block] += nbytes
    return ActivationTrace(per_block=per_block, outside=outside, by_role=by_role, kernel="", batch=batch,
                           seq_len=seq_len, kept_inputs_per_block=kept_per_block)


def _set_attn(hf: Any, name: str) -> None:
    for module in hf.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            try:
                config._attn_implementation = name
            except Exception:  # pragma: no cover - a config that refuses the name keeps its own
                pass


# --- tokens, data ------------------------------------------------------------------------------


def _token_count(recipe: Recipe, tokenizer: Any, new_tokens: int | None, notes: list[str]) -> tuple[int, int, list[str]]:
    """(new tokens, existing ids that also train, the new token strings)."""
    tokens = recipe.tokens.all_tokens()
    existing = len(recipe.tokens.train_existing)
    if new_tokens is not None:
        if new_tokens < 0:
            raise TokengraftError(f"--new-tokens must be 0 or more, got {new_tokens}")
        return new_tokens, existing, tokens
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        known = [t for t in tokens if t in vocab]
        if known:
            notes.append(f"{len(known):,} listed token(s) already exist in the vocabulary and add no rows")
        tokens = [t for t in tokens if t not in vocab]
    if get_task(recipe.task).mines_tokens and recipe.data.generate and not tokens:
        notes.append(f"{recipe.task} task: the new-token count is only known after mining; planned with none: "
                     "pass --new-tokens N (or list them in tokens.add_file) for the real count")
    return len(tokens), existing, tokens


def _workload(recipe: Recipe, tokenizer: Any, tokens: list[str], seq_len: int | None, supervised: int | None,
              scan_data: bool) -> Workload:
    """Batch shapes. Scans the training file when it exists (the real encoder, the real lengths);
    otherwise assumes the worst case, every position at ``data.max_length`` supervised."""
    batch = recipe.train.batch_size
    max_length = recipe.data.max_length
    if seq_len is None and supervised is None and scan_data and recipe.data.train and tokenizer is not None \
            and Path(recipe.data.train).is_file():
        added = [t for t in tokens if t not in tokenizer.get_vocab()]
        if added:  # the new tokens must count as one id each, as they will in training
            register_tokens(tokenizer, added, recipe.tokens.special, recipe.tokens.single_word)
        items, _ = encode_examples(load_examples(recipe.data.train), tokenizer, max_length, system=recipe.data.system,
                                   on_overflow=recipe.data.on_overflow, new_tokens=[])
        if items:
            longest = max(len(i["input_ids"]) for i in items)
            counts = sorted((sum(1 for x in i["labels"][1:] if x != -100) for i in items), reverse=True)
            worst = sum(counts[:batch])
            same_length = len({len(i["input_ids"]) for i in items}) == 1
            return Workload(min(batch, len(items)), longest, worst,
                            f"scanned {len(items):,} training examples (longest {longest} tokens)",
                            padded=batch > 1 and not same_length)
    t = seq_len or max_length
    n = supervised if supervised is not None else batch * (t - 1)
    how = "given" if (seq_len or supervised is not None) else "worst case: every position at data.max_length supervised"
    return Workload(batch, t, min(n, batch * (t - 1)), how, padded=batch > 1)


# --- gather ------------------------------------------------------------------------------------


def _stored_dtype_bytes(config: Any) -> int | None:
    """Element size the checkpoint is stored in (config ``dtype`` / ``torch_dtype``), when it says."""
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(stored).replace("torch.", "") if stored is not None else ""
    return DTYPE_BYTES.get(name)


def resolve_device(recipe: Recipe, device: str | None) -> str:
    """The device to plan for: ``device``, else ``model.device`` (auto = cuda when present, as training picks).

    A quantized base trains on CPU too, so quantization no longer implies a GPU: plan a GPU
    recipe on a CPU-only machine with ``--device cuda``.
    """
    name = device or recipe.model.device
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else name


def _compute_bytes(recipe: Recipe, device: str) -> int:
    """Activation element size: half precision under bf16/fp16 autocast on a GPU, else the load dtype.

    A quantized base changes nothing here: a bitsandbytes linear casts its output back to its
    input's dtype, so activations between layers stay in the load (or autocast) dtype.
    """
    precision = recipe.train.precision
    if device == "cuda" and precision in ("auto", "bf16", "fp16"):
        return 2
    return DTYPE_BYTES[recipe.model.dtype]


def _dequant_bytes(recipe: Recipe, device: str, compute_bytes: int) -> int:
    """Element size of a de-quantised weight during a step: 4bit builds it in its compute dtype
    (auto: fp32 on CPU, half on a GPU); 8bit in the activations' dtype."""
    if recipe.model.quantization == "4bit":
        name = recipe.model.compute_dtype
        if name == "auto":
            return 2 if device == "cuda" else 4
        return DTYPE_BYTES[name]
    return compute_bytes


def gather(recipe: Recipe, *, new_tokens: int | None = None, device: str = "cpu", seq_len: int | None = None,
           supervised: int | None = None, scan_data: bool = True) -> tuple[Facts, Workload]:
    """Build the meta model, apply the methods, count, and trace. No weights are read."""
    notes: list[str] = []
    config = load_config(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    load_dtype = parse_dtype(recipe.model.dtype)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=load_dtype,
                                                     trust_remote_code=recipe.model.trust_remote_code)
        except ValueError as exc:
            raise TokengraftError(f"{recipe.model.name} is not a causal language model ({str(exc).splitlines()[0]})") from None
    arch = describe(model)
    try:
        tokenizer = load_tokenizer(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    except TokengraftError:
        tokenizer = None  # a config-only directory: counts come from the recipe alone
        notes.append("no tokenizer found: every listed token counts as new and is appended")
    n_new, n_existing, tokens = _token_count(recipe, tokenizer, new_tokens, notes)
    workload = _workload(recipe, tokenizer, tokens, seq_len, supervised, scan_data)
    dtype_bytes = DTYPE_BYTES[recipe.model.dtype]
    double_quant = recipe.model.double_quant
    by_quant = {q: _weights_bytes(model, q, dtype_bytes, double_quant, recipe.model.quant_type)
                for q in ("none", "4bit", "8bit")}
    weights, weight_detail = by_quant[recipe.model.quantization]
    quantizable = quantized_linears(model)  # before the methods add linears of their own (LoRA A/B, adapters)
    widest_linear = max((m.weight.numel() for m in quantizable), default=0)
    # New ids land in padding rows first (Qwen: 399 of them), then past the matrix.
    tokenizer_size = len(tokenizer) if tokenizer is not None else arch.embedding_rows
    vocab_after = vocab_rows = max(arch.embedding_rows, min(tokenizer_size, arch.embedding_rows) + n_new)
    multiple = recipe.tokens.pad_to_multiple_of
    if multiple and vocab_after > arch.embedding_rows:
        vocab_after = -(-vocab_after // multiple) * multiple
    head = model.get_output_embeddings()
    head_rows = int(head.weight.shape[0]) if head is not None else None

    before = {id(p) for p in model.parameters()}
    method_names = []
    if recipe.methods:
        specs = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in recipe.methods]
        method_names = [s["type"] for s in specs]
        with torch.device("meta"):  # new method weights are born on meta too: nothing is allocated
            model, _ = apply_methods(model, arch, specs)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    method_params = [(p.numel(), p.element_size(), tuple(p.shape)) for p in trainable if id(p) not in before]
    unfrozen = [(p.numel(), p.element_size(), tuple(p.shape)) for p in trainable if id(p) in before]
    if any(s == "prefix" for s in method_names):
        notes.append("prefix tuning: the virtual key/value positions are not in the activation trace (small)")

    compute_bytes = _compute_bytes(recipe, device)
    if compute_bytes != dtype_bytes:  # trace in the dtype activations will have (autocast / quantised compute)
        model.to(torch.bfloat16 if compute_bytes == 2 else torch.float32)
    input_grad = recipe.tokens.sides in ("both", "input") and (n_new + n_existing) > 0
    trace = trace_activations(model, arch, workload.batch, workload.seq_len, input_grad=input_grad, padded=workload.padded,
                              device=device, kept_inputs=quantizable if recipe.model.quantization == "8bit" else None)
    if trace.kernel == "traced-math":
        notes.append(f"{arch.model_type} calls attention its own way: counted with the math kernel "
                     "(T x T scores kept), an upper bound if a fused kernel runs")
    facts = Facts(
        model_type=arch.model_type, hidden=arch.hidden_size, num_blocks=arch.num_blocks, tied=arch.tied_embeddings,
        base_rows=arch.embedding_rows, head_rows=head_rows, vocab_after=vocab_after, vocab_rows=vocab_rows, new_tokens=n_new,
        existing_trained=n_existing, weight_bytes=weights, weight_detail=weight_detail, weights_by_quant=by_quant,
        matrix_bytes_per_row=arch.hidden_size * dtype_bytes, load_dtype_bytes=dtype_bytes,
        # A quantized CPU load copies what it did not quantize out of the checkpoint's map (quantization.py).
        weights_mapped=device == "cpu" and _stored_dtype_bytes(config) == dtype_bytes
        and recipe.model.quantization == "none",
        compute_dtype_bytes=compute_bytes, method_params=method_params, unfrozen_params=unfrozen,
        method_names=method_names, trace=trace,
        block_input_bytes=workload.batch * workload.seq_len * arch.hidden_size * compute_bytes, notes=notes,
        widest_linear=widest_linear, dequant_bytes=_dequant_bytes(recipe, device, compute_bytes),
    )
    return facts, workload
