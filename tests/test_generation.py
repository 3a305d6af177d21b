"""Batched greedy generation (generation.py) against the simplest possible reference.

The reference answers one prompt at a time with no KV cache, no padding and no mask:
the whole sequence is run again for every new token and the argmax taken. The batched
loop sorts prompts by length, left-pads them, shares the chat prefix's KV cache, and
drops finished rows; none of that may change a single token. An end-of-turn bias
chosen from the reference's own logits makes rows stop at different steps, so rows
leave the batch while others still write.
"""

from __future__ import annotations

import pytest
import torch

from tokengraft.core.graft import TokenSettings, graft
from tokengraft.data import ChatFormat
from tokengraft.generation import generate_batch, shared_prefix_length, stop_ids
from tiny import tiny_model, tiny_tokenizer

PROMPTS = ["what is 2+2?", "name a colour", "hi", "the capital of france is what city, exactly?", "ok",
           "count to three please", "why", "tell me a long story about cats and dogs", "hi"]
MAX_NEW = 10
SCORE = 5  # any id: its first-step margin is compared too


@torch.no_grad()
def reference(model, tokenizer, prompt, system, bias):
    """(generated ids, first-step margin of SCORE, per-step gap between the best other token and EOS)."""
    fmt = ChatFormat(tokenizer, system=system)
    stops = set(stop_ids(tokenizer, fmt))
    ids, out, margin, gaps = fmt.encode_prompt(prompt), [], None, []
    for step in range(MAX_NEW):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        if step == 0:
            others = logits.clone()
            others[SCORE] = float("-inf")
            margin = float(logits[SCORE] - others.max())
        eos = tokenizer.eos_token_id
        rest = logits.clone()
        rest[eos] = float("-inf")
        gaps.append(float(rest.max() - logits[eos]))
        for token, value in (bias or {}).items():
            logits[token] += value
        chosen = int(logits.argmax())
        if chosen in stops:
            break
        out.append(chosen)
    return out, margin, gaps


def stopping_bias(model, tokenizer, system):
    """An EOS bias under which some rows stop early, at different steps, and others run to the end."""
    never = {tokenizer.eos_token_id: -1e9}
    firsts = sorted({min(reference(model, tokenizer, p, system, never)[2]) for p in PROMPTS})
    middle = len(firsts) // 2  # halfway between two rows' thresholds: no row sits on a tie
    return {tokenizer.eos_token_id: (firsts[middle - 1] + firsts[middle]) / 2}


def check_same(model, tokenizer, system, batch_size, bias=None):
    refs = [reference(model, tokenizer, p, system, bias) for p in PROMPTS]
    got = generate_batch(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, system=system, batch_size=batch_size,
                         logit_bias=bias, score_token_id=SCORE)
    assert [g["ids"] for g in got] == [r[0] for r in refs]
    assert [g["margin"] for g in got] == pytest.approx([r[1] for r in refs], abs=1e-4)
    return refs


FAMILIES = ["llama", "gpt2", "opt", "qwen2", "gemma3_text", "gpt_neox", "falcon", "phi3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_matches_one_prompt_at_a_time(family):
    model, tokenizer = tiny_model(family), tiny_tokenizer()
    for system in (None, "You are terse."):  # a system prompt makes a longer shared prefix
        bias = stopping_bias(model, tokenizer, system)
        refs = check_same(model, tokenizer, system, batch_size=4, bias=bias)
        lengths = {len(r[0]) for r in refs}
        assert len(lengths) >= 2, f"rows should stop at different steps: {lengths}"
    check_same(model, tokenizer, None, batch_size=64)  # one batch, nothing stops early


def test_sliding_window_models_share_no_prefix_past_the_window():
    """A shared prefix puts padding inside the window; past the window that would change what a row sees."""
    model, tokenizer = tiny_model("gemma3_text", sliding_window=16), tiny_tokenizer()
    check_same(model, tokenizer, "You are a terse assistant.", batch_size=3)


def test_grafted_and_lora_models_take_the_same_path():
    """What evaluation decodes: new token rows and LoRA on the base model."""
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    settings = TokenSettings(add=["<PASS>"], special=True, init_input="mean", init_output="mean")
    g = graft(model, tokenizer, settings, [{"type": "lora", "targets": "attention_mlp", "r": 4}], seed=0, verbose=False)
    with torch.no_grad():
        for name, parameter in g.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    g.model.eval()
    pass_id = g.tokenizer.convert_tokens_to_ids("<PASS>")
    check_same(g.model, g.tokenizer, "You are terse.", batch_size=4, bias={pass_id: 3.0})


def test_models_with_extra_logits_processing_go_through_generate():
    """A generation_config that suppresses a token is honoured (through model.generate), still in prompt order."""
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    free = [r[0] for r in (reference(model, tokenizer, p, None, None) for p in PROMPTS)]
    banned = max({t for ids in free for t in ids}, key=lambda t: sum(ids.count(t) for ids in free))
    model.generation_config.suppress_tokens = [banned]
    check_same(model, tokenizer, None, batch_size=4, bias={banned: float("-inf")})


def test_order_duplicates_and_empty_input():
    model, tokenizer = tiny_model("qwen2"), tiny_tokenizer()
    assert generate_batch(model, tokenizer, [], max_new_tokens=3) == []
    one = generate_batch(model, tokenizer, ["hi"], max_new_tokens=4)
    many = generate_batch(model, tokenizer, ["a much longer question", "hi", "hi"], max_new_tokens=4, batch_size=2)
    assert many[1] == many[2] == one[0]


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7, 8]]) == 5
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]) == 4  # one token of each prompt is left
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0  # too short to be worth a cache
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6]]) == 0  # one prompt shares nothing


@torch.no_grad()
def test_raw_text_continues_the_text_without_a_chat_template():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    texts = ["the cat sat on the", "a much longer piece of text that goes on", "the cat sat on the"]
    outs = generate_batch(model, tokenizer, texts, max_new_tokens=6, batch_size=2, raw_text=True)
    first_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for text, got in zip(texts, outs):
        ids, want = [first_id] + tokenizer(text, add_special_tokens=False)["input_ids"], []
        for _ in range(6):  # greedy on the bare text, one prompt at a time
            token = int(model(input_ids=torch.tensor([ids + want])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            want.append(token)
        assert got["ids"] == want
    chat = generate_batch(model, tokenizer, texts[:1], max_new_tokens=6)
    assert len(ChatFormat(tokenizer).encode_prompt(texts[0])) > len(tokenizer(texts[0])["input_ids"]) + 1
    assert outs[0] == outs[2] and "ids" in chat[0]
