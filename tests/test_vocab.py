"""vocab.add_tokens: the report's numbers, resizing rules, and the six init strategies.

Families: llama (tied), mistral (untied), gpt_neox (untied), gpt2 (tied, Conv1D),
and a llama whose matrix has padding rows (vocab_size 300, tokenizer 256) so new
ids land *inside* the matrix. The distribution test runs on an 8,192-row model: on
a 256-row random model any init costs KL ~ n/V ~ 0.01, so the 1e-3 bound needs V.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from tiny import HIDDEN, VOCAB, tiny_model, tiny_tokenizer
from tokengraft.errors import TokengraftError
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.core.vocab import HEWITT_EPS, add_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = ["llama", "mistral", "gpt_neox", "gpt2"]


def _tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def _piece_mean(weight: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return weight.detach()[torch.tensor(ids)].float().mean(0)


# ----------------------------------------------------------------------------- the report


@pytest.mark.parametrize("family", FAMILIES)
def test_report_counts_appended_tokens(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    tied = _tied(model)
    report = add_tokens(model, tok, ["<A>", "a", "<B>"], special=True, verbose=False)
    assert report.requested == 3
    assert report.already_present == ["a"] and report.ids["a"] == tiny_tokenizer().get_vocab()["a"]
    assert report.added == ["<A>", "<B>"] and report.new_ids == [VOCAB, VOCAB + 1]
    assert report.appended == [VOCAB, VOCAB + 1] and report.inside_matrix == []
    assert (report.old_rows, report.final_rows) == (VOCAB, VOCAB + 2)
    assert (report.old_tokenizer_size, report.final_tokenizer_size) == (VOCAB, VOCAB + 2)
    assert report.expansion_pct == pytest.approx(100 * 2 / VOCAB)
    assert report.resized and _rows(model) == VOCAB + 2 == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == VOCAB + 2
    assert _tied(model) == tied  # resizing keeps a tied model tied and an untied one untied
    assert model.config.vocab_size == VOCAB + 2
    d = report.to_dict()
    assert (d["requested"], d["already_in_vocabulary"], d["new_tokens"], d["landed_in_padding_rows"],
            d["appended_rows"], d["final_rows"]) == (3, 1, 2, 0, 2, VOCAB + 2)
    assert "landed in padding rows 0" in report.summary() and "rows 256 -> 258" in report.summary()


def test_padding_rows_receive_new_ids_without_resizing() -> None:
    """A matrix with 300 rows and a 256-token tokenizer: new ids 256.. are padding rows, nothing is appended."""
    model, tok = tiny_model("llama", vocab_size=300), tiny_tokenizer()
    weight = model.get_input_embeddings().weight
    report = add_tokens(model, tok, ["<A>", "<B>"], verbose=False)
    assert report.inside_matrix == [256, 257] and report.appended == []
    assert report.final_rows == 300 and report.expansion_pct == 0.0
    assert not report.resized and _rows(model) == 300 and len(tok) == 258
    # The init statistics come from the 256 real rows, not the untrained padding noise.
    real_mean = weight[:256].detach().mean(0)
    assert torch.allclose(weight[256].detach(), real_mean)
    assert not torch.allclose(real_mean, weight[:300].detach().mean(0))


def test_padding_rows_then_appended_rows() -> None:
    model, tok = tiny_model("mistral", vocab_size=258), tiny_tokenizer()
    report = add_tokens(model, tok, ["<A>", "<B>", "<C>", "<D>"], verbose=False)
    assert report.inside_matrix == [256, 257] and report.appended == [258, 259]
    assert report.final_rows == 260 and _rows(model) == 260
    assert report.to_dict()["landed_in_padding_rows"] == 2 and report.to_dict()["appended_rows"] == 2


def test_never_shrinks_and_tokenizer_never_exceeds_rows() -> None:
    model, tok = tiny_model("mistral", vocab_size=300), tiny_tokenizer()
    report = add_tokens(model, tok, ["<A>"], verbose=False)
    assert report.final_rows == 300 and _rows(model) == 300  # not shrunk to len(tokenizer) == 257
    model, tok = tiny_model("llama"), tiny_tokenizer()
    for i in range(3):
        add_tokens(model, tok, [f"<T{i}>", f"<U{i}>"], verbose=False)
        assert len(tok) <= _rows(model)


def test_pad_to_multiple_of() -> None:
    model, tok = tiny_model("gpt_neox"), tiny_tokenizer()
    report = add_tokens(model, tok, ["<A>", "<B>"], pad_to_multiple_of=64, verbose=False)
    assert report.final_rows == 320 and _rows(model) == 320
    assert model.get_output_embeddings().weight.shape[0] == 320
    assert report.new_ids == [256, 257] and len(tok) == 258
    model, tok = tiny_model("llama", vocab_size=300), tiny_tokenizer()
    report = add_tokens(model, tok, ["<A>"], pad_to_multiple_of=8, verbose=False)
    assert report.final_rows == 304 and report.inside_matrix == [256]


def test_special_and_normal_tokens() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    original = tiny_tokenizer()
    assert len(original("hello", add_special_tokens=False)["input_ids"]) > 1
    special = add_tokens(model, tok, ["<A>"], special=True, verbose=False)
    normal = add_tokens(model, tok, ["hello"], special=False, verbose=False)
    a, hello = special.ids["<A>"], normal.ids["hello"]
    assert tok.added_tokens_decoder[a].special and not tok.added_tokens_decoder[hello].special
    assert "<A>" in tok.all_special_tokens and "hello" not in tok.all_special_tokens
    ids = tok("say <A> hello", add_special_tokens=False)["input_ids"]
    assert a in ids and hello in ids  # each is one piece now
    assert "<A>" not in tok.decode(ids, skip_special_tokens=True)
    assert "hello" in tok.decode(ids, skip_special_tokens=True)


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (GPT-2 / Llama 3 / SmolLM2 style: the space folds into a word's first piece)."""
    from tokenizers import pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat and the dog ran to the park"] * 50
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_word_start_tokens_save_the_space_a_bare_word_still_costs() -> None:
    text = "the cat and a metaclass and the metaclass"
    before = len(_byte_level_bpe()(text)["input_ids"])
    bare_tok, spaced_tok = _byte_level_bpe(), _byte_level_bpe()
    add_tokens(tiny_model("llama", vocab_size=400), bare_tok, ["metaclass"], special=False, verbose=False)
    report = add_tokens(tiny_model("llama", vocab_size=400), spaced_tok, [" metaclass", " the"], special=False,
                        verbose=False)
    assert report.added == [" metaclass"] and report.already_present == [" the"]  # " the" is already one piece
    assert report.ids[" the"] == spaced_tok(" the", add_special_tokens=False)["input_ids"][0]
    bare, spaced = bare_tok(text)["input_ids"], spaced_tok(text)["input_ids"]
    # A bare "metaclass" token leaves the space as a token of its own: " metaclass" -> "Ġ" + "metaclass".
    assert len(spaced) == len(bare) - 2 < before
    assert spaced_tok.decode(spaced) == text == bare_tok.decode(bare)


@pytest.mark.parametrize("tokens, match", [
    ([], "tokens.add is empty"),
    (["<A>", "<B>", "<A>"], r"\['<A>'\] more than once"),
    (["<A>", ""], "non-empty strings"),
    (["<A>", "   "], "non-empty strings"),
])
def test_bad_token_lists(tokens: list[str], match: str) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(TokengraftError, match=match):
        add_tokens(model, tok, tokens, verbose=False)
    assert len(tok) == VOCAB and _rows(model) == VOCAB  # nothing was added


@pytest.mark.parametrize("kwargs, match", [
    (dict(init="median"), r"tokens.init \(input\) for '<A>' is 'median'"),
    (dict(init={"<B>": "nope"}), r"for '<B>' is 'nope'"),
    (dict(init="mean", output_init="zeros"), r"tokens.init \(output\)"),
    (dict(init="text"), r"needs tokens.init_text\['<A>'\]"),
])
def test_bad_init_settings(kwargs: dict, match: str) -> None:
    model, tok = tiny_model("mistral"), tiny_tokenizer()
    with pytest.raises(TokengraftError, match=match):
        add_tokens(model, tok, ["<A>", "<B>"], verbose=False, **kwargs)
    assert len(tok) == VOCAB  # refused before the tokenizer changed


# ----------------------------------------------------------------------------- init strategies


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_mean_init_is_the_mean_of_real_rows(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    report = add_tokens(model, tok, ["<A>", "<B>"], init="mean", resize=False, verbose=False)
    assert torch.allclose(report.init_input, emb.mean(0).expand(2, -1))
    if family == "llama":
        assert report.init_output is None  # tied: one row set
    else:
        assert torch.allclose(report.init_output, head.mean(0).expand(2, -1))
    assert _rows(model) == VOCAB  # resize=False leaves the model alone


def test_hewitt_init_is_near_the_mean_distinct_and_seeded() -> None:
    model, tok = tiny_model("mistral"), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().float()
    tokens = ["<A>", "<B>", "<C>"]
    report = add_tokens(model, tok, tokens, init="hewitt", resize=False, seed=3, verbose=False)
    rows = report.init_input
    mean = emb.mean(0)
    # N(mean, eps * Sigma): the typical distance from the mean is sqrt(eps * trace(Sigma)).
    typical = math.sqrt(HEWITT_EPS * torch.var(emb, dim=0).sum().item())
    distances = (rows - mean).norm(dim=1)
    assert (distances > 0.2 * typical).all() and (distances < 3 * typical).all()
    assert not torch.allclose(rows[0], rows[1])
    again = add_tokens(tiny_model("mistral"), tiny_tokenizer(), tokens, init="hewitt", resize=False, seed=3, verbose=False)
    other = add_tokens(tiny_model("mistral"), tiny_tokenizer(), tokens, init="hewitt", resize=False, seed=4, verbose=False)
    assert torch.equal(again.init_input, rows) and not torch.equal(other.init_input, rows)


def test_text_init_is_the_mean_of_the_texts_pieces() -> None:
    model, tok = tiny_model("gpt_neox"), tiny_tokenizer()
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    pieces = tiny_tokenizer()("i do not know", add_special_tokens=False)["input_ids"]
    report = add_tokens(model, tok, ["<PASS>"], init="text", init_text={"<PASS>": "i do not know"},
                        resize=False, verbose=False)
    assert torch.allclose(report.init_input[0], _piece_mean(emb, pieces))
    assert torch.allclose(report.init_output[0], _piece_mean(head, pieces))


@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_subwords_init_is_the_mean_of_the_tokens_own_pieces(family: str) -> None:
    model, tok = tiny_model(family), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().clone()
    pieces = tiny_tokenizer()("<STYLE>", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    report = add_tokens(model, tok, ["<STYLE>"], init="subwords", verbose=False)  # resized: rows written in
    assert torch.allclose(model.get_input_embeddings().weight[report.ids["<STYLE>"]], _piece_mean(emb, pieces))


def test_spherical_radius_is_scale_std_sqrt_hidden() -> None:
    model, tok = tiny_model("llama", vocab_size=300), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().float()
    report = add_tokens(model, tok, ["<A>", "<B>", "<C>"], init="spherical", spherical_scale=2.0,
                        resize=False, verbose=False)
    radius = 2.0 * emb[:VOCAB].std().item() * math.sqrt(HIDDEN)  # real rows only, not the padding rows
    assert torch.allclose(report.init_input.norm(dim=1), torch.full((3,), radius), rtol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(report.init_input[0], report.init_input[1], dim=0)
    assert abs(cosine.item()) < 0.9  # random directions


def test_random_init_uses_initializer_range_and_seed() -> None:
    tokens = [f"<R{i}>" for i in range(16)]
    model, tok = tiny_model("mistral", initializer_range=0.05), tiny_tokenizer()
    report = add_tokens(model, tok, tokens, init="random", resize=False, seed=1, verbose=False)
    assert report.init_input.std().item() == pytest.approx(0.05, rel=0.1)
    assert report.init_input.mean().abs().item() < 0.01
    again = add_tokens(tiny_model("mistral", initializer_range=0.05), tiny_tokenizer(), tokens, init="random",
                       resize=False, seed=1, verbose=False)
    assert torch.equal(again.init_input, report.init_input)


def test_input_and_output_use_different_strategies() -> None:
    model, tok = tiny_model("mistral"), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    report = add_tokens(model, tok, ["<A>", "<B>"], init="mean", output_init="spherical", verbose=False)
    ids = torch.tensor(report.new_ids)
    assert torch.allclose(model.get_input_embeddings().weight[ids].detach(), emb.mean(0).expand(2, -1))
    radius = 1.5 * head.std().item() * math.sqrt(HIDDEN)  # from the head's own statistics
    assert torch.allclose(model.get_output_embeddings().weight[ids].detach().norm(dim=1), torch.full((2,), radius),
                          rtol=1e-5)


def test_per_token_strategies() -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    emb = model.get_input_embeddings().weight.detach().clone()
    report = add_tokens(model, tok, ["<A>", "<B>", "<PASS>"], init={"<A>": "subwords", "<PASS>": "text", "*": "mean"},
                        init_text={"<PASS>": "no"}, resize=False, verbose=False)
    original = tiny_tokenizer()
    by_token = dict(zip(report.added, report.init_input))
    assert torch.allclose(by_token["<A>"], _piece_mean(emb, original("<A>", add_special_tokens=False)["input_ids"]))
    assert torch.allclose(by_token["<B>"], emb.mean(0))
    assert torch.allclose(by_token["<PASS>"], _piece_mean(emb, original("no", add_special_tokens=False)["input_ids"]))


# ----------------------------------------------------------------------------- the distribution is unchanged


def wide_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """The tiny character tokenizer padded with filler pieces to ``size`` tokens (a real-sized vocabulary)."""
    vocab = dict(tiny_tokenizer().get_vocab())
    merges = [(a, b) for a in "etaoinshrdlcum" for b in "etaoinshrdlcum" if a + b in vocab]
    filler = 0
    while len(vocab) < size:
        vocab[f"\u00e6{filler}\u00e6"] = len(vocab)
        filler += 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _kl_and_argmax(before: torch.Tensor, after: torch.Tensor) -> tuple[float, int]:
    """Mean KL(original || grafted) over positions, on the original ids; and how often a new id wins."""
    vocab = before.shape[-1]
    p = torch.log_softmax(before.float(), -1)
    q = torch.log_softmax(after.float(), -1)[..., :vocab]
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    return kl, int((after.argmax(-1) >= vocab).sum())


TEXT = "the cat sat on a mat and then it ran into the house, i think"
NEW = ["<PASS>", "<STYLE_TERSE>", "<STYLE_VERBOSE>"]


@pytest.mark.parametrize("family, init, backend", [
    ("llama", "mean", "rows"), ("llama", "hewitt", "peft"), ("llama", "subwords", "rows"),
    ("mistral", "mean", "peft"), ("mistral", "hewitt", "rows"), ("mistral", "subwords", "peft"),
])
def test_init_keeps_the_next_token_distribution(family: str, init: str, backend: str) -> None:
    vocab = 8192
    tok = wide_tokenizer(vocab)
    model = tiny_model(family, vocab_size=vocab)
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    g = graft(model, tok, TokenSettings(add=NEW, special=True, init_input=init, backend=backend), verbose=False)
    assert all(t not in tok.decode(ids[0]) for t in NEW)
    with torch.no_grad():
        after = g.model(input_ids=ids).logits
    assert after.shape[-1] == vocab + len(NEW)
    kl, wins = _kl_and_argmax(before, after)
    assert kl < 1e-3
    assert wins == 0


@pytest.mark.network
def test_init_keeps_the_builtin_models_distribution() -> None:
    """On the real model the bound is far tighter than on random weights; spherical, for contrast, is not."""
    from tokengraft.models import load_model, load_tokenizer

    model, tok = load_model(device="cpu")
    ids = tok("The capital of France is Paris. The quick brown fox jumps over the lazy", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    results = {}
    for init in ("mean", "hewitt", "subwords", "spherical"):
        g = graft(model, load_tokenizer(), TokenSettings(add=NEW, special=True, init_input=init), verbose=False)
        with torch.no_grad():
            after = g.model(input_ids=ids).logits
        results[init] = _kl_and_argmax(before, after)
        g.rows.detach(model)  # the base model is untouched: the next strategy starts from it
    for init in ("mean", "hewitt", "subwords"):
        kl, wins = results[init]
        assert kl < 1e-3 and wins == 0, (init, results[init])
    assert results["spherical"][0] > 1e-3  # the same measure does see a disruptive init
