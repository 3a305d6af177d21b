"""benchmarks/bench_gemma_rows.py on a tiny Gemma look-alike (the real run is the lead's: minutes and GBs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench_scripts import load_benchmark
from tiny_gemma import tiny_gemma, write_gemma_gguf
from tokengraft import builtin

@pytest.mark.slow  # four child processes, each loading torch and transformers
def test_bench_gemma_rows_runs_the_matrix_and_writes_json_and_markdown(tmp_path: Path) -> None:
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    builtin.convert_gguf_to_hf(write_gemma_gguf(tiny_gemma(), gguf_dir / "tiny.gguf"), tmp_path / "model")
    bench = load_benchmark("bench_gemma_rows")
    assert [r for r in bench.runs(bench.argparse.Namespace(heads=["supervised", "full"], configs=list(bench.CONFIGS),
                                                           tokens=[1, 20000]))][:5] == [
        ("lora", 0, "supervised"), ("rows", 1, "supervised"), ("peft", 1, "supervised"), ("full", 1, "supervised"),
        ("rows", 20000, "supervised")]
    code = bench.main(["--model", str(tmp_path / "model"), "--quick", "--steps", "1", "--tokens", "2",
                       "--configs", "rows,full", "--out", str(tmp_path / "out")])
    assert code == 0
    payload = json.loads((tmp_path / "out" / "gemma_rows.json").read_text())
    results = {(r["config"], r["head"]): r for r in payload["results"]}
    assert set(results) == {("rows", "supervised"), ("full", "supervised"), ("rows", "full"), ("full", "full")}
    assert all("error" not in r and r["new_tokens"] == 2 and len(r["step_s"]) == 1 for r in results.values())
    rows, full = results[("rows", "supervised")], results[("full", "supervised")]
    assert rows["token_parameters"] == 2 * 64  # tied: one row set, two tokens x hidden 64
    assert "embeddings.safetensors" in full["checkpoint_files"] and "embeddings.safetensors" not in rows["checkpoint_files"]
    assert full["checkpoint_files"]["embeddings.safetensors"] > 4098 * 64 * 4  # the whole tied matrix, fp32
    assert payload["analysis"]["checkpoint_full_over_rows"]["2/supervised"] > 1
    assert set(payload["analysis"]["step_full_head_over_supervised"]) == {"rows/2", "full/2"}
    text = (tmp_path / "out" / "gemma_rows.md").read_text()
    assert "## LM head at every position" in text and "| modules_to_save + LoRA | 2 |" in text
