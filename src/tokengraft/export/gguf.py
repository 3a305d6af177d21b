"""GGUF export: a run directory as one llama.cpp file, trained weights merged in.

``export_gguf(run_dir, out)`` loads the graft, merges it into a plain transformers
model (LoRA folded, token rows written into the resized matrices) and writes a
GGUF with gguf's own writer and tensor-name map. Two kinds of base are handled:

- a base that came from a GGUF file (the built-in SmolLM2, or a ``.gguf`` MODEL
  spec): its metadata is kept as written by whoever made it (names, licence,
  hyper-parameters, tokenizer model and pre-tokenizer, merges) and only the
  vocabulary is extended with the new tokens;
- a Hugging Face directory: metadata is built from ``config.json`` and the run's
  ``tokenizer.json`` (byte-level BPE -> tokenizer model ``gpt2``).

The families and their tensor conventions (llama's q/k permutation, Gemma 3's
``1 + w`` norms and raw embedding) are in ``export.gguf_arch``. A base GGUF's
vocabulary is checked against the run's tokenizer token by token; the only
spelling allowed to differ is whitespace: SentencePiece files (Gemma) store their
user-defined whitespace tokens with real spaces (``"  "``), which transformers
spells ``"▁▁"``, and the file's spelling is kept.

New tokens keep the type the exported tokenizer gives them: special ones
become CONTROL (llama.cpp matches them only when asked to parse specials and
hides them when detokenizing without ``special``), normal added ones (style
tokens, lexicon words) USER_DEFINED (always matched as one piece, printed as text).
The task's answer tokens (``<PASS>``) are written as normal added tokens unless
``visible_tokens=[]`` (export/visible.py), so llama.cpp's server and
llama-cpp-python return ``<PASS>`` in the text instead of dropping it.

A calibrated ``<PASS>`` logit bias (``pass_bias`` in graft.json) is folded into
the ``<PASS>`` row before writing (``export.fold_pass_bias``): llama's and gemma3's
graphs in llama.cpp have no output bias tensor, and no fixed vector ``u`` has ``h . u``
constant over all RMS-normalised hidden states ``h``, so the row moves by the
least-squares ``u`` that gives the bias at the first answer position, where the
decision is made; the shift it realises on held-out prompts is measured and
stored (``tokengraft.pass_bias_fold_*``). Plain greedy decoding in llama.cpp then
needs no ``--logit-bias`` (see docs/llama_cpp.md).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.export.gguf_arch import arch_name, layout_for, model_tensors, permute_qk, write_hparams
from tokengraft.export.visible import resolve_visible_tokens, show_tokens

__all__ = ["TENSOR_TYPES", "Vocab", "detect_pre_tokenizer", "export_gguf", "permute_qk", "vocab_from_gguf",
           "vocab_from_tokenizer_json"]

TENSOR_TYPES = ("f32", "f16", "q8_0")

# Keys rewritten from the run (never copied from a base GGUF).
_REWRITTEN_KEYS = {
    "general.architecture", "general.file_type", "general.quantization_version",
    "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
    "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
}

# tokenizer.json pre-tokenizers whose llama.cpp name we can recognise structurally.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class Vocab:
    """Everything llama.cpp needs to tokenize like the run's tokenizer."""

    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    model: str = "gpt2"
    pre: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other tokenizer.* keys, copied as they are


# ----------------------------------------------------------------------------- vocabulary


def _gguf_base_path(spec: str) -> Path | None:
    """The GGUF file a base came from, if any (a ``.gguf`` spec or a converted cache with ``source.json``)."""
    from tokengraft.models import resolve_model_dir

    if spec.endswith(".gguf"):
        return Path(spec).expanduser()
    directory = resolve_model_dir(spec)
    source = directory / "source.json" if directory is not None else None
    if source is None or not source.is_file():
        return None
    name = json.loads(source.read_text()).get("gguf")
    path = directory / name if name else None
    if path is None or not path.is_file():
        raise TokengraftError(f"{directory} was converted from {name!r}, which is no longer beside it; "
                              "delete the cached directory so tokengraft fetches and converts it again")
    return path


def _added_type(tokenizer: Any, token_id: int) -> int:
    import gguf

    added = tokenizer.added_tokens_decoder.get(token_id)
    if added is None:
        return gguf.TokenType.NORMAL
    return gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED


def _token_strings(tokenizer: Any, start: int, stop: int) -> list[str]:
    """Token texts for ids ``start..stop-1``; rows past the tokenizer are padding, ``[PAD<id>]``."""
    size = len(tokenizer)
    known = tokenizer.convert_ids_to_tokens(list(range(start, min(stop, size))))
    return list(known) + [f"[PAD{i}]" for i in range(max(start, size), stop)]


def spelling(token: str) -> str:
    """A token as SentencePiece spells it: a GGUF keeps whitespace tokens' real spaces, transformers writes ``▁``."""
    return token.replace(" ", "\u2581")


def vocab_from_gguf(reader: Any, tokenizer: Any, rows: int, graft_tokens: list[str]) -> Vocab:
    """The base GGUF's vocabulary, extended to ``rows`` entries with the run's new tokens."""
    import gguf

    fields = reader.fields
    base_tokens = list(fields["tokenizer.ggml.tokens"].contents())
    n = len(base_tokens)
    mine = _token_strings(tokenizer, 0, min(n, len(tokenizer)))
    if [spelling(t) for t in mine] != [spelling(t) for t in base_tokens[: len(mine)]]:
        bad = next(i for i, (a, b) in enumerate(zip(mine, base_tokens)) if spelling(a) != spelling(b))
        raise TokengraftError(f"the run's tokenizer does not match its base GGUF vocabulary (id {bad}: "
                              f"{mine[bad]!r} vs {base_tokens[bad]!r}); was the run trained on this base?")
    if rows < n:
        raise TokengraftError(f"the merged model has {rows} embedding rows but its base GGUF has {n} tokens")
    types = [int(t) for t in fields["tokenizer.ggml.token_type"].contents()]
    tokens = base_tokens + _token_strings(tokenizer, n, rows)
    types += [_added_type(tokenizer, i) if i < len(tokenizer) else gguf.TokenType.UNUSED for i in range(n, rows)]
    vocab_ids = tokenizer.get_vocab()
    for token in graft_tokens:  # an existing token re-registered as special becomes a control token
        i = vocab_ids.get(token)
        if i is not None and i < n and _added_type(tokenizer, i) == gguf.TokenType.CONTROL:
            types[i] = gguf.TokenType.CONTROL
    scores = None
    if "tokenizer.ggml.scores" in fields:
        scores = [float(s) for s in fields["tokenizer.ggml.scores"].contents()] + [-1000.0] * (rows - n)
    return Vocab(tokens=tokens, types=types, scores=scores, model=str(fields["tokenizer.ggml.model"].contents()))


def _steps(node: dict | None) -> list[dict]:
    if not node:
        return []
    return list(node.get("pretokenizers") or node.get("decoders") or []) if node.get("type") == "Sequence" else [node]


def detect_pre_tokenizer(pre: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, for the shapes we recognise."""
    steps = _steps(pre)
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT \
            and not steps[1].get("use_regex", True):
        return "llama-bpe"
    return None


def vocab_from_tokenizer_json(tokenizer: Any, rows: int) -> Vocab:
    """A ``gpt2`` (byte-level BPE) vocabulary built from the run's tokenizer."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise TokengraftError("GGUF export needs a fast tokenizer (tokenizer.json); this run's tokenizer has none")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    byte_level = any(s.get("type") == "ByteLevel" for s in _steps(spec.get("pre_tokenizer")) + _steps(spec.get("decoder")))
    if model.get("type") != "BPE" or not byte_level:
        kind = model.get("type", "?") + (" with byte fallback (SentencePiece-style)" if model.get("byte_fallback") else "")
        raise TokengraftError(f"GGUF export from a Hugging Face directory supports byte-level BPE tokenizers; "
                              f"this one is {kind}; export --merged and convert that checkpoint with llama.cpp's tools")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = detect_pre_tokenizer(spec.get("pre_tokenizer"))
    if pre is None:
        print("tokengraft: warning: unrecognised pre-tokenizer in tokenizer.json; the GGUF says 'default' and "
              "llama.cpp may split text differently from transformers", file=sys.stderr)
        pre = "default"
    tokens = _token_strings(tokenizer, 0, rows)
    types = [_added_type(tokenizer, i) if i < len(tokenizer) else gguf.TokenType.UNUSED for i in range(rows)]
    ids = tokenizer("a")["input_ids"]
    extra = {"add_bos_token": bool(ids) and ids[0] == tokenizer.bos_token_id,
             "add_eos_token": bool(ids) and ids[-1] == tokenizer.eos_token_id}
    return Vocab(tokens=tokens, types=types, merges=merges, model="gpt2", pre=pre, extra=extra)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The id that closes an assistant turn in the chat template (``<|im_end|>``), when it is one token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = ChatFormat(tokenizer).end_of_turn
    ids = tokenizer.convert_tokens_to_ids([text]) if text else []
    return ids[0] if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id else None


# ----------------------------------------------------------------------------- metadata


def copy_gguf_metadata(writer: Any, reader: Any, arch: str) -> None:
    """Every key of the base GGUF except those rewritten from the run."""
    import gguf

    skip = _REWRITTEN_KEYS | {f"{arch}.vocab_size"}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        vtype = fld.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, list(fld.contents()), vtype, sub_type=fld.types[-1])
        else:
            writer.add_key_value(key, fld.contents(), vtype)


# ----------------------------------------------------------------------------- tensors


def _tensor_payload(data: np.ndarray, tensor_type: str) -> tuple[np.ndarray, Any]:
    """(array, raw_dtype) for the writer; norms and other 1-D tensors stay f32."""
    import gguf

    data = data.astype(np.float32)
    if data.ndim == 1 or tensor_type == "f32":
        return data, None
    if tensor_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        return quantized, gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None  # f16, or a q8_0 tensor whose rows are not whole blocks


# ----------------------------------------------------------------------------- export


def export_gguf(run_dir: str | Path, out_path: str | Path, *, tensor_type: str = "f16", device: str = "cpu",
                visible_tokens: list[str] | None = None) -> Path:
    """Write ``out_path`` (a .gguf) from a run directory; returns the path.

    ``tensor_type`` is ``f32``, ``f16`` or ``q8_0`` for 2-D weights; 1-D tensors
    (norms, biases) are always f32. The file is written beside the target and
    renamed into place, so an interrupted export leaves no half-written file.
    ``visible_tokens`` as in `export_merged` (None: the task's answer tokens become USER_DEFINED).
    """
    import gguf

    from tokengraft.export.pass_bias import fold_run_pass_bias
    from tokengraft.rundir import load_graft, read_graft_meta
    from tokengraft.export.merged import merge_graft
    from tokengraft.models import load_config

    if tensor_type not in TENSOR_TYPES:
        raise TokengraftError(f"GGUF tensor type {tensor_type!r} is not supported; use one of {', '.join(TENSOR_TYPES)}")
    out = Path(out_path)
    if out.is_dir():
        raise TokengraftError(f"{out} is a directory; give the GGUF file name, e.g. {out / 'model.gguf'}")
    if not out.parent.is_dir():
        raise TokengraftError(f"the directory {out.parent} does not exist; create it first")
    if out.exists():
        raise TokengraftError(f"{out} exists; choose a new file name or delete it first")
    meta = read_graft_meta(run_dir)
    layout = layout_for(getattr(load_config(meta["base_model"]), "model_type", "?"))
    arch = arch_name(layout)
    base_gguf = _gguf_base_path(meta["base_model"])
    visible = resolve_visible_tokens(run_dir, visible_tokens)
    reader = gguf.GGUFReader(str(base_gguf)) if base_gguf is not None else None
    if reader is not None and str(reader.fields["general.architecture"].contents()) != arch:
        raise TokengraftError(f"the base GGUF {base_gguf} is a {reader.fields['general.architecture'].contents()} "
                              f"file, but the model is exported as {arch}")

    g = load_graft(run_dir, device=device, dtype="float32")
    tokenizer = show_tokens(g.tokenizer, visible)
    model = merge_graft(g)
    fold = fold_run_pass_bias(run_dir, model, tokenizer)
    rows = int(model.get_input_embeddings().weight.shape[0])
    graft_tokens = [t["token"] for t in meta.get("tokens", [])]

    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        if reader is not None:
            copy_gguf_metadata(writer, reader, arch)
            vocab = vocab_from_gguf(reader, tokenizer, rows, graft_tokens)
            rope_freqs = None
        else:
            writer.add_name(Path(str(meta["base_model"])).name + "-tokengraft")
            rope_freqs = write_hparams(writer, model.config, layout)
            vocab = vocab_from_tokenizer_json(tokenizer, rows)
            writer.add_tokenizer_model(vocab.model)
            writer.add_tokenizer_pre(vocab.pre)
            writer.add_token_merges(vocab.merges)
            writer.add_add_bos_token(vocab.extra["add_bos_token"])
            writer.add_add_eos_token(vocab.extra["add_eos_token"])
        writer.add_vocab_size(rows)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        if vocab.scores is not None:
            writer.add_token_scores(vocab.scores)
        _write_special_ids(writer, tokenizer)
        template = getattr(tokenizer, "chat_template", None)
        if template:
            writer.add_chat_template(template if isinstance(template, str)
                                     else [{"name": k, "template": v} for k, v in template.items()])
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[tensor_type]
        writer.add_file_type(int(file_type))
        if tensor_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_tokengraft_keys(writer, meta, tokenizer, fold, visible)

        for name, data in model_tensors(model, layout):
            payload, raw_dtype = _tensor_payload(data, tensor_type)
            writer.add_tensor(name, payload, raw_dtype=raw_dtype)
        if rope_freqs is not None:
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _write_special_ids(writer: Any, tokenizer: Any) -> None:
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(int(tokenizer.bos_token_id))
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(int(tokenizer.eos_token_id))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(int(tokenizer.unk_token_id))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(int(tokenizer.pad_token_id))
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        writer.add_eot_token_id(int(eot))


def _write_tokengraft_keys(writer: Any, meta: dict[str, Any], tokenizer: Any, fold: dict[str, Any] | None,
                           visible: list[str]) -> None:
    """Where the file came from, the tokens shown as text, and the <PASS> bias already folded into the weights."""
    from tokengraft import __version__

    writer.add_string("tokengraft.version", __version__)
    tokens = [t["token"] for t in meta.get("tokens", [])]
    if tokens:
        writer.add_array("tokengraft.tokens", tokens)
    if visible:
        writer.add_array("tokengraft.visible_tokens", visible)
    if fold:
        writer.add_float32("tokengraft.pass_bias", fold["bias"])
        writer.add_uint32("tokengraft.pass_token_id", fold["token_id"])
        writer.add_string("tokengraft.pass_bias_fold_method", fold["method"])
        for key in ("shift_mean", "shift_std", "shift_min", "shift_max"):
            if key in fold:
                writer.add_float32(f"tokengraft.pass_bias_fold_{key}", fold[key])
