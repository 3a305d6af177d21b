"""Quantized bases: load the block linears in 4-bit (QLoRA's NF4) or 8-bit (LLM.int8) with bitsandbytes.

Only the linear layers inside the blocks are quantized (transformers replaces every
``nn.Linear`` except the output embedding with ``bnb.nn.Linear4bit`` / ``Linear8bitLt``);
the embedding, the LM head and the norms stay in ``model.dtype``. That is what the
row-sparse design needs: the token rows are small fp32 tensors beside a frozen embedding
and head (core/rows.py), exactly as on a full-precision base, and LoRA goes on the
quantized linears through PEFT's bitsandbytes layers.

What this module knows about bitsandbytes 0.50.2 (measured in ``/work/notes/bnb.md``):

- **The CPU repack.** On CPUs with AVX512-BF16, ``Linear4bit.forward`` rewrites its weight
  *in place* into a CPU kernel layout on the first eval-mode / no-grad forward and computes
  in bf16 from then on. After that, training is silently wrong (the kernel has no autograd,
  so no gradient flows through the base linears), ``dequantize_4bit`` returns garbage and
  saving writes corrupt scales. `prepare_loaded` switches it off on every Linear4bit right
  after loading (``support_avx512bf16_for_cpu = False``). GPUs never take that path.
- **What the load leaves trainable.** ``from_pretrained`` leaves every non-quantized
  parameter (embedding, norms, head) with ``requires_grad=True``; nothing of the base trains
  in tokengraft, so the model is frozen at load. PEFT's ``prepare_model_for_kbit_training``
  is not used: it upcasts half-precision embeddings and heads to fp32 (2x memory on the
  largest matrices) and turns on reentrant checkpointing; freezing plus our non-reentrant
  checkpointing is the part that is needed.
- **Skipped modules.** An explicit ``llm_int8_skip_modules`` *replaces* transformers'
  defaults, and the LM head then gets quantized (resizing and row overlays break). We
  never pass it.
- **The checkpoint mmap (CPU).** After a quantized CPU load the fp32 parameters that were
  not quantized are still views of the memory-mapped safetensors file, so every page read
  while quantizing stays resident as file-backed memory. Copying them out releases the map.
- **The Trainer's refusal.** ``Trainer.__init__`` refuses a "purely quantized model"
  unless PEFT is attached. Token rows and hook adapters *are* trainable adapters; see
  `trainer_accepts`.
- **Export.** De-quantising happens with PEFT's LoRA layers removed (``dequantize`` under
  them breaks PEFT's merge), and never by merging LoRA into 4-bit weights (PEFT
  re-quantizes the sum). export/merged.py does the order: unload LoRA, de-quantise,
  re-apply LoRA in fp32, merge, write the rows.

bitsandbytes is an optional dependency (``pip install -e ".[quant]"``): it is imported
inside the functions that need it, and its absence is one clear error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import torch

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft

INSTALL_HINT = 'pip install -e ".[quant]"'
QUANT_KINDS = ("4bit", "8bit")
COMPUTE_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                  "float16": "float16", "fp16": "float16"}
BNB_METHOD = "bitsandbytes"  # transformers' QuantizationMethod.BITS_AND_BYTES (a str enum)

# When bitsandbytes is imported (by us, or by PEFT and transformers whenever it is installed), its CPU
# backend logs a warning that an optional kernel from the hub (package `kernels`) is missing and falls
# back to the bundled one. Nothing is wrong; the line would only puzzle a tokengraft user on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class QuantSpec:
    """How the base is quantized; recorded in ``graft.json`` so loading re-quantizes the same way.

    ``compute_dtype`` is resolved (never ``auto``): a run directory must load the way it trained.
    """

    kind: str  # "4bit" | "8bit"
    quant_type: str = "nf4"  # 4bit: nf4 | fp4
    double_quant: bool = True  # 4bit: quantize the absmax constants too (QLoRA)
    compute_dtype: str = "float32"  # 4bit: dtype of the de-quantised matmul

    @classmethod
    def from_model_config(cls, model_cfg: Any, device: torch.device) -> QuantSpec | None:
        """The recipe's ``model`` section for a run on ``device``; None when not quantized."""
        if model_cfg.quantization == "none":
            return None
        return cls(kind=model_cfg.quantization, quant_type=model_cfg.quant_type,
                   double_quant=bool(model_cfg.double_quant),
                   compute_dtype=resolve_compute_dtype(model_cfg.compute_dtype, device))

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> QuantSpec | None:
        """Read back what `to_record` wrote (None: a full-precision run)."""
        if not record:
            return None
        if record.get("kind") not in QUANT_KINDS:
            raise TokengraftError(f"graft.json: quantization kind {record.get('kind')!r} is not one of "
                                  f"{', '.join(QUANT_KINDS)}; the run directory is damaged")
        return cls(kind=record["kind"], quant_type=record.get("quant_type", "nf4"),
                   double_quant=bool(record.get("double_quant", True)),
                   compute_dtype=record.get("compute_dtype", "float32"))

    def to_record(self) -> dict[str, Any]:
        fields = asdict(self) if self.kind == "4bit" else {"kind": self.kind}  # 8bit has no 4-bit settings
        record: dict[str, Any] = {"library": BNB_METHOD, **fields}
        version = installed_version()
        if version:
            record["bitsandbytes_version"] = version
        return record

    def describe(self) -> str:
        if self.kind == "8bit":
            return "8bit (LLM.int8)"
        return (f"4bit {self.quant_type}{' + double quant' if self.double_quant else ''}, "
                f"{self.compute_dtype} compute")

    def bnb_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig``. The quant type is always passed (bitsandbytes defaults to fp4)."""
        from transformers import BitsAndBytesConfig

        if self.kind == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=self.compute_dtype)


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """``auto``: float32 on CPU (bf16 costs ~10x there without bf16 instructions), bfloat16 on a GPU that
    supports it, float16 on an older GPU (QLoRA's choice on a T4)."""
    if name != "auto":
        if name not in COMPUTE_DTYPES:
            raise TokengraftError(f"model.compute_dtype must be auto, float32, bfloat16 or float16; got {name!r}")
        return COMPUTE_DTYPES[name]
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


# ----------------------------------------------------------------------------- bitsandbytes itself


def require_bitsandbytes(what: str = "model.quantization") -> Any:
    """Import bitsandbytes, or one clear error naming the extra that installs it."""
    try:
        import bitsandbytes
    except ImportError:
        raise TokengraftError(f"{what} needs bitsandbytes, which is not installed: {INSTALL_HINT}") from None
    return bitsandbytes


def installed_version(package: str = "bitsandbytes") -> str | None:
    """The installed version of ``package``, or None (read from its metadata: nothing is imported)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def quantized_modules(model: Any) -> list[tuple[str, Any]]:
    """``(name, module)`` of every bitsandbytes linear in the model (under PEFT wrappers too)."""
    if not is_quantized(model):
        return []
    bnb = require_bitsandbytes()
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [(n, m) for n, m in unwrap_peft(model).named_modules() if isinstance(m, kinds)]


def is_quantized(model: Any) -> bool:
    """Whether the model's linears are bitsandbytes-quantized (a GGUF-loaded model is de-quantised: False).

    Read from ``quantization_method`` because ``model.is_quantized`` raises on a plain model in
    transformers 5.24 and after ``dequantize()``.
    """
    return getattr(unwrap_peft(model), "quantization_method", None) == BNB_METHOD


def spec_of(model: Any) -> QuantSpec | None:
    """How a loaded model was quantized, read from its own ``config.quantization_config``."""
    if not is_quantized(model):
        return None
    config = getattr(unwrap_peft(model).config, "quantization_config", None)
    if config is None:
        return None
    if getattr(config, "load_in_8bit", False):
        return QuantSpec(kind="8bit")
    dtype = str(getattr(config, "bnb_4bit_compute_dtype", "float32")).replace("torch.", "")
    return QuantSpec(kind="4bit", quant_type=str(getattr(config, "bnb_4bit_quant_type", "fp4")),
                     double_quant=bool(getattr(config, "bnb_4bit_use_double_quant", False)), compute_dtype=dtype)


# ----------------------------------------------------------------------------- loading


def device_map_for(device: torch.device) -> dict[str, Any]:
    """The whole model on one device: bitsandbytes models cannot be moved after loading (``.to`` / ``.cuda``)."""
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    if device.type == "cpu":
        return {"": "cpu"}
    raise TokengraftError(f"model.quantization needs model.device cpu or cuda (bitsandbytes has no {device.type} "
                          "backend here); set model.device or model.quantization: none")


def load_quantized(source: str, spec: QuantSpec, *, dtype: torch.dtype, device: torch.device,
                   trust_remote_code: bool = False) -> Any:
    """``from_pretrained`` with the spec's ``BitsAndBytesConfig`` on one device, then `prepare_loaded`."""
    from transformers import AutoModelForCausalLM

    require_bitsandbytes(f"model.quantization: {spec.kind}")
    device_map = device_map_for(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=spec.bnb_config(),
                                                     device_map=device_map, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise TokengraftError(f"cannot load {source!r} (offline, or no such model): {str(exc).splitlines()[0]}") from None
    except (ValueError, RuntimeError, AssertionError) as exc:  # bitsandbytes / accelerate refusals
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokengraftError(f"cannot load {source} with model.quantization: {spec.kind} ({first})") from None
    if not quantized_modules(model):
        raise TokengraftError(f"model.quantization: {spec.kind} found no linear layer to quantize in {source}; "
                              "set model.quantization: none")
    prepare_loaded(model, device)
    return model


def prepare_loaded(model: Any, device: torch.device) -> None:
    """Make a freshly quantized model safe to train and save (see the module docstring)."""
    bnb = require_bitsandbytes()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # The in-place CPU repack on the first eval forward (AVX512-BF16 CPUs): no autograd through
            # the base afterwards, garbage de-quantisation, corrupt saves. A no-op on GPUs.
            module.support_avx512bf16_for_cpu = False
    model.requires_grad_(False)
    if device.type == "cpu":
        with torch.no_grad():
            for p in model.parameters():  # unique parameters: tied matrices stay one tensor
                if p.is_floating_point():
                    p.data = p.data.clone()  # off the checkpoint's memory map (see the module docstring)


def check_placement(model: Any) -> None:
    """Refuse a quantized model split across devices with CPU or disk offload.

    accelerate refuses to train such a model (the reference monkey-patched around it, which
    trains weights that are not where the optimiser thinks). tokengraft loads a quantized base
    on one device; this catches a model loaded elsewhere and handed to the API.
    """
    if not is_quantized(model):
        return
    placement = getattr(unwrap_peft(model), "hf_device_map", None) or {}
    where = {str(v) for v in placement.values()}
    if "disk" in where or ("cpu" in where and len(where) > 1):
        raise TokengraftError(
            f"this quantized base is split across {', '.join(sorted(where))}: training a 4-bit/8-bit model with CPU "
            "or disk offload is not supported (accelerate refuses it and tokengraft does not patch around it); "
            "load it whole on one device (model.device: cuda:0, or cpu), or pick a smaller base")


# ----------------------------------------------------------------------------- training


@contextlib.contextmanager
def trainer_accepts(model: Any) -> Iterator[None]:
    """Let ``transformers.Trainer(...)`` take a quantized model whose trainable parts are ours.

    ``Trainer.__init__`` (``validate_quantization_for_training``, run once, there only)
    refuses a quantized model unless PEFT is attached, because training quantized weights is
    impossible. Our token rows and hook adapters are exactly the trainable adapters it asks
    for, but they are not PEFT objects. ``_hf_peft_config_loaded`` is the attribute PEFT's own
    transformers integration sets to declare an attached adapter; it is set only for the
    constructor and taken off afterwards, so ``save_pretrained`` and PEFT's mixin methods
    never believe a transformers-PEFT adapter is loaded. A PEFT-wrapped model (LoRA) passes
    the check by itself and is left alone.
    """
    target = model
    declare = is_quantized(model) and not callable(getattr(model, "get_base_model", None))
    if declare:
        target._hf_peft_config_loaded = True
    try:
        yield
    finally:
        if declare and "_hf_peft_config_loaded" in target.__dict__:
            del target._hf_peft_config_loaded  # the class default (False) comes back


def check_optimizer_device(optimizer: str, device: torch.device) -> None:
    """Paged 8-bit AdamW pages its state through CUDA unified memory: GPU only."""
    if optimizer.startswith("paged_") and device.type != "cuda":
        raise TokengraftError(f"train.optimizer: {optimizer} needs a CUDA GPU (its state is paged through CUDA "
                              "unified memory); on CPU use adamw or adafactor")


def paged_adamw_8bit(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """bitsandbytes' ``PagedAdamW8bit`` (QLoRA's optimizer): 8-bit moments, paged to CPU memory under pressure."""
    bnb = require_bitsandbytes("train.optimizer: paged_adamw_8bit")
    return bnb.optim.PagedAdamW8bit(groups)


# ----------------------------------------------------------------------------- de-quantising


def dequantize_base(model: Any, dtype: torch.dtype = torch.float32) -> Any:
    """A plain transformers model in ``dtype`` from a quantized one (in place; LoRA layers must be off first).

    transformers' ``dequantize`` replaces each bitsandbytes linear by an ``nn.Linear`` holding
    its de-quantised weight and drops the quantization config; the other parameters keep their
    load dtype, so the whole model is cast to ``dtype`` afterwards (one dtype in the export).
    """
    hf = unwrap_peft(model)
    if hf is not model:
        raise TokengraftError("internal: de-quantise the base only after PEFT's layers are removed")
    from transformers.utils import logging as hf_logging

    conv1d = _conv1d_names(hf)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "The modules are dequantized in ... and casted to ...": we say it ourselves
    try:
        hf = hf.dequantize(dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
    _restore_conv1d(hf, conv1d)
    hf.to(dtype)
    hf.config.dtype = dtype
    return hf


def _conv1d_names(hf: Any) -> list[str]:
    """Modules the architecture builds as GPT-2's ``Conv1D`` (weight stored ``[in, out]``), read from a
    meta-device copy of the model: quantizing turned them into ``[out, in]`` bitsandbytes linears."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = copy.deepcopy(hf.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    return [name for name, module in plain.named_modules() if isinstance(module, Conv1D)]


def _restore_conv1d(hf: Any, names: list[str]) -> None:
    """Put the de-quantised ``nn.Linear`` of each ``Conv1D`` back as a ``Conv1D`` (transposed weight), so
    the checkpoint has the layout the architecture loads."""
    from transformers.pytorch_utils import Conv1D

    for name in names:
        linear = hf.get_submodule(name)
        if isinstance(linear, Conv1D):
            continue
        conv = Conv1D(linear.out_features, linear.in_features)
        conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.T)
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)
            else:
                conv.bias.zero_()
        hf.set_submodule(name, conv)


# ----------------------------------------------------------------------------- storage


def storage_bytes(model: Any) -> dict[str, int]:
    """Bytes of the base weights as they sit in memory: quantized linears (codes + constants) and the rest.

    For the planner's check: the quantization constants (absmax, nested absmax, code books,
    the int8 row scales) count, parameter shapes do not (a 4-bit weight is stored packed,
    ``[N*K/2, 1]`` uint8, so ``numel()`` counts half its weights).
    """
    seen: set[int] = set()

    def size(t: Any) -> int:
        if t is None or not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return t.numel() * t.element_size()

    quantized = weights = 0
    quantized_params: set[int] = set()
    for _, module in quantized_modules(model):
        w = module.weight
        quantized_params.add(id(w))
        weights += module.in_features * module.out_features
        quantized += size(w.data)
        state = getattr(w, "quant_state", None)
        if state is not None:  # 4-bit
            quantized += size(state.absmax) + size(state.code)
            if state.nested:
                quantized += size(state.offset) + size(state.state2.absmax) + size(state.state2.code)
        else:  # 8-bit: the row scales sit on the weight until the first forward, then on the module state
            scb = w.SCB if getattr(w, "SCB", None) is not None else getattr(module.state, "SCB", None)
            quantized += size(scb)
    plain = sum(size(p) for p in unwrap_peft(model).parameters() if id(p) not in quantized_params)
    return {"quantized": quantized, "plain": plain, "quantized_weights": weights}


def logical_numel(parameter: torch.Tensor) -> int:
    """Weights a parameter holds: a packed 4-bit weight stores two per byte (its ``quant_state`` has the shape)."""
    state = getattr(parameter, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return parameter.numel()
