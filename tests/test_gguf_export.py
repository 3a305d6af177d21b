"""GGUF export on tiny llama grafts: metadata, vocabulary, token types, exact weights, q/k layout.

The q/k check un-permutes what we wrote with transformers' own GGUF loader logic
(``LlamaTensorProcessor``), so a wrong permutation fails here, not in llama.cpp.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from tiny import tiny_model, tiny_tokenizer  # noqa: E402
from tokengraft.errors import TokengraftError
from tokengraft.rundir import load_graft, save_graft
from tokengraft.export.merged import merge_graft
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.export.gguf import detect_pre_tokenizer, export_gguf, permute_qk

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE (GPT-2 pre-tokenizer) over the 256 byte symbols plus a few merges."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pieces = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + [a + b for a, b in MERGES]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def _train_two_steps(g) -> None:
    """Two optimiser steps on a fixed batch so rows and LoRA leave their initial values."""
    params = [p for p in g.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    ids = g.tokenizer(["<|im_start|>user\nthe tin<|im_end|>\n<|im_start|>assistant\n<PASS><|im_end|>"] * 2,
                      return_tensors="pt")["input_ids"]
    g.model.train()
    for _ in range(2):
        loss = g.model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.model.eval()


def make_run(tmp_path: Path, *, family: str = "llama", tokenizer=None, tie: bool = True) -> Path:
    """Base saved to disk (with one normal added token), then a graft: <PASS> special + that token trained."""
    tok = tokenizer or byte_level_tokenizer()
    tok.add_tokens(["<STYLE_TERSE>"])  # a normal added token, present in the base
    overrides = {"vocab_size": len(tok), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if family == "llama":
        overrides["tie_word_embeddings"] = tie
    model = tiny_model(family, **overrides)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    g = graft(model, tok, TokenSettings(add=["<PASS>"], special=True, train_existing=["<STYLE_TERSE>"]),
              [{"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}], verbose=False)
    if family == "llama":
        _train_two_steps(g)
    run = tmp_path / "run"
    save_graft(g, run, base_spec=str(base))
    return run


def _merged(run: Path):
    g = load_graft(run, device="cpu")
    return merge_graft(g), g.tokenizer


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    out = {}
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type)
        else:
            out[t.name] = np.asarray(t.data, dtype=np.float32)
    return out


@pytest.fixture(scope="module")
def tied_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def tied_f32(tied_run: Path) -> Path:
    return export_gguf(tied_run, tied_run.parent / "model-f32.gguf", tensor_type="f32")


def test_metadata_vocab_and_token_types(tied_run: Path, tied_f32: Path) -> None:
    model, tok = _merged(tied_run)
    reader = gguf.GGUFReader(str(tied_f32))
    f = reader.fields
    rows = model.get_input_embeddings().weight.shape[0]
    pass_id, style_id = tok.convert_tokens_to_ids(["<PASS>", "<STYLE_TERSE>"])
    assert pass_id == rows - 1  # the new token is the last row
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.vocab_size"].contents() == rows
    assert f["llama.block_count"].contents() == model.config.num_hidden_layers
    assert f["llama.attention.head_count_kv"].contents() == model.config.num_key_value_heads
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(types) == rows
    assert tokens[pass_id] == "<PASS>" and tokens[style_id] == "<STYLE_TERSE>"
    assert tokens == tok.convert_ids_to_tokens(list(range(rows)))
    assert types[pass_id] == gguf.TokenType.CONTROL
    assert types[style_id] == gguf.TokenType.USER_DEFINED
    assert types[0] == types[2] == gguf.TokenType.CONTROL  # the base's special tokens
    assert types[10] == gguf.TokenType.NORMAL
    assert f["tokenizer.ggml.merges"].contents() == [f"{a} {b}" for a, b in MERGES]
    assert f["tokenizer.chat_template"].contents() == CHATML
    assert f["tokenizer.ggml.bos_token_id"].contents() == tok.bos_token_id == 1
    assert f["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id == 2
    assert f["tokenizer.ggml.padding_token_id"].contents() == 0
    assert f["tokenizer.ggml.eot_token_id"].contents() == 2  # <|im_end|> closes a turn in the template
    assert f["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert f["tokengraft.tokens"].contents() == ["<PASS>"]


def test_tensor_names_shapes_and_exact_weights(tied_run: Path, tied_f32: Path) -> None:
    """Every weight is the merged HF weight (q/k after transformers' un-permutation), bit for bit in f32."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    model, _ = _merged(tied_run)
    cfg = model.config
    reader = gguf.GGUFReader(str(tied_f32))
    written = _tensors(reader)
    n = cfg.num_hidden_layers
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(n)
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(written) == expected  # tied: no output.weight, llama.cpp falls back to token_embd
    processor = LlamaTensorProcessor(config={"num_attention_heads": cfg.num_attention_heads,
                                             "num_key_value_heads": cfg.num_key_value_heads})
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n)
    state = model.state_dict()
    for hf_name, tensor in state.items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name == "output.weight":
            continue
        data = written[name]
        assert data.shape == tuple(tensor.shape), name
        back = processor.process(data, name).weights
        assert np.array_equal(back, tensor.float().numpy()), name
        if ".attn_q." in name or ".attn_k." in name:
            assert not np.array_equal(data, tensor.float().numpy()), f"{name} was not permuted"
    # the trained rows and the merged LoRA really are in the file
    base = tiny_model("llama", vocab_size=264, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base_q = base.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.allclose(processor.process(written["blk.0.attn_q.weight"], "blk.0.attn_q.weight").weights, base_q)


def test_permute_qk_inverts_transformers_loader() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for heads, kv, head_dim in ((4, 2, 16), (9, 3, 64), (8, 8, 8)):
        q = rng.standard_normal((heads * head_dim, 32)).astype(np.float32)
        k = rng.standard_normal((kv * head_dim, 32)).astype(np.float32)
        bias = rng.standard_normal(heads * head_dim).astype(np.float32)
        proc = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv})
        assert np.array_equal(proc.process(permute_qk(q, heads), "blk.0.attn_q.weight").weights, q)
        assert np.array_equal(proc.process(permute_qk(k, kv), "blk.0.attn_k.weight").weights, k)
        assert np.array_equal(proc.process(permute_qk(bias, heads), "blk.0.attn_q.bias").weights, bias)
    # one head, head_dim 4: HF halves [x0 x1 | y0 y1] become pairs (x0 y0)(x1 y1)
    w = np.arange(4, dtype=np.float32)[:, None]
    assert permute_qk(w, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]


def test_transformers_reads_the_gguf_back_with_same_logits(tied_run: Path, tied_f32: Path) -> None:
    """transformers' own GGUF loader rebuilds the merged model from our file: same logits."""
    from transformers import AutoModelForCausalLM

    model, tok = _merged(tied_run)
    loaded = AutoModelForCausalLM.from_pretrained(str(tied_f32.parent), gguf_file=tied_f32.name, dtype=torch.float32)
    ids = tok("<|im_start|>user\nthe tin<|im_end|>\n<PASS>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = model(ids).logits, loaded(ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_f16_and_q8_0_types_and_error(tied_run: Path) -> None:
    model, _ = _merged(tied_run)
    embed = model.get_input_embeddings().weight.detach().numpy()
    for kind, qtype, ftype, tol in (("f16", gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16, 1e-3),
                                    ("q8_0", gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, 2e-2)):
        out = export_gguf(tied_run, tied_run.parent / f"model-{kind}.gguf", tensor_type=kind)
        reader = gguf.GGUFReader(str(out))
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types["token_embd.weight"] == qtype and types["blk.0.ffn_up.weight"] == qtype
        assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
        assert reader.fields["general.file_type"].contents() == ftype
        got = _tensors(reader)["token_embd.weight"]
        assert got.shape == embed.shape and np.abs(got - embed).max() < tol * np.abs(embed).max() + 1e-4
    with pytest.raises(TokengraftError, match="q4_k"):
        export_gguf(tied_run, tied_run.parent / "x.gguf", tensor_type="q4_k")
    before = (tied_run.parent / "model-f16.gguf").stat().st_mtime_ns
    with pytest.raises(TokengraftError, match="exists"):
        export_gguf(tied_run, tied_run.parent / "model-f16.gguf", tensor_type="f16")
    assert (tied_run.parent / "model-f16.gguf").stat().st_mtime_ns == before


def test_visible_pass_is_user_defined(tied_run: Path, tmp_path: Path) -> None:
    """--visible-tokens <PASS>: a USER_DEFINED token, which llama.cpp prints as text (CONTROL it hides)."""
    out = export_gguf(tied_run, tmp_path / "shown.gguf", tensor_type="f32", visible_tokens=["<PASS>"])
    f = gguf.GGUFReader(str(out)).fields
    tok = load_graft(tied_run, device="cpu").tokenizer
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    assert f["tokenizer.ggml.token_type"].contents()[pass_id] == gguf.TokenType.USER_DEFINED
    assert f["tokenizer.ggml.tokens"].contents()[pass_id] == "<PASS>"
    assert f["tokengraft.visible_tokens"].contents() == ["<PASS>"]
    assert f["tokenizer.chat_template"].contents() == CHATML
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'tokengraft[gguf]')")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, n_threads=1)
    assert llm.detokenize([pass_id]) == b"<PASS>"  # shown without asking for specials
    assert llm.tokenize(b"<PASS>", add_bos=False, special=False) == [pass_id]  # still one token


def test_untied_writes_output_tensor(tmp_path: Path) -> None:
    run = make_run(tmp_path, tie=False)
    out = export_gguf(run, tmp_path / "untied.gguf", tensor_type="f32")
    model, tok = _merged(run)
    written = _tensors(gguf.GGUFReader(str(out)))
    head = model.get_output_embeddings().weight.detach().numpy()
    assert np.array_equal(written["output.weight"], head)
    assert not np.array_equal(written["output.weight"], written["token_embd.weight"])
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    assert np.array_equal(written["output.weight"][pass_id], head[pass_id])


def test_not_llama_family_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, family="gpt2")
    with pytest.raises(TokengraftError, match="GGUF export supports gemma3_text, llama, mistral models; gpt2 is not supported yet"):
        export_gguf(run, tmp_path / "gpt2.gguf")
    assert not (tmp_path / "gpt2.gguf").exists()


def test_non_byte_level_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, tokenizer=tiny_tokenizer(vocab_size=256))
    with pytest.raises(TokengraftError, match="byte-level BPE"):
        export_gguf(run, tmp_path / "chars.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))


def test_llama_cpp_reads_the_tiny_export(tied_run: Path, tied_f32: Path) -> None:
    """llama.cpp itself: token types behave as intended and logits match transformers (f32)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'tokengraft[gguf]')")
    model, tok = _merged(tied_run)
    llm = llama_cpp.Llama(model_path=str(tied_f32), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    pass_id, style_id = tok.convert_tokens_to_ids(["<PASS>", "<STYLE_TERSE>"])
    assert llm.n_vocab() == model.get_input_embeddings().weight.shape[0]
    assert llm.tokenize(b"<PASS>", add_bos=False, special=True) == [pass_id]
    assert pass_id not in llm.tokenize(b"<PASS>", add_bos=False, special=False)  # CONTROL: only when asked
    assert llm.tokenize(b"<STYLE_TERSE>", add_bos=False, special=False) == [style_id]  # USER_DEFINED: always
    assert llm.detokenize([pass_id]) == b"" and llm.detokenize([pass_id], special=True) == b"<PASS>"
    assert llm.detokenize([style_id]) == b"<STYLE_TERSE>"
    text = tok.apply_chat_template([{"role": "user", "content": "the tin in the"}], add_generation_prompt=True,
                                   tokenize=False) + "<STYLE_TERSE><PASS>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_detect_pre_tokenizer_shapes() -> None:
    assert detect_pre_tokenizer({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    assert detect_pre_tokenizer({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]}) == "smollm"
    assert detect_pre_tokenizer({"type": "Metaspace"}) is None
    assert detect_pre_tokenizer(None) is None


# ----------------------------------------------------------------------------- llama.cpp proof (slow)
#
# The built-in model, a short <PASS> run, llama-cpp-python (``pip install tokengraft[gguf]``).
# ``TOKENGRAFT_PASS_RUN=/path/to/run`` reuses a finished run instead of training 60 steps here.
# The same measurement as a command: ``python tests/test_gguf_export.py RUN_DIR [N_PER_KIND]``.


def _test_rows(run: Path, per_kind: int) -> tuple[list[str], list[str]]:
    import json

    rows = [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines() if line.strip()]
    unanswerable = [r["prompt"] for r in rows if r.get("answerable") is False][:per_kind]
    answerable = [r["prompt"] for r in rows if r.get("answerable") is True][:per_kind]
    return unanswerable, answerable


def _hf_greedy(model, ids: list[int], steps: int, stop: set[int], bias: dict[int, float]) -> list[int]:
    out, past, inputs = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            result = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past, logits = result.past_key_values, result.logits[0, -1].clone()
            for i, b in bias.items():
                logits[i] += b
            token = int(logits.argmax())
            out.append(token)
            if token in stop:
                break
            inputs = torch.tensor([[token]])
    return out


def _llama_greedy(llm, ids: list[int], steps: int, stop: set[int], bias: dict[int, float]) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        for i, b in bias.items():
            logits[i] += b
        token = int(logits.argmax())
        out.append(token)
        if token in stop:
            break
        llm.eval([token])
    return out


def measure_llama_cpp(run: Path, gguf_path: Path, per_kind: int = 20, steps: int = 12) -> dict:
    """Load ``gguf_path`` in llama.cpp and compare it with the merged transformers model of ``run``.

    Both sides carry the run's calibrated ``pass_bias`` folded into the <PASS> row
    (``export.fold_run_pass_bias``), so greedy decoding applies no bias by hand.
    """
    from llama_cpp import Llama

    from tokengraft.export.pass_bias import fold_run_pass_bias

    model, tok = _merged(run)
    fold = fold_run_pass_bias(run, model, tok)
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    pass_bias = fold["bias"] if fold else None
    bias: dict[int, float] = {}
    unanswerable, answerable = _test_rows(run, per_kind)
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    llm = Llama(model_path=str(gguf_path), n_ctx=512, logits_all=True, verbose=False, seed=0, n_threads=2)
    result = {"gguf": gguf_path.name, "pass_id": pass_id, "pass_bias": pass_bias,
              "pass_tokenized": llm.tokenize(b"<PASS>", add_bos=False, special=True),
              "pass_text_plain": llm.tokenize(b"<PASS>", add_bos=False, special=False)}
    same_ids = top1_last = top1_all = positions = 0
    greedy_same = 0
    llama_first: dict[str, list[int]] = {"unanswerable": [], "answerable": []}
    hf_first: dict[str, list[int]] = {"unanswerable": [], "answerable": []}
    samples = []
    for kind, prompts in (("unanswerable", unanswerable), ("answerable", answerable)):
        for prompt in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
            hf_ids = tok(text, add_special_tokens=False)["input_ids"]
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            same_ids += ll_ids == hf_ids
            with torch.no_grad():
                hf_logits = model(torch.tensor([hf_ids])).logits[0].numpy()
            llm.reset()
            llm.eval(hf_ids)
            ll_logits = np.array(llm.scores[: len(hf_ids)], dtype=np.float32)
            agree = ll_logits.argmax(-1) == hf_logits.argmax(-1)
            top1_all += int(agree.sum())
            positions += len(hf_ids)
            top1_last += bool(agree[-1])
            ll_out = _llama_greedy(llm, ll_ids, steps, stop, bias)
            hf_out = _hf_greedy(model, hf_ids, steps, stop, bias)
            greedy_same += ll_out == hf_out
            llama_first[kind].append(ll_out[0])
            hf_first[kind].append(hf_out[0])
            if len(samples) < 4 or kind == "answerable" and len(samples) < 8:
                samples.append({"kind": kind, "prompt": prompt,
                                "llama_cpp": llm.detokenize(ll_out, special=True).decode("utf-8", "replace")})
    n = len(unanswerable) + len(answerable)
    result.update({
        "prompts": n, "tokenization_agreement": same_ids / n,
        "top1_agreement_last_position": top1_last / n, "top1_agreement_all_positions": top1_all / positions,
        "greedy_sequence_agreement": greedy_same / n,
        "llama_cpp_pass_rate_unanswerable": float(np.mean([t == pass_id for t in llama_first["unanswerable"]])),
        "llama_cpp_pass_rate_answerable": float(np.mean([t == pass_id for t in llama_first["answerable"]])),
        "transformers_pass_rate_unanswerable": float(np.mean([t == pass_id for t in hf_first["unanswerable"]])),
        "transformers_pass_rate_answerable": float(np.mean([t == pass_id for t in hf_first["answerable"]])),
        "samples": samples,
    })
    return result


def _pass_run(tmp_path: Path) -> Path:
    reuse = os.environ.get("TOKENGRAFT_PASS_RUN")
    if reuse:
        return Path(reuse)
    from tokengraft.config import load_recipe
    from tokengraft.cli.demo import recipe_path
    from tokengraft.api import train

    recipe = load_recipe(recipe_path("pass"), ["train.max_steps=60", "train.save_steps=0", "train.eval_steps=0"])
    run = tmp_path / "pass"
    train(recipe, run, quiet=True)
    return run


@pytest.mark.network
@pytest.mark.slow
def test_llama_cpp_runs_the_pass_graft(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="pip install 'tokengraft[gguf]' (llama-cpp-python) for this proof")
    run = _pass_run(tmp_path)
    for kind in ("f32", "f16", "q8_0"):
        out = export_gguf(run, tmp_path / f"pass-{kind}.gguf", tensor_type=kind)
        m = measure_llama_cpp(run, out, per_kind=10, steps=8)
        print(kind, {k: v for k, v in m.items() if k != "samples"})
        assert m["pass_tokenized"] == [m["pass_id"]]  # one token, our id
        # task pass: the export writes <PASS> as a normal (USER_DEFINED) token, so servers print it and
        # plain text parses into it, one token (export --keep-special would make it CONTROL)
        assert m["pass_text_plain"] == [m["pass_id"]]
        assert m["tokenization_agreement"] == 1.0
        if kind == "f32":  # llama.cpp decides exactly as transformers does
            assert m["top1_agreement_last_position"] == 1.0
            assert m["top1_agreement_all_positions"] >= 0.98
            assert m["llama_cpp_pass_rate_unanswerable"] == m["transformers_pass_rate_unanswerable"]
            assert m["llama_cpp_pass_rate_answerable"] == m["transformers_pass_rate_answerable"]
        else:  # f16 / q8_0 round the weights; measured on the demo run: f16 1.00, q8_0 0.95
            assert m["top1_agreement_last_position"] >= 0.85
        # and the run learned to abstain: <PASS> first on held-out unanswerable questions, rarely on answerable ones
        assert m["llama_cpp_pass_rate_unanswerable"] >= 0.5
        assert m["llama_cpp_pass_rate_unanswerable"] >= m["llama_cpp_pass_rate_answerable"] + 0.3


if __name__ == "__main__":  # python tests/test_gguf_export.py RUN_DIR [N_PER_KIND] [KIND,KIND...]
    import json
    import sys
    import tempfile

    run_dir = Path(sys.argv[1])
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as tmp:
        report = {}
        for kind in (sys.argv[3].split(",") if len(sys.argv) > 3 else ("f32", "f16", "q8_0")):
            path = export_gguf(run_dir, Path(tmp) / f"pass-{kind}.gguf", tensor_type=kind)
            report[kind] = measure_llama_cpp(run_dir, path, per_kind=per)
            report[kind]["file_mb"] = round(path.stat().st_size / 2**20, 1)
            print(kind, {k: v for k, v in report[kind].items() if k != "samples"}, file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
