"""The memory planner: what a recipe needs per device, before any weight is loaded.

Reference 004 lost a day to out-of-memory errors that a budget table would have
predicted: a 1.87 GiB gradient for the *whole* embedding matrix when only the new
rows trained. ``plan(recipe)`` builds that table from the config alone:

- **Parameters** are counted on a meta-device model (shapes, no memory), with the
  recipe's methods applied by the real registry code, so LoRA / adapter / freeze
  counts and dtypes are exactly what training creates.
- **Activations** are *traced*: the transformer body runs forward on the meta
  device under ``saved_tensors_hooks`` and every tensor autograd keeps for the
  backward pass is counted once (by storage), per block and per role (attention,
  MLP, norms, methods). This is the per-layer bytes-per-token formula derived from
  the block itself instead of a hand-written per-family table: it sees gated vs.
  plain MLPs, q/k norms, dropout masks, LoRA inputs, and it knows that a frozen
  linear layer keeps nothing (autograd saves an input only when a weight needs its
  gradient). The attention kernel is the one exception: the meta device always
  picks the math kernel, so fused kernels (SDPA flash / memory-efficient, flash-
  attention 2) are stood in for by a function that keeps what they keep
  (q, k, v, output, log-sum-exp; with a padding mask, GQA keys/values repeated per
  head and the float mask, as transformers' SDPA path does). ``eager`` attention is
  traced as is, T x T probabilities included.
- **Everything else** (logits, gradients, optimiser state and step temporaries,
  PEFT's merged matrix copy, quantised weights) follows from shapes; each formula's
  comment says where it comes from.

The peak is the largest of the moments of a step (loss, head backward, blocks
backward, backward end, optimiser step) on top of what lives across steps.
`gather` here measures the facts; ``plan_report.assemble`` turns them into a `Plan`
for any choice of the cheap knobs (batch size, backend, checkpointing, optimiser,
...), which is how the advice computes what a change would save without tracing again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokengraft.errors import TokengraftError

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
# bitsandbytes NF4 with double quantisation: 4 bits per weight, one 8-bit absmax per
# 64 weights, one fp32 constant per 256 absmax blocks (QLoRA's ~4.127 bits/param).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# LLM.int8: one int8 per weight plus an fp32 scale per output row (added separately).
INT8_BYTES_PER_PARAM = 1.0
PLAN_ATTENTION = "tokengraft_plan"


# ----------------------------------------------------------------------------- results


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
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise TokengraftError(f"--budget {text!r} is not a size; write e.g. 15GB, 15GiB or 800MB")
    scale = {"": GiB, "k": 1024, "m": 1024**2, "g": GiB, "t": 1024**4}[match.group(2).lower()]
    if match.group(2) == "" and match.group(3):
        scale = 1  # plain bytes: "1000B"
    return int(float(match.group(1)) * scale)


# ----------------------------------------------------------------------------- facts (the expensive part)


@dataclass
class ActivationTrace:
    """Bytes autograd keeps after the forward pass, at one (batch, seq_len)."""

    per_block: list[int]
    outside: int  # final norm, rotary tables and other tensors saved outside the blocks
    by_role: dict[str, int]  # summed over blocks: attention, mlp, norms, methods, other
    kernel: str  # how attention was accounted: "fused", "fused+mask", "eager", "traced-math"
    batch: int
    seq_len: int


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


def _weights_bytes(model: Any, arch: Any, quant: str, dtype_bytes: int) -> tuple[int, str]:
    """Frozen base weights as loaded. Quantisation packs the block linears only: bitsandbytes
    leaves embeddings, the LM head (transformers skips output embeddings), norms and biases in
    the load dtype."""
    from torch import nn

    from tokengraft.methods.spec import unwrap_peft

    hf = unwrap_peft(model)
    conv1d = _conv1d()
    linear_weights: set[int] = set()
    scales = 0
    if quant != "none":
        blocks = hf.get_submodule(arch.blocks)
        for module in blocks.modules():
            if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
                linear_weights.add(id(module.weight))
                out_rows = module.weight.shape[0] if isinstance(module, nn.Linear) else module.weight.shape[1]
                scales += 4 * out_rows  # int8: fp32 row scale (SCB); unused for nf4
    packed = plain = 0
    seen: set[int] = set()
    for p in hf.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in linear_weights:
            packed += p.numel()
        else:
            plain += p.numel()
    if quant == "4bit":
        total = int(packed * NF4_BYTES_PER_PARAM) + plain * dtype_bytes
        return total, f"{packed / 1e9:.2f}B params NF4 (~{NF4_BYTES_PER_PARAM:.3f} B/param) + {plain / 1e9:.2f}B at {dtype_bytes} B"
    if quant == "8bit":
        total = int(packed * INT8_BYTES_PER_PARAM) + scales + plain * dtype_bytes
        return total, f"{packed / 1e9:.2f}B params int8 + {plain / 1e9:.2f}B at {dtype_bytes} B"
    return plain * dtype_bytes, f"{plain / 1e9:.3f}B params at {dtype_bytes} B"


def _conv1d() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return None
    return Conv1D


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


def _register_plan_attention() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover
        return False
    AttentionInterface.register(PLAN_ATTENTION, _plan_attention)
    return True


def _role_of(name: str, arch: Any) -> str:
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


def trace_activations(model: Any, arch: Any, batch: int, seq_len: int, *, input_grad: bool,
                      padded: bool = True, device: str = "cuda") -> ActivationTrace:
    """Run the body forward on the meta device and count the bytes saved for backward.

    ``input_grad``: whether the embedding output needs a gradient (the input token rows
    train). When nothing upstream of a block needs gradients and no weight in it trains,
    autograd keeps nothing there, and the trace shows it. ``padded``: batches carry a
    padding mask (any batch of more than one example of different lengths).

    Families whose attention code tests the implementation name itself (Falcon) cannot
    take the stand-in; they are traced with their own code (the meta math kernel, T x T
    scores included: an upper bound when a fused kernel runs).
    """
    from tokengraft.methods.spec import unwrap_peft

    hf = unwrap_peft(model)
    body = getattr(hf, getattr(hf, "base_model_prefix", ""), None)
    if body is None or body is hf:
        raise TokengraftError(f"cannot find the transformer body of {type(hf).__name__} to trace its activations")
    kernel = getattr(hf.config, "_attn_implementation", None) or "eager"
    if kernel != "eager" and _register_plan_attention():
        _TraceState.kernel = "flash" if "flash" in kernel else "sdpa"
        _TraceState.padded, _TraceState.device, _TraceState.called, _TraceState.math = padded, device, False, False
        _set_attn(hf, PLAN_ATTENTION)
        try:
            trace = _trace_once(hf, body, arch, batch, seq_len, input_grad)
        except TokengraftError:
            trace = None
        finally:
            _set_attn(hf, kernel)
        if trace is not None and _TraceState.called:
            trace.kernel = _TraceState.how()
            return trace
    try:
        trace = _trace_once(hf, body, arch, batch, seq_len, input_grad)
    except TokengraftError:
        # transformers >= 5.24 looks for packed sequences in the position ids when no attention mask is given,
        # and that check calls .item(), which meta tensors cannot answer (Falcon builds its own position ids).
        # An all-ones mask is the same attention and skips the check.
        trace = _trace_once(hf, body, arch, batch, seq_len, input_grad, all_ones_mask=True)
    trace.kernel = "eager" if kernel == "eager" else "traced-math"
    return trace


def _trace_once(hf: Any, body: Any, arch: Any, batch: int, seq_len: int, input_grad: bool,
                all_ones_mask: bool = False) -> ActivationTrace:
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
    return ActivationTrace(per_block=per_block, outside=outside, by_role=by_role, kernel="", batch=batch,
                           seq_len=seq_len)


def _set_attn(hf: Any, name: str) -> None:
    for module in hf.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            try:
                config._attn_implementation = name
            except Exception:  # pragma: no cover - a config that refuses the name keeps its own
                pass


# --- tokens, data ------------------------------------------------------------------------------


@dataclass
class Workload:
    """Shapes of one micro-batch: what the activations and logits scale with."""

    batch: int
    seq_len: int  # longest sequence of the largest batch (batches are padded to their longest)
    supervised: int  # supervised positions in that batch (labels != -100)
    source: str  # how these were found
    padded: bool = True  # batches carry a padding mask (examples of different lengths)


def _token_count(recipe: Any, tokenizer: Any, new_tokens: int | None, notes: list[str]) -> tuple[int, int, list[str]]:
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
    if recipe.task == "lexicon" and recipe.data.generate and not tokens:
        notes.append("lexicon task: the new-token count is only known after mining; planned with none: "
                     "pass --new-tokens N (or list them in tokens.add_file) for the real count")
    return len(tokens), existing, tokens


def _workload(recipe: Any, tokenizer: Any, tokens: list[str], seq_len: int | None, supervised: int | None,
              scan_data: bool) -> Workload:
    """Batch shapes. Scans the training file when it exists (the real encoder, the real lengths);
    otherwise assumes the worst case, every position at ``data.max_length`` supervised."""
    batch = recipe.train.batch_size
    max_length = recipe.data.max_length
    if seq_len is None and supervised is None and scan_data and recipe.data.train and tokenizer is not None \
            and Path(recipe.data.train).is_file():
        from tokengraft.data import encode_examples, load_examples

        from tokengraft.core.vocab import register_tokens

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


def _device(recipe: Any, device: str | None) -> str:
    name = device or recipe.model.device
    if name == "auto":
        return "cuda" if (torch.cuda.is_available() or recipe.model.quantization != "none") else "cpu"
    return "cuda" if name.startswith("cuda") else name


def _compute_bytes(recipe: Any, device: str) -> int:
    """Activation element size: half precision under bf16/fp16 autocast or quantised compute, else the load dtype."""
    precision = recipe.train.precision
    if recipe.model.quantization != "none":
        return 2
    if device == "cuda" and precision in ("auto", "bf16", "fp16"):
        return 2
    return DTYPE_BYTES[recipe.model.dtype]


def gather(recipe: Any, *, new_tokens: int | None = None, device: str = "cpu", seq_len: int | None = None,
           supervised: int | None = None, scan_data: bool = True) -> tuple[Facts, Workload]:
    """Build the meta model, apply the methods, count, and trace. No weights are read."""
    from transformers import AutoModelForCausalLM

    from tokengraft.core.arch import describe
    from tokengraft.models import load_config, load_tokenizer, parse_dtype

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
    by_quant = {q: _weights_bytes(model, arch, q, dtype_bytes) for q in ("none", "4bit", "8bit")}
    weights, weight_detail = by_quant[recipe.model.quantization]
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
        from tokengraft.methods import apply_methods

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
                              device=device)
    if trace.kernel == "traced-math":
        notes.append(f"{arch.model_type} calls attention its own way: counted with the math kernel "
                     "(T x T scores kept), an upper bound if a fused kernel runs")
    facts = Facts(
        model_type=arch.model_type, hidden=arch.hidden_size, num_blocks=arch.num_blocks, tied=arch.tied_embeddings,
        base_rows=arch.embedding_rows, head_rows=head_rows, vocab_after=vocab_after, vocab_rows=vocab_rows, new_tokens=n_new,
        existing_trained=n_existing, weight_bytes=weights, weight_detail=weight_detail, weights_by_quant=by_quant,
        matrix_bytes_per_row=arch.hidden_size * dtype_bytes, load_dtype_bytes=dtype_bytes,
        weights_mapped=device == "cpu" and _stored_dtype_bytes(config) == dtype_bytes,
        compute_dtype_bytes=compute_bytes, method_params=method_params, unfrozen_params=unfrozen,
        method_names=method_names, trace=trace,
        block_input_bytes=workload.batch * workload.seq_len * arch.hidden_size * compute_bytes, notes=notes,
    )
    return facts, workload


# ----------------------------------------------------------------------------- plan


def plan(recipe: Any, *, new_tokens: int | None = None, budget: int | None = None, device: str | None = None,
         seq_len: int | None = None, supervised_tokens: int | None = None, scan_data: bool = True) -> Plan:
    """Plan a recipe's peak memory per device without loading weights; advice when over ``budget``."""
    import warnings

    dev = _device(recipe, device)
    with warnings.catch_warnings():  # deprecation chatter from applying methods to a throwaway meta model
        warnings.simplefilter("ignore")
        facts, work = gather(recipe, new_tokens=new_tokens, device=dev, seq_len=seq_len,
                             supervised=supervised_tokens, scan_data=scan_data)
    from tokengraft.planner.assemble import Knobs, advise, assemble

    knobs = Knobs.from_recipe(recipe, dev, work.batch)
    result = assemble(facts, work, knobs, budget)
    result.assumptions = {
        "model": recipe.model.name, "model_type": facts.model_type, "device": dev,
        "dtype": recipe.model.dtype, "quantization": recipe.model.quantization,
        "compute_dtype_bytes": facts.compute_dtype_bytes, "backend": knobs.backend, "sides": knobs.sides,
        "new_tokens": facts.new_tokens, "existing_rows_trained": facts.existing_trained,
        "vocab_rows": {"base": facts.base_rows, "after": facts.vocab_after}, "hidden": facts.hidden,
        "blocks": facts.num_blocks, "tied": facts.tied, "batch_size": knobs.batch, "grad_accum": knobs.grad_accum,
        "seq_len": work.seq_len, "supervised_positions": work.supervised, "workload_source": work.source,
        "gradient_checkpointing": knobs.gradient_checkpointing, "supervised_head_only": knobs.supervised_head_only,
        "optimizer": knobs.optimizer, "attention": facts.trace.kernel, "methods": facts.method_names,
        "activation_bytes_by_role": facts.trace.by_role,
    }
    result.notes = list(facts.notes)
    result.advice = advise(facts, work, knobs, result)
    return result
