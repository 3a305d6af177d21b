"""save -> load -> export --merged, per family and backend, and damaged run directories.

Each case trains a few steps, saves a run directory, loads it back, exports a
merged checkpoint, and checks the logits agree at every stage. One fresh Python
process (no tokengraft import) then loads every merged checkpoint with plain
``AutoModelForCausalLM`` / ``AutoTokenizer`` and reports its logits and tying.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny import tiny_model, tiny_tokenizer
from tokengraft.errors import TokengraftError
from tokengraft.export.merged import export_merged
from tokengraft.api import load
from tokengraft.rundir import load_graft, save_graft
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.models import load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LORA = [{"type": "lora", "targets": "attention", "r": 4}]
TEXT = "<A> the cat x <B> sat <A> ab"
# name -> (family, model overrides, backend, methods, train_existing)
CASES = {
    "llama-rows": ("llama", {}, "rows", [], []),
    "llama-rows-lora": ("llama", {}, "rows", LORA, []),
    "llama-peft": ("llama", {}, "peft", [], []),
    "llama-full": ("llama", {}, "full", [], []),
    "mistral-rows": ("mistral", {}, "rows", [], []),
    "mistral-rows-lora": ("mistral", {}, "rows", LORA, []),
    "mistral-peft-lora": ("mistral", {}, "peft", LORA, []),
    "mistral-full": ("mistral", {}, "full", [], []),
    "gpt_neox-rows": ("gpt_neox", {}, "rows", [], []),
    "gpt_neox-peft": ("gpt_neox", {}, "peft", [], []),
    "gpt2-rows": ("gpt2", {}, "rows", [], []),
    "gpt2-full-lora": ("gpt2", {}, "full", LORA, []),
    "padding-rows": ("llama", {"vocab_size": 300}, "rows", [], []),
    "padding-peft": ("llama", {"vocab_size": 300}, "peft", [], []),
    "existing-rows": ("mistral", {}, "rows", [], ["x"]),
}


def save_base(directory: Path, family: str, seed: int = 0, **overrides) -> str:
    """Tiny base models go through a directory so the run records a loadable base spec."""
    tiny_model(family, seed=seed, **overrides).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return str(directory)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _train(g, steps: int = 3) -> None:
    ids = g.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in g.model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    g.model.train()
    for _ in range(steps):
        g.model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.model.eval()


def _run_case(root: Path, name: str) -> dict:
    family, overrides, backend, methods, existing = CASES[name]
    base = save_base(root / "base", family, **overrides)
    model, tok = load_model(base, device="cpu")
    g = graft(model, tok, TokenSettings(add=["<A>", "<B>"], special=True, backend=backend, train_existing=existing),
              methods, verbose=False)
    _train(g)
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    trained = _logits(g.model, ids)
    rows = {k: v.clone() for k, v in g.token_rows().items()}
    save_graft(g, root / "run", base_spec=base)
    loaded = _logits(load(root / "run", device="cpu")[0], ids)
    export_merged(root / "run", root / "merged")
    return {"trained": trained, "loaded": loaded, "rows": rows, "ids": ids, "family": family}


CHILD = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert not any(m.startswith("tokengraft") for m in sys.modules)
    report = {}
    for name, directory, text, ids in json.loads(sys.argv[1]):
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        tok = AutoTokenizer.from_pretrained(directory)
        encoded = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=encoded).logits.float()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        index = torch.tensor(ids)
        save_file({"logits": logits.contiguous(), "encoded": encoded.contiguous(),
                   "input": emb[index].detach().contiguous(), "output": head[index].detach().contiguous()},
                  f"{directory}/child.safetensors")
        report[name] = {"tied": head.data_ptr() == emb.data_ptr(), "config_tied": model.config.tie_word_embeddings,
                        "rows": emb.shape[0], "tokenizer": len(tok)}
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Every case trained, saved, loaded and merged; then one plain-transformers process reads them all."""
    results: dict[str, dict] = {}
    for name in CASES:
        root = tmp_path_factory.mktemp(name)
        try:
            results[name] = _run_case(root, name)
            results[name]["merged"] = str(root / "merged")
        except Exception as exc:  # reported by the case's own test
            results[name] = {"error": exc}
    jobs = [(n, r["merged"], TEXT, r["rows"]["ids"].tolist()) for n, r in results.items() if "error" not in r]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], capture_output=True, text=True,
                           env=env, cwd=tmp_path_factory.getbasetemp(), timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    for name, info in report.items():
        results[name]["child"] = info
        results[name]["child_tensors"] = load_file(str(Path(results[name]["merged"]) / "child.safetensors"))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_export_keep_the_logits(exported: dict, name: str) -> None:
    result = exported[name]
    if "error" in result:
        raise result["error"]
    trained, loaded = result["trained"], result["loaded"]
    child, tensors = result["child"], result["child_tensors"]
    assert torch.allclose(trained, loaded, atol=1e-5), (trained - loaded).abs().max()
    assert torch.equal(tensors["encoded"], result["ids"])  # the exported tokenizer splits text the same way
    assert torch.allclose(trained, tensors["logits"], atol=1e-5), (trained - tensors["logits"]).abs().max()
    # Tying survives the merge as it was: a tied base stays tied, an untied one stays untied.
    tied = result["family"] in ("llama", "gpt2")
    assert child["tied"] is tied and bool(child["config_tied"]) is tied
    assert child["tokenizer"] <= child["rows"]
    # The merged matrices hold exactly the trained rows (a tied head *is* the trained input rows).
    rows = result["rows"]
    assert torch.allclose(tensors["input"], rows["input"], atol=1e-6)
    assert torch.allclose(tensors["output"], rows.get("output", rows["input"]), atol=1e-6)


def test_export_refuses_a_non_empty_output_directory(tmp_path: Path) -> None:
    run = _small_run(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TokengraftError, match="exists and is not empty"):
        export_merged(run, out)
    assert (out / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- damaged run directories


def _small_run(tmp_path: Path, family: str = "mistral") -> Path:
    base = save_base(tmp_path / "base", family)
    model, tok = load_model(base, device="cpu")
    g = graft(model, tok, TokenSettings(add=["<A>", "<B>"], special=True), verbose=False)
    return save_graft(g, tmp_path / "run", base_spec=base)


def _edit_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _drop_key(path: Path, key: str) -> None:
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_tensor(path: Path, key: str) -> None:
    tensors = load_file(str(path))
    del tensors[key]
    save_file(tensors, str(path))


def _reshape_tensor(path: Path, key: str) -> None:
    tensors = load_file(str(path))
    tensors[key] = tensors[key][:, :10].contiguous()
    save_file(tensors, str(path))


DAMAGE = {
    "missing graft.json": (lambda r: (r / "graft.json").unlink(), r"graft.json is missing"),
    "invalid graft.json": (lambda r: (r / "graft.json").write_text("{ nope"), r"graft.json is damaged \(invalid JSON"),
    "graft.json without a key": (lambda r: _drop_key(r / "graft.json", "base_fingerprint"),
                                 r"graft.json is damaged: key 'base_fingerprint' is missing"),
    "missing rows": (lambda r: (r / "rows.safetensors").unlink(), r"incomplete: rows.safetensors is missing"),
    "truncated rows": (lambda r: _truncate(r / "rows.safetensors"), r"rows.safetensors is damaged"),
    "rows without output": (lambda r: _drop_tensor(r / "rows.safetensors", "output"),
                            r"rows.safetensors is damaged: tensor 'output' is missing"),
    "rows of the wrong width": (lambda r: _reshape_tensor(r / "rows.safetensors", "input"),
                                r"rows.safetensors is damaged: tensor 'input' has shape \(2, 10\)"),
    "missing tokenizer": (lambda r: (r / "tokenizer.json").unlink(), r"its tokenizer \(tokenizer.json\) is missing"),
    "mismatched ids": (lambda r: _edit_json(r / "graft.json", trainable_ids=[256, 300]),
                       r"rows.safetensors does not match graft.json \(different token ids\)"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_directory_names_the_file(tmp_path: Path, damage: str) -> None:
    run = _small_run(tmp_path)
    load_graft(run, device="cpu")  # intact, it loads
    mutate, match = DAMAGE[damage]
    mutate(run)
    with pytest.raises(TokengraftError, match=match):
        load_graft(run, device="cpu")


def test_a_missing_run_directory(tmp_path: Path) -> None:
    with pytest.raises(TokengraftError, match="does not exist"):
        load(tmp_path / "nowhere")


@pytest.mark.parametrize("other", ["other weights", "other shape"])
def test_a_different_base_model_is_a_fingerprint_error(tmp_path: Path, other: str) -> None:
    run = _small_run(tmp_path)
    kwargs = {"seed": 1} if other == "other weights" else {"vocab_size": 300, "hidden_size": 32}
    second = save_base(tmp_path / "other", "mistral", **kwargs)
    _edit_json(run / "graft.json", base_model=second)
    with pytest.raises(TokengraftError, match="trained on a different base model: fingerprint"):
        load(run, device="cpu")


def test_a_full_backend_run_without_its_matrices(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base", "llama")
    model, tok = load_model(base, device="cpu")
    g = graft(model, tok, TokenSettings(add=["<A>"], backend="full"), verbose=False)
    run = save_graft(g, tmp_path / "run", base_spec=base)
    (run / "embeddings.safetensors").unlink()
    with pytest.raises(TokengraftError, match="incomplete: embeddings.safetensors is missing"):
        load(run, device="cpu")


@pytest.mark.network
def test_two_tokens_on_the_builtin_model_save_under_100_kb(tmp_path: Path) -> None:
    from tokengraft.models import BUILTIN_ALIAS

    model, tok = load_model(device="cpu")
    g = graft(model, tok, TokenSettings(add=["<PASS>", "<STYLE_TERSE>"], special=True), verbose=False)
    run = save_graft(g, tmp_path / "run", base_spec=BUILTIN_ALIAS)
    size = (run / "rows.safetensors").stat().st_size + (run / "graft.json").stat().st_size
    assert size < 100_000, size
    assert not list(run.glob("*.safetensors"))[1:]  # the rows are the only weights saved
    loaded = load_graft(run, device="cpu")
    assert loaded.trainable_ids == g.trainable_ids
    shutil.rmtree(run)


def test_the_pass_bias_folds_into_the_row_with_a_measured_shift() -> None:
    """The calibrated <PASS> bias goes into the weights; the reported shift is what the logits really move by."""
    from tokengraft.export.pass_bias import fold_pass_bias
    from tokengraft.generation import first_answer_states

    model, tok = tiny_model("llama", seed=3), tiny_tokenizer()
    g = graft(model, tok, TokenSettings(add=["<PASS>"], special=True), seed=0, verbose=False)
    g.rows.merge_into(g.model)
    model = g.model
    pass_id = tok.convert_tokens_to_ids("<PASS>")
    prompts = [f"question number {i} about {w}" for i, w in enumerate("abcdefghijklmnopqrstuvwxyzabcdefghijklmn")]

    def pass_logits() -> torch.Tensor:
        states = first_answer_states(model, tok, prompts)
        return states @ model.get_output_embeddings().weight[pass_id].detach().float()

    before = pass_logits()
    report = fold_pass_bias(model, tok, 2.0, prompts)
    moved = pass_logits() - before
    assert report["method"] == "row_least_squares" and not report["exact"]
    check = moved[1::2]  # the half the fit did not see
    assert abs(float(check.mean()) - report["shift_mean"]) < 1e-4
    assert abs(float(check.std()) - report["shift_std"]) < 1e-4
    assert abs(float(moved[0::2].mean()) - 2.0) < 0.05  # the fitted half lands on the bias
    with pytest.raises(TokengraftError, match=">= 8 prompts"):
        fold_pass_bias(model, tok, 2.0, prompts[:3])
