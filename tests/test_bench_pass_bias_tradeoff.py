"""benchmarks/pass_bias_tradeoff.py: what each <PASS> bias buys, from per-row margins (no model needed)."""

from __future__ import annotations

import pytest

from bench_scripts import load_benchmark


def _rows():
    """Test: two held-out-kind rows, two corrupted rows, two base-right answerable rows, one base-wrong.
    Held-out relations: four base-right rows at rising margins, one base-wrong row."""
    test = [{"kind": "missing_referent", "margin": 1.0, "base_correct": None},
            {"kind": "category_error", "margin": -2.0, "base_correct": None},
            {"kind": "char_noise", "margin": 3.0, "base_correct": None},
            {"kind": "char_noise", "margin": -0.5, "base_correct": None},
            {"kind": "answerable", "margin": -5.0, "base_correct": True},
            {"kind": "answerable", "margin": -1.0, "base_correct": True},
            {"kind": "answerable", "margin": 0.5, "base_correct": False}]
    relations = [{"kind": "answerable", "margin": m, "base_correct": True} for m in (-4.0, -3.0, -1.5, 0.0)]
    relations.append({"kind": "answerable", "margin": 2.0, "base_correct": False})
    return {"test": test, "test_heldout_relations": relations}


def test_each_bias_counts_passes_where_the_margin_plus_bias_reaches_zero():
    bench = load_benchmark("pass_bias_tradeoff")
    held_out = {"missing_referent", "category_error"}
    at_zero = bench.at_bias(_rows(), 0.0, held_out)
    assert at_zero == {"bias": 0.0, "recall_heldout_kinds": 0.5, "recall_corrupted": 0.5, "false_pass_test": 0.0,
                       "false_pass_heldout_relations": 0.25, "kept_heldout_relations": 0.6}
    lower = bench.at_bias(_rows(), -1.0, held_out)
    assert (lower["recall_heldout_kinds"], lower["recall_corrupted"]) == (0.5, 0.5)
    assert lower["false_pass_heldout_relations"] == 0.0 and lower["kept_heldout_relations"] == 0.8
    higher = bench.at_bias(_rows(), 2.0, held_out)
    assert (higher["recall_heldout_kinds"], higher["recall_corrupted"], higher["false_pass_test"]) == (1.0, 1.0, 0.5)
    assert higher["false_pass_heldout_relations"] == 0.5 and higher["kept_heldout_relations"] == pytest.approx(0.4)


def test_a_run_without_metrics_or_held_out_relations_is_one_clear_error(tmp_path, capsys):
    bench = load_benchmark("pass_bias_tradeoff")
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path), "--results", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"{tmp_path} has no metrics.json" in err and "tokengraft eval" in err
