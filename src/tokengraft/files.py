"""Files we read and trust: UTF-8 text, whole weight files, and manifests that prove a directory is whole.

Torch-free (bottom layer), because the recipe loader, the model loader and the
checkpoint code all need these checks and none of them should pay for torch:

- `read_utf8`: a user's text file, or one clear error naming the file, line and byte
  (a ``UnicodeDecodeError`` would surface as a traceback after the model loaded);
- `safetensors_problem` / `gguf_problem`: whether a weight file ends where its own
  header says its data ends. A truncated file (a partial copy, a full disk) otherwise
  fails deep inside a reader with ``incomplete metadata`` or ``unpack_from requires a
  buffer``; both checks read only the header, never the tensors;
- `write_manifest` / `manifest_problem`: every file of a directory with its size and
  sha256, written last through one rename. A directory whose manifest verifies holds
  exactly the bytes that were written when it was declared complete; a deleted,
  shortened or altered file is named;
- `write_json`: the one way tokengraft replaces a JSON file (run directories, the answers
  cache): a unique temporary sibling, then one rename, so a reader never sees half a file
  and two writers never share a temporary name.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from tokengraft.errors import TokengraftError

MANIFEST_FORMAT = "tokengraft-manifest-1"


# ----------------------------------------------------------------------------- text


def read_utf8(path: str | Path, what: str = "file") -> str:
    """The text of ``path``; bytes that are not UTF-8 are one error naming the line and the byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TokengraftError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                              "save it as UTF-8") from None


# ----------------------------------------------------------------------------- weight files


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be whole (truncated, damaged header), or None.

    The format is an 8-byte header length, a JSON header with every tensor's byte
    range, then the data: the file must end exactly where the last range ends.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is truncated ({size} bytes)"
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_len > size:
            return f"{path.name} is truncated ({size:,} bytes, shorter than its {header_len:,}-byte header)"
        try:
            header = json.loads(handle.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return f"{path.name} has a damaged header"
    expected = 8 + header_len + end
    if size < expected:
        return f"{path.name} is truncated ({size:,} bytes; its header describes {expected:,})"
    if size > expected:
        return f"{path.name} is damaged ({size:,} bytes; its header describes {expected:,})"
    return None


class _Short(Exception):
    """The GGUF file ends in the middle of its header."""


class _Header:
    """Sequential reads of a GGUF header; a read past the end of the file raises `_Short`."""

    # Metadata value types (gguf.GGUFValueType) of fixed size; 8 is a string, 9 an array.
    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, handle: Any, size: int) -> None:
        self.handle, self.size = handle, size

    def bytes(self, n: int) -> bytes:
        if n > self.size - self.handle.tell():  # also guards a damaged length against a huge allocation
            raise _Short
        return self.handle.read(n)

    def number(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.bytes(struct.calcsize(fmt)))[0]

    def value(self, kind: int) -> Any:
        if kind in self.SCALARS:
            return self.number(self.SCALARS[kind])
        if kind == 8:
            return self.bytes(self.number("<Q"))
        if kind == 9:
            item, count = self.number("<I"), self.number("<Q")
            if count > self.size:  # every item takes at least one byte
                raise _Short
            for _ in range(count):
                self.value(item)
            return None
        raise ValueError(f"unknown metadata type {kind}")


def gguf_problem(path: str | Path) -> str | None:
    """Why a GGUF file cannot be whole (truncated, not GGUF), or None: its header is parsed, no tensor is read.

    Header: magic, version, tensor and key counts, the key/value metadata, then one
    record per tensor (name, shape, type, offset into the aligned data section).
    """
    from gguf.constants import GGML_QUANT_SIZES  # numpy-backed: not paid for by every CLI start

    path = Path(path)
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            header = _Header(handle, size)
            if handle.read(4) != b"GGUF":
                return f"{path.name} is not a GGUF file (no GGUF magic)"
            version, n_tensors, n_keys = header.number("<I"), header.number("<Q"), header.number("<Q")
            if version < 2:
                return None  # the first layout: left to the reader
            alignment = 32
            for _ in range(n_keys):
                key = header.value(8)
                value = header.value(header.number("<I"))
                if key == b"general.alignment" and isinstance(value, int):
                    alignment = value
            end = 0
            for _ in range(n_tensors):
                header.value(8)  # the name
                dims = [header.number("<Q") for _ in range(header.number("<I"))]
                kind, offset = header.number("<I"), header.number("<Q")
                block, type_size = GGML_QUANT_SIZES[kind]
                count = 1
                for d in dims:
                    count *= d
                end = max(end, offset + count // block * type_size)
            start = -(-handle.tell() // alignment) * alignment
    except _Short:
        return f"{path.name} is truncated ({size:,} bytes; it ends inside its own header)"
    except (ValueError, KeyError):
        return f"{path.name} has a damaged header"
    if size < start + end:
        return f"{path.name} is truncated ({size:,} bytes; its header describes {start + end:,})"
    return None


# ----------------------------------------------------------------------------- manifests


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _listed_files(directory: Path, marker: str) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in (marker, marker + ".tmp"))


def write_manifest(directory: str | Path, marker: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``directory/marker``: ``fields`` plus every other file's size and sha256; returns the manifest.

    Written to a temporary sibling and renamed, so the marker either is whole or does not
    exist; it is the directory's last write, so its presence means everything before it finished.
    """
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _listed_files(directory, marker)}
    manifest = {"format": MANIFEST_FORMAT, **(fields or {}), "files": files}
    tmp = directory / (marker + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / marker)
    return manifest


def read_manifest(directory: str | Path, marker: str) -> dict[str, Any] | None:
    """The manifest, or None when the marker is missing, damaged or has no file list (an older marker)."""
    path = Path(directory) / marker
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def manifest_problem(directory: str | Path, marker: str) -> str | None:
    """Why ``directory`` is not what its manifest lists (first difference found), or None when it verifies."""
    directory = Path(directory)
    manifest = read_manifest(directory, marker)
    if manifest is None:
        return f"its {marker} marker has no file list (damaged, or written by an older tokengraft)"
    for name, entry in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size:,} bytes, {entry.get('size')} were written"
        if sha256_file(path) != entry.get("sha256"):
            return f"{name} differs from what was written (sha256 mismatch)"
    return None


# ----------------------------------------------------------------------------- atomic JSON


def write_json(path: str | Path, value: Any, *, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what a plain open() would give
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=indent)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
