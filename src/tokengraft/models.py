"""Load a model and tokenizer from any MODEL spec.

A MODEL spec is one of:
- a built-in alias: ``smollm2-135m-instruct`` (the default everywhere) or ``gemma3-270m``
  (opt-in); ``builtin.py`` fetches and caches them;
- a local Hugging Face directory (weights, or only ``config.json`` for meta-device work);
- a ``.gguf`` file;
- a hub id (works when the network allows; offline it is a clear error).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from tokengraft.builtin import (BUILTIN_MODELS, drop_gguf_quantization, ensure_builtin, gguf_alone, is_builtin,
                                load_gguf, weights_problem)
from tokengraft.constants import BUILTIN_ALIAS  # public here too: tokengraft.models.BUILTIN_ALIAS
from tokengraft.errors import TokengraftError
from tokengraft.files import gguf_problem
from tokengraft.quantization import QuantSpec, load_quantized

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
HUB_PROBE_SECONDS = 5.0  # one reachability check before transformers' own retries (about 27 s offline)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise TokengraftError(f"unknown dtype {name!r}; use one of float32, float16, bfloat16") from None


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU; an explicit CUDA request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TokengraftError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise TokengraftError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None


# ----------------------------------------------------------------------------- loading


def resolve_model_dir(spec: str) -> Path | None:
    """The local directory behind a spec, or None for a hub id / GGUF file."""
    if is_builtin(spec):
        return ensure_builtin(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    return None


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _check_spec(spec: str) -> None:
    path = Path(spec).expanduser()
    if is_builtin(spec) or path.is_dir():
        if path.is_dir() and not (path / "config.json").is_file():
            raise TokengraftError(f"{spec} is a directory without config.json; point MODEL at a Hugging Face model directory")
        return
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise TokengraftError(f"GGUF file {spec} does not exist")
        problem = gguf_problem(path)
        if problem is not None:
            raise TokengraftError(f"cannot read GGUF file {spec}: {problem}; download or export it again")
        return
    if path.exists():
        raise TokengraftError(f"{spec} is neither a model directory nor a .gguf file")
    if not _looks_like_hub_id(spec):
        raise TokengraftError(
            f"unknown model {spec!r}: not a built-in alias ({', '.join(BUILTIN_MODELS)}), an existing directory, "
            "a .gguf file, or a hub id like org/name"
        )


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it answers): asked once per process."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # any transport failure (DNS, refused, timeout, proxy) means: not reachable
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def hub_options(spec: str) -> dict[str, Any]:
    """``from_pretrained`` options for a hub id: local files only when the hub cannot be reached.

    transformers retries an unreachable hub for about half a minute, printing a line per
    retry, before its own error; one short probe says the same at once. A model already
    in the local Hugging Face cache still loads offline.
    """
    from huggingface_hub import try_to_load_from_cache

    why = hub_unreachable()
    if why is None:
        return {}
    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return {"local_files_only": True}
    raise TokengraftError(f"{spec!r} is a hub id, but the Hugging Face hub cannot be reached ({why}) and it is not "
                          "in the local cache; check the network, or give a local model directory or .gguf file")


def _source(spec: str) -> tuple[str, dict[str, Any]]:
    """Where transformers reads a non-GGUF spec from, and the options that go with it."""
    directory = resolve_model_dir(spec)
    return (str(directory), {}) if directory is not None else (spec, hub_options(spec))


def _has_weights(directory: Path) -> bool:
    return any(directory.glob("*.safetensors")) or any(directory.glob("*.bin")) or any(directory.glob("*.safetensors.index.json"))


# transformers 5 silently builds an empty (1-token) tokenizer from a directory without
# vocabulary files; refuse that instead of returning a tokenizer that matches nothing.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def has_tokenizer(directory: Path) -> bool:
    """Whether a model or run directory holds tokenizer files (transformers would build an empty one otherwise)."""
    return any((directory / name).is_file() for name in _TOKENIZER_FILES) or any(directory.glob("*.tiktoken"))


def load_config(spec: str = BUILTIN_ALIAS, trust_remote_code: bool = False) -> Any:
    """The model config for a spec, without weights."""
    from transformers import AutoConfig

    _check_spec(spec)
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        try:
            with gguf_alone(path) as alone:
                return AutoConfig.from_pretrained(str(alone.parent), gguf_file=alone.name)
        except Exception as exc:  # a corrupt file fails anywhere in the reader (struct.error, IndexError, ...)
            raise TokengraftError(f"cannot read GGUF file {spec}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    source, options = _source(spec)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **options)
    except OSError as exc:
        raise TokengraftError(f"cannot load config for {spec!r} (offline or not found): {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise TokengraftError(f"{spec}: {str(exc).splitlines()[0]}") from None


def load_config_model(spec: str = BUILTIN_ALIAS, trust_remote_code: bool = False) -> Any:
    """Build the model on the meta device from its config: shapes without memory."""
    from transformers import AutoModelForCausalLM

    config = load_config(spec, trust_remote_code)
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise TokengraftError(f"{spec} is not a causal language model ({str(exc).splitlines()[0]})") from None


def load_meta(spec: str = BUILTIN_ALIAS, trust_remote_code: bool = False) -> tuple[Any, Any, str | None]:
    """``(model on the meta device, tokenizer or None, why there is no tokenizer or None)``: structure only.

    For reading a model's layout (`tokengraft inspect`) from as little as its config.json:
    a missing or unreadable tokenizer costs only the padding-row count, so it is a reason,
    not an error.
    """
    model = load_config_model(spec, trust_remote_code=trust_remote_code)
    try:
        return model, load_tokenizer(spec, trust_remote_code=trust_remote_code), None
    except Exception as exc:  # any tokenizer failure: the structure alone is still useful
        return model, None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_tokenizer(spec: str = BUILTIN_ALIAS, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    _check_spec(spec)
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        try:
            with gguf_alone(path) as alone:
                return AutoTokenizer.from_pretrained(str(alone.parent), gguf_file=alone.name)
        except Exception as exc:  # same reader as the config: any failure means an unreadable file
            raise TokengraftError(f"cannot read the tokenizer in GGUF file {spec}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    source, options = _source(spec)
    if not options and Path(source).is_dir() and not has_tokenizer(Path(source)):
        raise TokengraftError(f"{spec} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)")
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **options)
    except (OSError, ValueError) as exc:
        raise TokengraftError(f"cannot load tokenizer for {spec!r}: {str(exc).splitlines()[0]}") from None


def load_model(
    spec: str = BUILTIN_ALIAS,
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    quantization: QuantSpec | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from any MODEL spec, in eval mode on the chosen device.

    ``quantization`` loads the block linears with bitsandbytes (quantization.py): the model is
    then placed on the device while loading (bitsandbytes models cannot be moved) and frozen.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_spec(spec)
    torch_dtype = parse_dtype(dtype)
    target = pick_device(device)
    if quantization is not None and spec.endswith(".gguf"):
        raise TokengraftError(f"model.quantization: {quantization.kind} needs a Hugging Face model directory or hub id; "
                              f"{spec} is a GGUF file (convert it, or use the built-in alias, which is cached as one)")
    if spec.endswith(".gguf"):
        model, tokenizer = load_gguf(Path(spec).expanduser(), torch_dtype)
        drop_gguf_quantization(model)  # de-quantised already: saving and training treat it as a plain model
    else:
        source, options = _source(spec)
        directory = None if options or not Path(source).is_dir() else Path(source)
        if directory is not None and not _has_weights(directory):
            raise TokengraftError(f"{spec} has config.json but no weights; `inspect` and `plan` work on it, training needs weights")
        if directory is not None and not has_tokenizer(directory):
            raise TokengraftError(f"{spec} has weights but no tokenizer files; save the tokenizer into the directory")
        damage = weights_problem(directory) if directory is not None else None
        if damage is not None:
            raise TokengraftError(f"cannot load {spec}: {damage}; copy or download the model again")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **options)
            model = None if quantization is not None else \
                AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                     **options)
        except OSError as exc:
            raise TokengraftError(f"cannot load {spec!r} (offline, or no such model): {str(exc).splitlines()[0]}") from None
        except ValueError as exc:
            raise TokengraftError(f"{spec} is not a causal language model: {str(exc).splitlines()[0]}") from None
        if quantization is not None:
            model = load_quantized(source, quantization, dtype=torch_dtype, device=target,
                                   trust_remote_code=trust_remote_code)
    if quantization is None:
        model.to(target)
    model.eval()
    return model, tokenizer


def fingerprint(model: Any) -> str:
    """A short hash of the base weights that identifies the base model cheaply.

    Hashes shapes plus a strided sample of every parameter, so it is fast on large
    models yet changes when any tensor changes shape or when weights differ.
    """
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.device.type == "meta":
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            continue
        key = tensor.data_ptr()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if key in seen:
            continue
        seen.add(key)
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        digest.update(flat[::step].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
