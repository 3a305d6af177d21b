"""`tokengraft inspect` end to end through the CLI entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tiny import tiny_model, tiny_tokenizer
from tokengraft.cli.main import main

QWEN14B = dict(  # Qwen2.5-14B's published shape
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=5120, intermediate_size=13824,
    num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
    max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
    bos_token_id=151643, eos_token_id=151645, hidden_act="silu",
)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _saved(tmp_path: Path, family: str, **overrides) -> Path:
    out = tmp_path / family
    tiny_model(family, **overrides).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def test_config_only_14b_on_meta(tmp_path: Path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(QWEN14B))
    code, out, _ = _run(["inspect", str(tmp_path), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    for key in ("model_type", "num_blocks", "blocks", "input_embedding", "output_embedding", "tied_embeddings",
                "embedding_rows", "tokenizer_size", "padding_rows", "hidden_size", "attention", "mlp", "norms",
                "biases", "lora_targets", "parameters"):
        assert key in data, key
    assert data["model_type"] == "qwen2" and data["num_blocks"] == 48 and data["blocks"] == "model.layers"
    assert (data["input_embedding"], data["output_embedding"], data["tied_embeddings"]) == ("model.embed_tokens", "lm_head", False)
    assert data["embedding_rows"] == 152064 and data["tokenizer_size"] is None and data["padding_rows"] == 0
    assert data["hidden_size"] == 5120
    att = data["attention"]
    assert (att["kind"], att["num_heads"], att["num_kv_heads"]) == ("GQA", 40, 8)
    assert (att["q"], att["k"], att["v"], att["o"], att["qkv"]) == (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", None)
    assert data["mlp"] == {"module": "mlp", "up": "mlp.up_proj", "gate": "mlp.gate_proj", "down": "mlp.down_proj"}
    assert data["biases"]["q"] and data["biases"]["k"] and data["biases"]["v"] and not data["biases"]["o"]
    assert data["lora_targets"]["attention"] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    # Parameter counts from the config's arithmetic, not from the tool's own output.
    h, i, kv, v, n = 5120, 13824, 8 * 128, 152064, 48
    per_block = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert data["parameters"]["embedding"] == v * h and data["parameters"]["head"] == v * h
    assert data["parameters"]["total"] == 2 * v * h + n * per_block + h
    assert data["freezing"]["top_blocks"] == [44, 45, 46, 47]


def test_config_only_model_is_built_on_meta(tmp_path: Path):
    """The inspect loader never materialises weights: every parameter lives on the meta device."""
    from tokengraft.models import load_meta

    (tmp_path / "config.json").write_text(json.dumps(QWEN14B))
    model, tokenizer, why = load_meta(str(tmp_path), trust_remote_code=False)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert tokenizer is None and "tokenizer" in why


def test_padding_rows_and_human_report(tmp_path: Path, capsys):
    directory = _saved(tmp_path, "qwen2", vocab_size=300)
    code, out, _ = _run(["inspect", str(directory), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and (data["embedding_rows"], data["tokenizer_size"], data["padding_rows"]) == (300, 256, 44)
    code, out, _ = _run(["inspect", str(directory), "--top-k", "1"], capsys)
    assert code == 0
    assert "padding rows 44" in out
    assert "model.layers.[i].self_attn.q_proj" in out and "GQA" in out
    assert "model.layers.1.self_attn.q_proj.{weight,bias}" in out  # top-1 block, q has a bias in Qwen2
    assert "model.layers.1.self_attn.o_proj.weight" in out
    assert "BitFit unfreezes" in out


def test_report_says_bitfit_selects_nothing_and_tying(tmp_path: Path, capsys):
    code, out, _ = _run(["inspect", str(_saved(tmp_path, "llama"))], capsys)
    assert code == 0
    assert "BitFit would select NOTHING" in out
    assert "TIED" in out


def test_gpt2_report_distinguishes_the_two_c_proj(tmp_path: Path, capsys):
    code, out, _ = _run(["inspect", str(_saved(tmp_path, "gpt2")), "--json"], capsys)
    data = json.loads(out)
    assert data["attention"]["o"] == "attn.c_proj" and data["mlp"]["down"] == "mlp.c_proj"
    assert data["position_embedding"] == "transformer.wpe" and data["tied_embeddings"] is True
    assert data["freezing"]["bitfit_parameters"] > 0


def _bad_inputs(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "no_config").mkdir()
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "random.gguf").write_bytes(os.urandom(512))
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    return {
        "missing path": [str(tmp_path / "does_not_exist")],
        "dir without config": [str(tmp_path / "no_config")],
        "not a causal LM": [str(tmp_path / "t5")],
        "random gguf": [str(tmp_path / "random.gguf")],
        "truncated gguf": [str(tmp_path / "truncated.gguf")],
        "unknown alias": ["no-such-model-alias"],
        "bad top-k": [str(tmp_path / "t5"), "--top-k", "0"],
    }


@pytest.mark.parametrize("case", ["missing path", "dir without config", "not a causal LM", "random gguf",
                                  "truncated gguf", "unknown alias", "bad top-k"])
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys):
    argv = _bad_inputs(tmp_path)[case]
    code, out, err = _run(["inspect", *argv], capsys)
    assert code == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tokengraft: error: "), err


@pytest.mark.network
def test_builtin_model_inspect(capsys):
    code, out, _ = _run(["inspect", "smollm2-135m-instruct", "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["model_type"] == "llama" and data["num_blocks"] == 30 and data["tied_embeddings"] is True
    assert data["embedding_rows"] == 49152 and data["tokenizer_size"] == 49152 and data["padding_rows"] == 0
    assert data["attention"]["kind"] == "GQA" and (data["attention"]["num_heads"], data["attention"]["num_kv_heads"]) == (9, 3)
