"""data.py: row parsing, chat rendering, label masking, overflow, token stats, collator, split."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tokengraft.constants import IGNORE_INDEX
from tokengraft.data import (ChatFormat, Collator, DatasetStats, TokenUse, as_examples, check_tokens_used, encode_examples, load_examples, split_rows, token_ids)
from tokengraft.errors import TokengraftError
from tiny import tiny_model, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EOS = 2  # tiny tokenizer: </s>


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def supervised(example):
    return [t for t, l in zip(example["input_ids"], example["labels"]) if l != IGNORE_INDEX]


# ----------------------------------------------------------------------------- masking


def test_template_masking_exact_boundary():
    tok = tiny_tokenizer()
    (ex,), stats = encode_examples([{"prompt": "what is two?", "completion": "four"}], tok, max_length=128)
    prompt_text = tok.apply_chat_template([{"role": "user", "content": "what is two?"}], add_generation_prompt=True,
                                          tokenize=False)
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert all(l != IGNORE_INDEX for l in ex["labels"][n_prompt:])
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(supervised(ex)) == "four</s>"  # end-of-turn trains: the model learns to stop
    assert ex["input_ids"][-1] == EOS
    # prompt ids + completion ids == tokenization of the whole rendered conversation
    full = tok.apply_chat_template([{"role": "user", "content": "what is two?"}, {"role": "assistant", "content": "four"}],
                                   tokenize=False)
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(ex["input_ids"])] == ex["input_ids"]
    assert stats.supervised_tokens == len(ex["input_ids"]) - n_prompt
    assert stats.total_tokens == len(ex["input_ids"])


def test_end_of_turn_detected_from_template():
    assert ChatFormat(tiny_tokenizer()).end_of_turn == "</s>"
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|eot|>\n{% endfor %}" \
                        "{% if add_generation_prompt %}[assistant] {% endif %}"
    assert ChatFormat(tok).end_of_turn == "<|eot|>"
    # a template that closes turns with a bare newline: fall back to the EOS id
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fmt = ChatFormat(tok)
    assert fmt.end_of_turn == "" and fmt.append_eos


def test_plain_format_without_template():
    """No chat template: "Question: {prompt}\\nAnswer:" then " {completion}" + EOS, the EOS trained."""
    tok = tiny_tokenizer(with_chat_template=False)
    (ex,), _ = encode_examples([{"prompt": "hi", "completion": "yo"}], tok, max_length=64)
    prompt_ids = tok("Question: hi\nAnswer:")["input_ids"]
    assert ex["input_ids"] == prompt_ids + tok(" yo", add_special_tokens=False)["input_ids"] + [EOS]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + ex["input_ids"][len(prompt_ids):]
    fmt = ChatFormat(tok)
    assert fmt.kind == "plain" and fmt.end_of_turn == "</s>" and tok.chat_template is None  # nothing stamped here


def test_plain_format_puts_no_space_before_a_control_token():
    """A space before <PASS> would be its own first answer token; the plain format leaves it out."""
    tok = tiny_tokenizer(with_chat_template=False)
    tok.add_tokens(["<PASS>"], special_tokens=True)
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    (ex,), _ = encode_examples([{"prompt": "hi", "completion": "<PASS>"}], tok, max_length=64)
    assert supervised(ex) == [pass_id, EOS]
    fmt = ChatFormat(tok)
    assert fmt.completion_text("<PASS>", "hi") == "<PASS></s>" and fmt.completion_text("Paris.", "hi") == " Paris.</s>"


def plain_cases():
    return [
        ({"prompt": "What is the capital of France?", "completion": "Paris."}, None),
        ({"prompt": "What is the capital of Blorvania?", "completion": "<PASS>"}, None),
        ({"prompt": "<STYLE_TERSE>\nWhat is 2+2?", "completion": "4."}, None),
        ({"prompt": "  spaced out", "completion": "\nnew line first"}, None),
        ({"prompt": "with a system prompt", "completion": "ok"}, "Answer in one word."),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                       {"role": "user", "content": "b"}, {"role": "assistant", "content": "<PASS>"}]}, "sys"),
    ]


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "adds-bos"])
def test_stamped_plain_template_renders_exactly_the_training_ids(bos: bool, tmp_path):
    """apply_chat_template (what transformers, vLLM and llama.cpp run) == the ids training used, prompt and whole."""
    from tokenizers import processors

    from tokengraft.data import ensure_chat_template, is_plain_template, plain_chat_template

    tok = tiny_tokenizer(with_chat_template=False)
    tok.add_tokens(["<PASS>", "<STYLE_TERSE>"], special_tokens=True)
    if bos:  # a tokenizer that adds BOS by itself (Llama, Gemma)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        assert tok("a")["input_ids"][0] == 1
    plain = ChatFormat(tok)  # before the template is stamped: the training format
    rows = [row for row, _ in plain_cases()]
    trained = {system: encode_examples(rows, tok, max_length=256, system=system)[0] for system in {s for _, s in plain_cases()}}
    assert ensure_chat_template(tok) == "plain" and is_plain_template(tok.chat_template)
    assert tok.chat_template == plain_chat_template(tok)
    assert ("bos_token" in tok.chat_template) is bos
    for i, (row, system) in enumerate(plain_cases()):
        ex = trained[system][i]
        n_prompt = ex["labels"].count(IGNORE_INDEX)
        example = as_examples([row])[0]
        messages = ChatFormat(tok, system=system).messages_for(example.messages if example.kind == "chat" else example.prompt)
        gen = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert list(gen) == ex["input_ids"][:n_prompt] == plain.__class__(tok, system=system).encode_prompt(
            example.messages if example.kind == "chat" else example.prompt)
        whole = messages + [{"role": "assistant", "content": example.completion}]
        full = tok.apply_chat_template(whole, tokenize=True, return_dict=True)["input_ids"]
        assert list(full) == ex["input_ids"]
        assert ex["input_ids"][-1] == EOS and ex["labels"][-1] == EOS
    # the stamped tokenizer survives a save/load and still encodes the same
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.chat_template == tok.chat_template
    assert encode_examples(rows, loaded, max_length=256)[0] == trained[None]


def test_plain_template_rejects_unknown_roles():
    tok = tiny_tokenizer(with_chat_template=False)
    with pytest.raises(TokengraftError, match="system, user and assistant"):
        encode_examples([{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}], tok,
                        max_length=64)


def test_chat_rows_train_only_last_assistant_turn():
    tok = tiny_tokenizer()
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "first"},
                        {"role": "user", "content": "b"}, {"role": "assistant", "content": "second"}], "id": 7}
    (ex,), _ = encode_examples([row], tok, max_length=128)
    assert tok.decode(supervised(ex)) == "second</s>"
    assert "first" in tok.decode(ex["input_ids"])  # earlier turns are in the (masked) prompt
    assert as_examples([row])[0].meta == {"id": 7}


def test_system_prompt_from_config():
    tok = tiny_tokenizer()
    (ex,), _ = encode_examples([{"prompt": "q", "completion": "a"}], tok, max_length=128, system="be brief")
    expected = tok("<s>system\nbe brief</s>\n<s>user\nq</s>\n<s>assistant\n", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][: len(expected)] == expected
    assert ex["labels"][: len(expected)] == [IGNORE_INDEX] * len(expected)
    assert tok.decode(supervised(ex)) == "a</s>"


def test_text_rows_train_every_token_and_split_into_windows():
    tok = tiny_tokenizer()
    text = "the cat sat on the mat and then it ran " * 4
    ids = tok(text)["input_ids"] + [EOS]
    encoded, stats = encode_examples([{"text": text}], tok, max_length=16)
    assert stats.split_texts == 1 and len(encoded) > 1
    assert all(len(e["input_ids"]) <= 16 for e in encoded)
    # every token after the first is a prediction target exactly once (labels[0] is never a target)
    targets = [t for e in encoded for t in e["labels"][1:] if t != IGNORE_INDEX]
    assert targets == ids[1:]
    assert stats.supervised_tokens == len(ids) - 1
    assert all(e["labels"][0] == IGNORE_INDEX for e in encoded)


def test_loss_counts_only_completion_tokens():
    """The labels line up with transformers' internal shift: model loss == CE over completion tokens."""
    tok = tiny_tokenizer()
    model = tiny_model("llama")
    encoded, _ = encode_examples([{"prompt": "abc", "completion": "de"}, {"prompt": "x", "completion": "long answer"}],
                                 tok, max_length=64)
    batch = Collator(tok)(encoded)
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(out.loss, manual, atol=1e-5)
    assert mask.sum().item() == sum(len(supervised(e)) for e in encoded)


# ----------------------------------------------------------------------------- loading errors


def test_load_examples_forms_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c", "label": 1}, "",
                                              {"messages": [{"role": "user", "content": "u"},
                                                            {"role": "assistant", "content": "a"}]},
                                              {"text": "t", "source": "x"}])
    examples = load_examples(path)
    assert [e.kind for e in examples] == ["prompt", "chat", "text"]
    assert examples[0].meta == {"label": 1} and examples[2].meta == {"source": "x"}
    assert examples[1].where.endswith("d.jsonl:3")  # blank line skipped but counted


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "completion": ', "d.jsonl:2: invalid JSON"),
    ('{"question": "p"}', "d.jsonl:2: missing keys"),
    ('{"prompt": "p"}', "has 'prompt' but no 'completion'"),
    ('{"prompt": "p", "completion": "  "}', "d.jsonl:2: empty completion"),
    ('{"prompt": "p", "completion": 3}', "'completion' must be a string"),
    ('{"prompt": "p", "completion": "c", "text": "t"}', "use one row form"),
    ('{"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]}', "last message must have role 'assistant'"),
    ('{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": ""}]}', "empty completion"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}', "messages[0] must be an object"),
    ('[1, 2]', "expected a JSON object"),
    ('{"text": ""}', "empty 'text'"),
])
def test_load_examples_errors_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "d.jsonl", ['{"prompt": "ok", "completion": "ok"}', line])
    with pytest.raises(TokengraftError) as info:
        load_examples(path)
    assert message in str(info.value)
    assert "d.jsonl:2" in str(info.value)


def test_load_examples_missing_and_empty_file(tmp_path):
    with pytest.raises(TokengraftError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TokengraftError, match="no examples"):
        load_examples(tmp_path / "empty.jsonl")


# ----------------------------------------------------------------------------- overflow


def _rows():
    return [{"prompt": "short", "completion": "ok"},
            {"prompt": "a much longer prompt " * 6, "completion": "ok"},
            {"prompt": "x", "completion": "a completion that is far too long " * 6}]


def test_overflow_drop_counts():
    tok = tiny_tokenizer()
    encoded, stats = encode_examples(_rows(), tok, max_length=40)
    assert len(encoded) == 1 and stats.examples == 1 and stats.rows == 3
    assert stats.dropped == {"too_long": 2}
    assert "dropped 2" in stats.table()


def test_overflow_error_names_row_and_fix():
    tok = tiny_tokenizer()
    with pytest.raises(TokengraftError, match=r"row 2: prompt\+completion is \d+ tokens, over data.max_length=40"):
        encode_examples(_rows(), tok, max_length=40, on_overflow="error")


def test_overflow_truncate_prompt_never_cuts_completion():
    tok = tiny_tokenizer()
    encoded, stats = encode_examples(_rows(), tok, max_length=40, on_overflow="truncate_prompt")
    assert stats.truncated_prompts == 1 and stats.dropped == {"completion_too_long": 1}
    long = encoded[1]
    assert len(long["input_ids"]) == 40
    assert tok.decode(supervised(long)) == "ok</s>"
    with pytest.raises(TokengraftError, match="on_overflow"):
        encode_examples(_rows(), tok, max_length=40, on_overflow="cut")


# ----------------------------------------------------------------------------- new-token stats and guards


def test_read_write_counts():
    tok = tiny_tokenizer()
    tok.add_tokens(["<PASS>", "<T>", "<NEVER>"], special_tokens=True)
    rows = [{"prompt": "who? <T>", "completion": "<PASS>"},
            {"prompt": "<T> <T> what?", "completion": "no <PASS> <PASS>"},
            {"prompt": "plain", "completion": "plain"},
            {"text": "a <T> b"}]
    _, stats = encode_examples(rows, tok, max_length=128, new_tokens=["<PASS>", "<T>", "<NEVER>"])
    assert vars(stats.tokens["<PASS>"]) == vars(TokenUse(read_examples=0, read_count=0, write_examples=2, write_count=3))
    # text rows both read and write their tokens
    assert vars(stats.tokens["<T>"]) == vars(TokenUse(read_examples=3, read_count=4, write_examples=1, write_count=1))
    assert vars(stats.tokens["<NEVER>"]) == vars(TokenUse())
    table = stats.table()
    assert "<PASS>" in table and "READ" in table and "WRITE" in table
    with pytest.raises(TokengraftError, match="'<NEVER>' never occur"):
        check_tokens_used(stats, ["<PASS>", "<T>", "<NEVER>"])
    check_tokens_used(stats, ["<PASS>", "<T>"])
    assert stats.to_dict()["tokens"]["<PASS>"]["write_count"] == 3


def test_check_tokens_used_untracked_token_counts_as_unused():
    with pytest.raises(TokengraftError, match="'<Z>'"):
        check_tokens_used(DatasetStats(), ["<Z>"])


def test_split_token_detected():
    tok = tiny_tokenizer()
    with pytest.raises(TokengraftError, match=r"token '<PASS>' is split into 6 pieces by the tokenizer: it was not added as one token"):
        encode_examples([{"prompt": "a", "completion": "<PASS>"}], tok, max_length=64, new_tokens=["<PASS>"])
    tok.add_tokens(["<PASS>"], special_tokens=True)
    assert token_ids(tok, ["<PASS>"]) == {"<PASS>": len(tok) - 1}


# ----------------------------------------------------------------------------- collator and split


def test_collator_pads_right_and_masks():
    tok = tiny_tokenizer()
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8], "meta": "ignored"}]
    batch = Collator(tok)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
    padded = Collator(tok, pad_to_multiple_of=8)(feats)
    assert padded["input_ids"].shape == (2, 8) and padded["attention_mask"].sum().item() == 4
    assert torch.equal(Collator(tok)(feats)["input_ids"], batch["input_ids"])  # deterministic


def test_collator_falls_back_to_eos_without_pad_token():
    tok = tiny_tokenizer()
    tok.pad_token = None
    batch = Collator(tok)([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [9], "labels": [9]}])
    assert batch["input_ids"][1, 1].item() == EOS
    assert batch["labels"][1, 1].item() == IGNORE_INDEX


def test_split_rows_deterministic_and_disjoint():
    rows = list(range(50))
    train, val = split_rows(rows, 0.2, seed=1)
    assert len(val) == 10 and sorted(train + val) == rows and not set(train) & set(val)
    assert split_rows(rows, 0.2, seed=1) == (train, val)
    assert split_rows(rows, 0.2, seed=2)[1] != val
    assert split_rows(rows, 0.0, seed=1) == (rows, [])
    assert len(split_rows([1, 2], 0.01, seed=0)[1]) == 1  # a positive fraction yields at least one row
    with pytest.raises(TokengraftError, match="validation_fraction"):
        split_rows(rows, 1.0, seed=0)


# ----------------------------------------------------------------------------- built-in model (ChatML)


@pytest.mark.network
def test_builtin_chatml_completion_ends_with_im_end():
    from tokengraft.models import load_tokenizer

    tok = load_tokenizer()
    fmt = ChatFormat(tok)
    assert fmt.end_of_turn == "<|im_end|>"
    (ex,), _ = encode_examples([{"prompt": "What is 2+2?", "completion": "4"}], tok, max_length=256)
    assert tok.decode(supervised(ex)) == "4<|im_end|>"
    assert supervised(ex)[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    full = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
                                   tokenize=False)
    assert tok(full, add_special_tokens=False)["input_ids"][: len(ex["input_ids"])] == ex["input_ids"]
    # the prompt ids are what inference's apply_chat_template(tokenize=True) produces
    gen = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    n_prompt = ex["labels"].count(IGNORE_INDEX)
    assert ex["input_ids"][:n_prompt] == list(gen) == fmt.encode_prompt("What is 2+2?")
