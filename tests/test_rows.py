"""Row-sparse training (rows.py through graft()): only the grafted rows move.

Cases: llama (tied), mistral (untied), gpt_neox (untied), gpt2 (tied, Conv1D), a
llama with padding rows (new ids inside the matrix), and an untied model that
also trains an existing token's rows (``train_existing``).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiny import HIDDEN, VOCAB, tiny_model, tiny_tokenizer
from tokengraft.errors import TokengraftError
from tokengraft.core.graft import TokenSettings, effective_matrices, graft
from tokengraft.core.rows import RowEmbedding, RowHead

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = [{"type": "lora", "targets": "attention", "r": 4}]
TEXT = "<A> the cat x <B> sat <A> ab"
# name -> (family, model overrides, train_existing)
CASES = {
    "llama": ("llama", {}, []),
    "mistral": ("mistral", {}, []),
    "gpt_neox": ("gpt_neox", {}, []),
    "gpt2": ("gpt2", {}, []),
    "padding": ("llama", {"vocab_size": 300}, []),
    "existing": ("mistral", {}, ["x"]),
}


def _make(case: str, methods: list[dict] | None = None, **settings):
    family, overrides, existing = CASES[case]
    model, tok = tiny_model(family, **overrides), tiny_tokenizer()
    originals = [(name, p, p.detach().clone()) for name, p in model.named_parameters()]
    g = graft(model, tok, TokenSettings(add=["<A>", "<B>"], special=True, train_existing=existing, **settings),
              methods, verbose=False)
    return g, originals


def _batch(tok) -> torch.Tensor:
    return tok(TEXT, return_tensors="pt")["input_ids"]


def _train(g, steps: int = 3, lr: float = 1e-2) -> None:
    ids = _batch(g.tokenizer)
    params = [p for p in g.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g.model.train()
    for _ in range(steps):
        loss = g.model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.model.eval()


def effective(g) -> tuple[torch.Tensor, torch.Tensor]:
    """The [rows, H] input and output matrices the grafted model computes with, read through its modules."""
    hf = g.hf_model
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    if g.rows is None:
        e, h = effective_matrices(g.model)
        return e.detach().clone(), h.detach().clone()
    with torch.no_grad():
        e = embedding(torch.arange(embedding.num_embeddings)[None])[0]
        h = head(torch.eye(HIDDEN)).T  # column j of eye @ W^T is row j of W, exactly
        if head.bias is not None:
            h = h - head.bias[:, None]
    return e.clone(), h.clone()


def _rows_now(g) -> dict[str, torch.Tensor]:
    """A copy of the rows (state_dict() shares storage with the live parameters, like nn.Module's)."""
    return {k: v.clone() for k, v in g.rows.state_dict().items()}


def _changed(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return (before != after).any(dim=1).nonzero().flatten().tolist()


# ----------------------------------------------------------------------------- only the grafted rows move


@pytest.mark.parametrize("case", list(CASES))
def test_training_moves_only_the_grafted_rows(case: str) -> None:
    g, originals = _make(case)
    e0, h0 = effective(g)
    init_rows = _rows_now(g)
    _train(g)
    e1, h1 = effective(g)
    ids = g.trainable_ids
    # Every base parameter is bit-identical and still the one the model computes with.
    for name, parameter, before in originals:
        assert torch.equal(parameter, before), name
    assert any(g.rows.base_embedding.weight is p for _, p, _ in originals)
    assert any(g.rows.base_head.weight is p for _, p, _ in originals)
    # The trained rows moved; every other row of the effective matrices is bit-identical.
    after = _rows_now(g)
    assert not torch.equal(after["input"], init_rows["input"])
    if "output" in init_rows:
        assert not torch.equal(after["output"], init_rows["output"])
    assert set(_changed(e0, e1)) <= set(ids) and set(_changed(h0, h1)) <= set(ids)
    assert set(_changed(h0, h1)) == set(ids)  # every trainable id is a label somewhere or gets softmax gradient
    inputs = set(_batch(g.tokenizer)[0, :-1].tolist())
    assert set(_changed(e0, e1)) == set(ids) & inputs  # an input row moves when the id is read
    assert e1.shape[0] == h1.shape[0] == g.report.final_rows


@pytest.mark.parametrize("case", ["llama", "mistral", "gpt2"])
def test_training_under_lora_moves_rows_and_lora_only(case: str) -> None:
    g, originals = _make(case, LORA)
    lora = {n: p.detach().clone() for n, p in g.model.named_parameters() if "lora_" in n and p.requires_grad}
    assert lora
    init_rows = _rows_now(g)
    _train(g)
    for name, parameter, before in originals:
        assert torch.equal(parameter, before), name
    moved = [n for n, p in g.model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert moved  # LoRA trained alongside the rows
    assert not torch.equal(_rows_now(g)["input"], init_rows["input"])


@pytest.mark.parametrize("case, methods", [("llama", None), ("mistral", LORA), ("padding", None)])
def test_generate_emits_and_reads_a_trained_token(case: str, methods) -> None:
    """Teach "ab" -> <A>; greedy generate (KV cache, one new id per step) then writes and reads it."""
    g, _ = _make(case, methods)
    tok = g.tokenizer
    a = g.report.ids["<A>"]
    ids = tok("ab<A>ab<A>ab<A>", return_tensors="pt")["input_ids"]
    optimizer = torch.optim.Adam([p for p in g.model.parameters() if p.requires_grad], lr=0.05)
    g.model.train()
    for _ in range(25):
        g.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.model.eval()
    prompt = tok("ab<A>ab", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = g.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3,
                               do_sample=False, pad_token_id=tok.pad_token_id)
    assert out[0, prompt.shape[1]].item() == a
    assert out.shape[1] == prompt.shape[1] + 3


# ----------------------------------------------------------------------------- tied / untied / one side


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_tied_models_share_one_row_set(case: str) -> None:
    g, _ = _make(case)
    hf = g.hf_model
    assert isinstance(hf.get_input_embeddings(), RowEmbedding) and isinstance(hf.get_output_embeddings(), RowHead)
    assert g.rows.tied and g.rows.output_rows is None
    assert hf.get_output_embeddings().rows is hf.get_input_embeddings().rows
    assert g.rows.num_trainable() == 2 * HIDDEN


def test_untied_models_train_input_and_output_separately() -> None:
    g, _ = _make("gpt_neox")
    hf = g.hf_model
    inp, out = hf.get_input_embeddings().rows, hf.get_output_embeddings().rows
    assert inp is not out and inp.requires_grad and out.requires_grad
    assert g.rows.num_trainable() == 2 * 2 * HIDDEN
    before = _rows_now(g)
    _train(g)
    after = _rows_now(g)
    assert not torch.equal(before["input"], after["input"]) and not torch.equal(before["output"], after["output"])
    assert not torch.equal(after["input"], after["output"])


@pytest.mark.parametrize("side, word, moves, stays", [("input", "READ", "input", "output"),
                                                       ("output", "WRITE", "output", "input")])
def test_one_side_warns_and_only_that_side_moves(side: str, word: str, moves: str, stays: str) -> None:
    with pytest.warns(UserWarning, match=f"can {word} them"):
        g, originals = _make("mistral", sides=side)
    assert g.rows.num_trainable() == 2 * HIDDEN
    before = _rows_now(g)
    _train(g)
    after = _rows_now(g)
    assert not torch.equal(before[moves], after[moves])
    assert torch.equal(before[stays], after[stays])
    for name, parameter, snapshot in originals:
        assert torch.equal(parameter, snapshot), name


@pytest.mark.parametrize("backend", ["rows", "peft", "full"])
def test_one_side_on_a_tied_model_is_refused(backend: str) -> None:
    """One row serves READ and WRITE in a tied model; a one-sided graft could not be saved or merged faithfully."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(TokengraftError, match="ties its input and output embeddings.*use tokens.sides: both"):
        graft(model, tok, TokenSettings(add=["<A>"], sides="input", backend=backend), verbose=False)
    assert len(tok) == VOCAB


# ----------------------------------------------------------------------------- no vocab x hidden in backward


class _Allocations(TorchDispatchMode):
    """Records the shape of every tensor an op returns (views excluded: they allocate nothing)."""

    VIEWS = {"t", "view", "_unsafe_view", "detach", "transpose", "permute", "expand", "as_strided", "alias",
             "unsqueeze", "squeeze", "slice", "select", "reshape", "_reshape_alias"}

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] not in self.VIEWS:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.shapes.append((func.__name__, tuple(t.shape)))
        return out


def _backward_allocations(g) -> list[tuple[str, tuple[int, ...]]]:
    ids = _batch(g.tokenizer)
    g.model.train()
    loss = g.model(input_ids=ids, labels=ids).loss
    mode = _Allocations()
    with mode:
        loss.backward()
    return mode.shapes


def _matrix_shaped(shapes, rows: list[int]) -> list:
    bad = {(r, HIDDEN) for r in rows} | {(HIDDEN, r) for r in rows}
    return [s for s in shapes if s[1] in bad]


@pytest.mark.parametrize("case, methods", [("llama", None), ("mistral", None), ("padding", None), ("mistral", LORA)])
def test_backward_never_builds_a_vocab_by_hidden_tensor(case: str, methods) -> None:
    g, _ = _make(case, methods)
    shapes = _backward_allocations(g)
    base_rows = g.rows.base_embedding.weight.shape[0]
    assert _matrix_shaped(shapes, [base_rows, g.report.final_rows]) == []
    n = len(g.trainable_ids)
    for rows in g.rows.parameters():
        assert rows.grad is not None and rows.grad.shape == (n, HIDDEN)
    assert g.rows.base_embedding.weight.grad is None
    assert g.rows.base_head.weight.grad is None


def test_the_full_backend_does_build_one() -> None:
    """The same probe on the references' backend: the vocab x hidden gradient is there (the probe can fail)."""
    g, _ = _make("mistral", backend="full")
    shapes = _backward_allocations(g)
    assert _matrix_shaped(shapes, [g.report.final_rows])


# ----------------------------------------------------------------------------- three backends, same tokens


@pytest.mark.parametrize("case", ["llama", "mistral", "gpt2", "padding", "existing"])
def test_the_three_backends_train_the_same_rows(case: str) -> None:
    changed = {}
    for backend in ("rows", "peft", "full"):
        g, originals = _make(case, backend=backend)
        e0, h0 = effective(g)
        _train(g)
        e1, h1 = effective(g)
        changed[backend] = (_changed(e0, e1), _changed(h0, h1))
        assert set(changed[backend][1]) == set(g.trainable_ids), backend
        if backend == "rows":
            for name, parameter, before in originals:
                assert torch.equal(parameter, before), name
    assert changed["rows"] == changed["peft"] == changed["full"], changed


def test_attach_rows_rejects_a_second_graft_and_bad_sides() -> None:
    from tokengraft.core.rows import attach_rows

    g, _ = _make("mistral")
    with pytest.raises(TokengraftError, match="already has token rows attached"):
        attach_rows(g.model, [5], torch.zeros(1, HIDDEN))
    model = tiny_model("mistral")
    with pytest.raises(TokengraftError, match="tokens.sides is 'left'"):
        attach_rows(model, [5], torch.zeros(1, HIDDEN), sides="left")
    with pytest.raises(TokengraftError, match="no token rows to train"):
        attach_rows(model, [], torch.zeros(0, HIDDEN))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graft_ = attach_rows(model, [5, 3], torch.stack([torch.full((HIDDEN,), 5.0), torch.full((HIDDEN,), 3.0)]))
    assert graft_.ids.tolist() == [3, 5] and graft_.input_rows[0, 0].item() == 3.0  # sorted with their rows
    with torch.no_grad():
        assert torch.equal(model.get_input_embeddings()(torch.tensor([[3, 5]]))[0, :, 0], torch.tensor([3.0, 5.0]))
    with pytest.raises(TokengraftError, match="token id 300 is past the model's 256 rows"):
        model.get_input_embeddings()(torch.tensor([[300]]))
