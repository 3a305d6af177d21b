"""guard.preflight refuses the setups that would train silently wrong; guard.audit counts by role."""

from __future__ import annotations

import os

import pytest

from tiny import HIDDEN, tiny_model, tiny_tokenizer
from tokengraft.errors import TokengraftError
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.core.guard import audit, preflight

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = [{"type": "lora", "targets": "attention", "r": 4}]


def _graft(family: str = "mistral", methods=None, **settings):
    return graft(tiny_model(family), tiny_tokenizer(), TokenSettings(add=["<A>", "<B>"], special=True, **settings),
                 methods, verbose=False)


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
@pytest.mark.parametrize("backend", ["rows", "peft", "full"])
def test_a_sound_graft_passes(family: str, backend: str) -> None:
    """It passes preflight, and the audit counts exactly the token rows as trainable, the base as frozen."""
    g = _graft(family, backend=backend)
    preflight(g)
    base = tiny_model(family)
    tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    sides = 1 if tied else 2
    # rows / peft train the two new rows per side; full trains whole matrices (gradient-masked to those rows).
    rows = g.report.final_rows if backend == "full" else 2
    report = audit(g)
    assert report.by_role == {"token rows": sides * rows * HIDDEN}
    assert report.trainable == sides * rows * HIDDEN
    if backend == "rows":  # the overlay leaves the base untouched: every base parameter is counted as frozen
        assert report.total_model == sum(p.numel() for p in base.parameters())


def test_frozen_input_rows_are_refused() -> None:
    g = _graft("mistral")
    g.rows.input_rows.requires_grad_(False)  # output rows still train: only the READ side is broken
    with pytest.raises(TokengraftError, match="INPUT rows are frozen: the model could not learn to READ them"):
        preflight(g)


def test_frozen_output_rows_are_refused() -> None:
    g = _graft("gpt_neox")
    g.rows.output_rows.requires_grad_(False)
    with pytest.raises(TokengraftError, match="OUTPUT rows are frozen: the model could not learn to WRITE them"):
        preflight(g)


def test_frozen_peft_token_rows_are_refused() -> None:
    """The same check sees through PEFT's trainable-tokens layer, not only our overlay."""
    g = _graft("mistral", LORA, backend="peft")
    for name, parameter in g.model.named_parameters():
        if "trainable_tokens_delta" in name and "embed_tokens" in name:
            parameter.requires_grad_(False)
    with pytest.raises(TokengraftError, match="INPUT rows are frozen"):
        preflight(g)


def test_a_tokenizer_larger_than_the_matrix_is_refused() -> None:
    g = _graft("llama")
    g.tokenizer.add_tokens(["<late>"])  # a token added behind the graft's back has no row
    with pytest.raises(TokengraftError, match="the tokenizer has 259 tokens but the model has 258 embedding rows"):
        preflight(g)


def test_a_token_split_into_pieces_is_refused() -> None:
    g = _graft("llama")
    g.tokenizer = tiny_tokenizer()  # the wrong tokenizer: "<A>" is three characters to it
    with pytest.raises(TokengraftError, match=r"token '<A>' is split into 3 pieces by the tokenizer"):
        preflight(g)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_nothing_trainable_is_refused(family: str) -> None:
    g = _graft(family)
    for parameter in g.rows.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(TokengraftError, match="nothing is trainable"):
        preflight(g)


# ----------------------------------------------------------------------------- audit


def _base_count(family: str) -> int:
    model = tiny_model(family)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _lora_count(g, r: int) -> int:
    """r x (in + out) per adapted layer, from the wrapped layers' own shapes."""
    total = 0
    for module in g.model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
            total += r * sum(module.base_layer.weight.shape)
    return total


@pytest.mark.parametrize("family, tied", [("llama", True), ("mistral", False), ("gpt2", True), ("gpt_neox", False)])
def test_audit_counts_token_rows_and_lora(family: str, tied: bool) -> None:
    g = _graft(family)
    rows = 2 * HIDDEN * (1 if tied else 2)
    result = audit(g)
    assert result.by_role == {"token rows": rows}
    assert result.total_model == _base_count(family)
    g = _graft(family, LORA)
    result = audit(g)
    lora = _lora_count(g, 4)
    assert lora > 0 and result.by_role == {"token rows": rows, "lora": lora}
    assert result.trainable == rows + lora == sum(p.numel() for p in g.model.parameters() if p.requires_grad)
    assert result.total_model == _base_count(family)
    assert result.to_dict()["trainable_pct"] == pytest.approx(100 * (rows + lora) / _base_count(family), abs=1e-4)
    table = result.table()
    assert f"{'token rows':<12} {rows:>14,}" in table and f"{'lora':<12} {lora:>14,}" in table


@pytest.mark.parametrize("backend, expected", [("peft", lambda rows: 2 * HIDDEN * 2),
                                               ("full", lambda rows: rows * HIDDEN * 2)])
def test_audit_counts_the_other_backends_token_parameters(backend: str, expected) -> None:
    g = _graft("mistral", backend=backend)
    result = audit(g)
    assert result.by_role == {"token rows": expected(g.report.final_rows)}
    assert result.trainable == sum(p.numel() for p in g.model.parameters() if p.requires_grad)
