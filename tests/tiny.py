"""Tiny random models from configs, one per family, built offline in milliseconds.

Each config keeps the family's real structure (GQA, biases, tying, fused QKV,
Conv1D, ...) at toy width so tests exercise the same code paths as real models.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, decoders, models

VOCAB = 256
HIDDEN = 64

_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)

FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256),
    "mistral": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256),
    "qwen2": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256),
    "qwen3": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=256),
    "phi3": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=256),
    "gemma3_text": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=64),
    "gpt_neox": dict(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     tie_word_embeddings=False, max_position_embeddings=256),
    "gpt2": dict(n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=256, tie_word_embeddings=True),
    "opt": dict(hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256, word_embed_proj_dim=HIDDEN),
    "falcon": dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                   multi_query=True, parallel_attn=True, bias=False, alibi=False, tie_word_embeddings=True),
}


def tiny_config(family: str, **overrides: Any):
    params = {**_COMMON, **FAMILY_CONFIGS[family], **overrides}
    return AutoConfig.for_model(family, **params)


def tiny_model(family: str, seed: int = 0, **overrides: Any):
    """A random model of the family; deterministic for a seed."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    model.eval()
    return model


def tiny_tokenizer(vocab_size: int = VOCAB, with_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A word-level-ish tokenizer over characters: ids 0..vocab_size-1, no download.

    Ids 0-3 are <pad>, <s>, </s>, <unk>; the rest are printable characters and
    frequent bigrams so that multi-character words split into several pieces.
    """
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)]
    pieces = specials + chars
    bigrams = [a + b for a in "etaoinshrdlcum" for b in "etaoinshrdlcum"]
    bigrams = bigrams[: max(0, vocab_size - len(pieces))]
    pieces += bigrams
    vocab = {p: i for i, p in enumerate(pieces[:vocab_size])}
    merges = [(a, b) for a, b in (tuple(bg) for bg in bigrams) if a + b in vocab]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    backend.decoder = decoders.Fuse()  # pieces are raw characters: join them back without spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    if with_chat_template:
        tok.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
        )
    return tok


def tiny_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (GPT-2's pre-tokenizer and byte alphabet): every UTF-8 byte
    is one piece, so German words and CJK characters (3 bytes each) split into many pieces, as they do in an
    English-centred vocabulary. Ids 0-2 are <pad>, <s>, </s>; 259 ids in all."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    pieces = ["<pad>", "<s>", "</s>"] + sorted(alphabet)
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
