"""Exports meant for servers: answer tokens written visible, and the base + LoRA-adapter form.

Servers drop special tokens from the text they return; an export writes the task's answer
tokens (``<PASS>``) as normal added tokens, so these tests check what a client of transformers'
own decode sees, that the id, the one-piece tokenization and the chat template stay the run's.
The ``--lora-adapter`` form is loaded back with plain PEFT on the exported base and must give
the run's logits; vLLM itself is exercised in test_serving.py (slow, separate interpreter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import tiny_model, tiny_tokenizer
from tokengraft.api import export_merged, load
from tokengraft.cli.main import main
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.errors import TokengraftError
from tokengraft.export.info import read_export_info
from tokengraft.export.lora_adapter import export_lora_adapter
from tokengraft.models import load_model
from tokengraft.rundir import save_graft

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = [{"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}]
TEXT = "<PASS> the cat x <A> sat ab"


def make_base(root: Path, *, tie: bool = True) -> Path:
    base = root / "base"
    tiny_model("llama", tie_word_embeddings=tie).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return base


def make_run(root: Path, base: Path, name: str, *, methods=(), steps: int = 0, task: str | None = "pass") -> Path:
    """A saved run: <PASS> and <A> special, ``steps`` AdamW steps on TEXT, a config.yaml naming ``task``."""
    model, tok = load_model(str(base), device="cpu")
    g = graft(model, tok, TokenSettings(add=["<PASS>", "<A>"], special=True), list(methods), verbose=False)
    if steps:
        ids = tok(TEXT, return_tensors="pt")["input_ids"]
        optimizer = torch.optim.AdamW([p for p in g.model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
        for _ in range(steps):
            g.model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        g.model.eval()
    run = root / name
    save_graft(g, run, base_spec=str(base))
    if task:
        (run / "config.yaml").write_text(f"task: {task}\nmodel: {{name: '{base}'}}\ntokens: {{add: ['<PASS>', '<A>']}}\n")
    return run


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def pass_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("visible")
    return make_run(root, make_base(root), "run")


# ----------------------------------------------------------------------------- visible answer tokens


def test_default_export_shows_pass_keeps_its_id_and_template(pass_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_merged(pass_run, tmp_path / "shown")
    run_tok, tok = AutoTokenizer.from_pretrained(pass_run), AutoTokenizer.from_pretrained(out)
    pass_id, a_id = run_tok.convert_tokens_to_ids(["<PASS>", "<A>"])
    assert tok.convert_tokens_to_ids(["<PASS>", "<A>"]) == [pass_id, a_id]
    assert tok.get_vocab() == run_tok.get_vocab()
    for text in ("<PASS>", "x<PASS>y", "x <PASS> y", "Say <PASS> now <A>"):  # one id, split as the run splits it
        assert tok(text, add_special_tokens=False)["input_ids"] == run_tok(text, add_special_tokens=False)["input_ids"]
    assert tok("<PASS>", add_special_tokens=False)["input_ids"] == [pass_id]
    # what a client of decode(skip_special_tokens=True) gets: <PASS> shown, the other (not an answer token) hidden
    assert run_tok.decode([pass_id, a_id], skip_special_tokens=True) == ""
    assert tok.decode([pass_id], skip_special_tokens=True) == "<PASS>"
    assert tok.decode([a_id], skip_special_tokens=True) == ""
    assert pass_id not in tok.all_special_ids and a_id in tok.all_special_ids
    # the chat template is the run's, and an assistant reply of <PASS> renders to the same ids
    assert (out / "chat_template.jinja").read_text() == (pass_run / "chat_template.jinja").read_text()
    chat = [{"role": "user", "content": "Where is Zorbia?"}, {"role": "assistant", "content": "<PASS>"}]
    assert tok.apply_chat_template(chat, tokenize=True) == run_tok.apply_chat_template(chat, tokenize=True)
    flags = {t["content"]: t["special"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    assert flags["<PASS>"] is False and flags["<A>"] is True
    info = read_export_info(out)
    assert info["visible_tokens"] == ["<PASS>"] and info["task"] == "pass"
    assert {t["token"]: t["special"] for t in info["tokens"]} == {"<PASS>": False, "<A>": True}
    # the weights are the run's: same logits as the loaded run
    ids = run_tok(TEXT, return_tensors="pt")["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(_logits(merged, ids), _logits(load(pass_run, device="cpu")[0], ids), atol=1e-5)


def test_keep_special_and_explicit_tokens(pass_run: Path, tmp_path: Path, capsys) -> None:
    from transformers import AutoTokenizer

    assert main(["export", str(pass_run), "--merged", str(tmp_path / "kept"), "--keep-special"]) == 0
    assert "<PASS>, <A> kept special" in capsys.readouterr().out
    kept = AutoTokenizer.from_pretrained(tmp_path / "kept")
    pass_id, a_id = kept.convert_tokens_to_ids(["<PASS>", "<A>"])
    assert kept.decode([pass_id], skip_special_tokens=True) == ""
    assert read_export_info(tmp_path / "kept")["visible_tokens"] == []

    assert main(["export", str(pass_run), "--merged", str(tmp_path / "both"), "--visible-tokens", "<PASS>", "<A>"]) == 0
    assert "<PASS>, <A> written as normal added tokens" in capsys.readouterr().out
    both = AutoTokenizer.from_pretrained(tmp_path / "both")
    assert both.decode([pass_id, a_id], skip_special_tokens=True) == "<PASS><A>"


def test_a_token_the_run_did_not_add_is_refused_before_writing(pass_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(pass_run), "--merged", str(tmp_path / "bad"), "--visible-tokens", "<|im_end|>"]) == 2
    assert "--visible-tokens names ['<|im_end|>'], which the run did not add" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_run_without_a_task_keeps_its_tokens_special(tmp_path: Path) -> None:
    run = make_run(tmp_path, make_base(tmp_path), "generic", task=None)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export_merged(run, tmp_path / "out"))
    assert tok.decode([tok.convert_tokens_to_ids("<PASS>")], skip_special_tokens=True) == ""


# ----------------------------------------------------------------------------- base + LoRA adapter


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_lora_adapter_on_the_exported_base_reproduces_each_run(tmp_path: Path, tie: bool) -> None:
    """Two runs with the same tokens: one base, two plain adapters; PEFT on that base gives each run's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_base(tmp_path, tie=tie)
    first = make_run(tmp_path, base, "first", methods=LORA, steps=3)
    second = make_run(tmp_path, base, "second", methods=LORA, steps=6)  # trains its own rows further
    out = tmp_path / "served"
    ids = tiny_tokenizer()(TEXT.replace("<PASS>", "").replace("<A>", ""), return_tensors="pt")["input_ids"]
    ids = torch.cat([ids, torch.tensor([[256, 257]])], dim=1)  # and the two new tokens, by id

    def served(adapter: Path) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
        return _logits(PeftModel.from_pretrained(model, str(adapter)).eval(), ids)

    done = export_lora_adapter(first, out)
    assert done.base_written and done.adapter == out / "adapters" / "first" and done.rank == 4
    assert torch.allclose(served(done.adapter), _logits(load(first, device="cpu")[0], ids), atol=1e-5)
    config = json.loads((done.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())
    assert not config.get("modules_to_save") and not config.get("trainable_token_indices")
    assert all("lora_" in k for k in load_file(str(done.adapter / "adapter_model.safetensors")))
    assert not any("embed_tokens" in k or "lm_head" in k for k in load_file(str(done.adapter / "adapter_model.safetensors")))

    with pytest.raises(TokengraftError, match=r"rows for <PASS>, <A> differ from those in .*--rows-in-adapter"):
        export_lora_adapter(second, out)
    assert not (out / "adapters" / "second").exists()

    base_before = load_file(str(out / "base" / "model.safetensors"))
    done2 = export_lora_adapter(second, out, rows_in_adapter=True)
    assert not done2.base_written and done2.rows_in_adapter == ["<PASS>", "<A>"]
    assert all(torch.equal(v, load_file(str(out / "base" / "model.safetensors"))[k]) for k, v in base_before.items())
    assert torch.allclose(served(done2.adapter), _logits(load(second, device="cpu")[0], ids), atol=1e-5)
    # the first adapter is untouched and still gives the first run
    assert torch.allclose(served(done.adapter), _logits(load(first, device="cpu")[0], ids), atol=1e-5)
    tensors = load_file(str(done2.adapter / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (2, 258)
    assert tensors["base_model.model.lm_head.lora_B.weight"].shape == (258, 2)


def test_lora_adapter_refusals(tmp_path: Path, capsys) -> None:
    base = make_base(tmp_path)
    rows_only = make_run(tmp_path, base, "rows-only")
    with pytest.raises(TokengraftError, match="trained no LoRA"):
        export_lora_adapter(rows_only, tmp_path / "a")
    lora = make_run(tmp_path, base, "lora", methods=LORA, steps=1)
    assert main(["export", str(lora), "--lora-adapter", str(tmp_path / "b"), "--adapter-name", "pass"]) == 0
    printed = capsys.readouterr().out
    assert f"vllm serve {tmp_path / 'b' / 'base'} --enable-lora --max-lora-rank 8" in printed
    assert f"--lora-modules pass={(tmp_path / 'b' / 'adapters' / 'pass').resolve()}" in printed
    assert main(["export", str(lora), "--lora-adapter", str(tmp_path / "b"), "--adapter-name", "pass"]) == 2
    assert "exists; choose another --adapter-name" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    other_base = make_base(other, tie=False)
    stranger = make_run(other, other_base, "stranger", methods=LORA, steps=1)
    with pytest.raises(TokengraftError, match="made from another base model"):
        export_lora_adapter(stranger, tmp_path / "b")
    assert main(["export", str(lora), "--merged", str(tmp_path / "m"), "--rows-in-adapter"]) == 2
    assert "go with --lora-adapter" in capsys.readouterr().err


@pytest.mark.parametrize("k", [1, 3])
def test_row_delta_tensors_are_the_exact_row_differences(tmp_path: Path, k: int) -> None:
    """B @ A adds delta[j] to row ids[j] and nothing elsewhere; one token (k = 1, tied) saves too."""
    from safetensors.torch import save_file

    from tokengraft.export.lora_adapter import row_delta_tensors

    ids = [5, 9, 2][:k]
    delta = torch.randn(k, 8)
    tensors = row_delta_tensors("p.", "embed", "head", ids, delta, delta, vocab=12)  # tied: the same delta twice
    save_file(tensors, str(tmp_path / "a.safetensors"))  # no shared storage
    embed = (tensors["p.embed.lora_embedding_B"] @ tensors["p.embed.lora_embedding_A"]).T  # [vocab, hidden]
    head = tensors["p.head.lora_B.weight"] @ tensors["p.head.lora_A.weight"]  # [vocab, hidden]
    expected = torch.zeros(12, 8)
    expected[ids] = delta
    assert torch.equal(embed, expected) and torch.equal(head, expected)
