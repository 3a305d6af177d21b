"""Vocabulary expansion for a new language: does the lexicon pay off on real held-out text?

    # once: the corpus (Debian's translated Debian Reference, split by chapter; see lexicon_corpus.py)
    apt-get install -y debian-reference-en debian-reference-de debian-reference-ja debian-reference-zh-cn
    python benchmarks/lexicon_corpus.py
    # 1. tokenizer only (no model, ~3 min): tokens per byte on the held-out chapters, per language and budget
    python benchmarks/lexicon_languages.py tokenizer
    #    ja-plus (more Japanese training text, same held-out text; lexicon_corpus.py --languages ja-plus):
    python benchmarks/lexicon_languages.py tokenizer --langs ja-plus --min-counts 3 2   # rows merged into the JSON
    # 2. step-0 bits per byte of each init strategy (built-in model, no training; ~10 min per language)
    python benchmarks/lexicon_languages.py inits --langs de zh-cn     # [--limit N chunks] [--distill-tokens N]
    # 3. train + evaluate the recipes (the heavy part; see the runtime estimate in docs/lexicon_languages.md)
    python benchmarks/lexicon_languages.py train configs/lexicon_de.yaml configs/lexicon_zh.yaml --workdir runs/lang
    # any time: rebuild the markdown from the JSON parts present
    python benchmarks/lexicon_languages.py report

Every part writes ``benchmarks/results/lexicon_languages_<part>.json`` and then
rebuilds ``benchmarks/results/lexicon_languages.md`` from all parts present.

- ``tokenizer``: for German, Japanese, Chinese (and English, the same guide) from the
  Debian Reference, and the pydoc corpus (the control: text the tokenizer already
  fits), mines a lexicon from the TRAIN chapters at budgets of 1k-40k tokens with the
  miner that fits the script (words after a space / CJK units / identifiers), adds
  it to a fresh copy of the built-in tokenizer exactly as training does
  (``core.vocab.register_tokens``) and counts tokens per UTF-8 byte on the TEST
  chapters against the base tokenizer. ``min_count`` 2 and 1 are both reported: the
  corpus (~0.4-0.5 MB of training text per language) runs out of repeated words
  before 10k.
- ``inits``: the built-in model with the language's lexicon (``--budget``) added and
  NOT trained, bits per byte on the test chapters for each init: mean, Hewitt (mean +
  noise), subwords (FVT), spherical (reference 004), and subwords followed by the
  distilled output fit (``core.distill``); the base model is the floor.
- ``train``: each recipe runs in a fresh process (``tokengraft.api.train``) with its
  peak memory measured as in plan_vs_measured.py (VmHWM growth over the loaded model,
  ``MALLOC_MMAP_THRESHOLD_=65536``), next to ``tokengraft plan``'s figure for the mined
  token count; then ``tokengraft eval`` metrics (tokens/byte and bits/byte vs the
  base model, new-token use in generation, step-0 bits per byte), the CPU time to
  score the held-out text with the expanded vs the base model (fewer tokens = less
  work), and bits per byte on the pydoc test split (the English control must not get
  worse by more than 2 %).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_token_rows import process_memory  # VmRSS / VmHWM, the same measurement as the other benchmarks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
CORPUS = ROOT / "data" / "debian-reference"
BUDGETS = (1000, 2000, 5000, 10000, 20000, 40000)
# language -> (miner, word_start): words after a space for German/English, units for CJK.
# ja-plus: the ja corpus with other Japanese Debian manuals added to its training text (same held-out text).
LANGUAGES = {"de": ("words", True), "ja": ("units", False), "zh-cn": ("units", False), "en": ("words", True),
             "ja-plus": ("units", False)}
INITS = ("mean", "hewitt", "subwords", "spherical", "subwords+distill")
BUDGET_GIB = 8  # the verdict's budget: a third of this 24 GiB machine, which several jobs share


# ----------------------------------------------------------------------------- shared


def corpus_texts(lang: str) -> dict[str, list[str]]:
    """Rows' texts per split, exactly as the lexicon task makes them (pydoc: the built-in corpus)."""
    from tokengraft.tasks import lexicon_data as L

    corpus = None if lang == "pydoc" else CORPUS / lang
    if corpus is not None and not (corpus / L.CORPUS_MANIFEST).is_file():
        raise SystemExit(f"{corpus} is missing: run python benchmarks/lexicon_corpus.py first")
    splits = L.generate_splits(seed=42, corpus=corpus)
    return {s: [r["text"] for r in rows] for s, rows in splits.items()}


def mine(lang: str, train: list[str], tokenizer: Any, budget: int, min_count: int) -> list[str]:
    """The lexicon as the recipes mine it: token strings, " word" for space-separated languages."""
    from tokengraft.tasks import lexicon_data as L

    miner, word_start = LANGUAGES.get(lang, ("identifiers", True))
    words = L.mine_lexicon(train, tokenizer, min_pieces=2, min_count=min_count, max_words=budget,
                           after_space=word_start, miner=miner, rank="saved", max_unit_chars=8)
    return [" " + w if word_start else w for w in words]


def count_tokens(tokenizer: Any, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def write_part(name: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"lexicon_languages_{name}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    report()


def read_part(name: str) -> Any:
    path = RESULTS / f"lexicon_languages_{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- 1. tokenizer only


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the rows of ``new`` put in place by (corpus, min_count, budget); rows of other corpora kept."""
    def key(r: dict[str, Any]) -> tuple[str, int, int]:
        return r["corpus"], r["min_count"], r["budget"]

    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in old]
    return merged + [r for r in new if key(r) in fresh]


def tokenizer_part(langs: list[str], budgets: tuple[int, ...], min_counts: tuple[int, ...] = (2, 1)) -> None:
    """Rows for ``langs`` only, merged into the tokenizer JSON: a run for one corpus keeps the others' rows."""
    from tokengraft.core.vocab import register_tokens
    from tokengraft.models import load_tokenizer

    base = load_tokenizer()
    rows: list[dict[str, Any]] = []
    for lang in langs:
        texts = corpus_texts(lang)
        test_bytes = sum(len(t.encode("utf-8")) for t in texts["test"])
        base_tokens = count_tokens(base, texts["test"])
        for min_count in min_counts:
            previous = None
            for budget in budgets:
                started = time.perf_counter()
                tokens = mine(lang, texts["train"], base, budget, min_count)
                if previous is not None and len(tokens) == previous:
                    rows.append({**rows[-1], "budget": budget})  # the corpus ran out: same lexicon as before
                    continue
                previous = len(tokens)
                expanded = load_tokenizer()
                register_tokens(expanded, tokens, special=False, single_word=False)
                new_tokens = count_tokens(expanded, texts["test"])
                rows.append({"corpus": lang, "min_count": min_count, "budget": budget, "mined": len(tokens),
                             "test_bytes": test_bytes, "base_tokens": base_tokens, "tokens": new_tokens,
                             "base_tokens_per_byte": base_tokens / test_bytes, "tokens_per_byte": new_tokens / test_bytes,
                             "reduction": 1 - new_tokens / base_tokens,
                             "seconds": round(time.perf_counter() - started, 1), "examples": tokens[:12]})
                print(f"{lang} min_count {min_count} budget {budget}: {len(tokens)} tokens, "
                      f"{100 * rows[-1]['reduction']:.1f} % fewer tokens per byte", flush=True)
    earlier = (read_part("tokenizer") or {}).get("rows", [])
    write_part("tokenizer", {"tokenizer": "smollm2-135m-instruct", "rows": merge_rows(earlier, rows)})


# ----------------------------------------------------------------------------- 2. step-0 inits


def inits_part(langs: list[str], budget: int, limit: int | None, model_spec: str = "smollm2-135m-instruct",
               distill_tokens: int | None = None, min_count: int = 2, inits: tuple[str, ...] = INITS) -> None:
    import torch

    from tokengraft.core.distill import fit_output_rows
    from tokengraft.core.graft import TokenSettings, graft
    from tokengraft.models import load_model, load_tokenizer
    from tokengraft.tasks import metrics

    torch.set_num_threads(1)
    results = read_part("inits") or {}
    for lang in langs:
        texts = corpus_texts(lang)
        test = texts["test"][:limit]
        tokens = mine(lang, texts["train"], load_tokenizer(model_spec), budget, min_count)
        model, tokenizer = load_model(model_spec)
        nll, n_tokens, nbytes = metrics.text_nll(model, tokenizer, test)
        row: dict[str, Any] = {"tokens": len(tokens), "test_bytes": nbytes, "test_chunks": len(test),
                               "base": metrics.bits_per_byte(nll, nbytes), "base_tokens": n_tokens}
        for init in inits:
            model, tokenizer = load_model(model_spec)
            strategy = init.split("+")[0]
            g = graft(model, tokenizer, TokenSettings(add=tokens, init_input=strategy, init_output=strategy),
                      seed=42, verbose=False)
            started = time.process_time()
            if init.endswith("+distill"):
                report_ = fit_output_rows(g, texts["train"], seed=42, **({"max_tokens": distill_tokens}
                                                                         if distill_tokens else {}))
                row["distill"] = {**report_.to_dict(), "cpu_seconds": round(time.process_time() - started, 1)}
            nll, n_tokens, nbytes = metrics.text_nll(g.model, g.tokenizer, test)
            row[init] = metrics.bits_per_byte(nll, nbytes)
            row["expanded_tokens"] = n_tokens
            print(f"{lang} {init}: {row[init]:.4f} bits/byte (base {row['base']:.4f})", flush=True)
        # min count 2 is the recipes' default; other counts are kept beside it, not over it
        results[lang if min_count == 2 else f"{lang}, min count {min_count}"] = row
        write_part("inits", results)


# ----------------------------------------------------------------------------- 3. train + evaluate


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})
    return env


def train_child(recipe_path: Path, run_dir: Path, overrides: list[str], out: Path) -> None:
    """In a fresh process: train with the peak-memory probe (as plan_vs_measured.py measures it)."""
    import gc

    import torch

    torch.set_num_threads(1)
    import matplotlib.pyplot  # noqa: F401  (imports before the baseline: their memory is not training's)
    import transformers  # noqa: F401
    from transformers import TrainerCallback

    import tokengraft.training.lm as lm_recipe
    from tokengraft.api import train
    from tokengraft.config import load_recipe

    record: dict[str, Any] = {"pre_load_rss": process_memory()["VmRSS"], "peaks": []}
    original_load = lm_recipe.load_model

    def load_and_mark(*args: Any, **kwargs: Any):
        model, tokenizer = original_load(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        record["baseline_rss"] = process_memory()["VmRSS"]
        return model, tokenizer

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["setup_hwm"] = process_memory()["VmHWM"]  # mining, distillation, data: before the first step
            Path("/proc/self/clear_refs").write_text("5")

        def on_step_end(self, args, state, control, **kwargs):
            record["peaks"].append(process_memory()["VmHWM"])

    lm_recipe.load_model = load_and_mark
    recipe = load_recipe(recipe_path, overrides)
    started = time.perf_counter()
    cpu = time.process_time()
    result = train(recipe, run_dir, quiet=False, callbacks=[Probe()])
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["cpu_seconds"] = round(time.process_time() - cpu, 1)
    record["steps"] = getattr(result, "steps", None) or json.loads((run_dir / "graft.json").read_text()).get("steps")
    record["peak_hwm"] = max(record["peaks"]) if record["peaks"] else None
    record["growth"] = record["peak_hwm"] - record["baseline_rss"] if record["peak_hwm"] else None
    out.write_text(json.dumps(record, indent=2))


def held_out_speed(run_dir: Path) -> dict[str, Any]:
    """CPU seconds to score the held-out text with the trained run vs the base model (same windows, one thread)."""
    from tokengraft.api import load
    from tokengraft.models import load_model
    from tokengraft.rundir import read_graft_meta
    from tokengraft.tasks import metrics, read_jsonl

    texts = [r["text"] for r in read_jsonl(run_dir / "data" / "test.jsonl")]
    out: dict[str, Any] = {}
    for name in ("base", "expanded"):
        if name == "base":
            model, tokenizer = load_model(read_graft_meta(run_dir)["base_model"])
        else:
            model, tokenizer = load(run_dir, device="cpu")
        started = time.process_time()
        nll, tokens, nbytes = metrics.text_nll(model, tokenizer, texts)
        out[f"{name}_cpu_seconds"] = round(time.process_time() - started, 1)
        out[f"{name}_tokens"] = tokens
    out["speedup"] = out["base_cpu_seconds"] / max(1e-9, out["expanded_cpu_seconds"])
    return out


def english_control(run_dir: Path) -> dict[str, float]:
    """Bits per byte on the pydoc test split: the expanded, trained model against the base model."""
    from tokengraft.api import load
    from tokengraft.models import load_model
    from tokengraft.rundir import read_graft_meta
    from tokengraft.tasks import metrics

    texts = corpus_texts("pydoc")["test"]
    base_model, base_tok = load_model(read_graft_meta(run_dir)["base_model"])
    b_nll, _, nbytes = metrics.text_nll(base_model, base_tok, texts)
    model, tokenizer = load(run_dir, device="cpu")
    nll, _, _ = metrics.text_nll(model, tokenizer, texts)
    base_bpb, bpb = metrics.bits_per_byte(b_nll, nbytes), metrics.bits_per_byte(nll, nbytes)
    return {"pydoc_base_bits_per_byte": base_bpb, "pydoc_bits_per_byte": bpb, "pydoc_change": bpb / base_bpb - 1}


def save_run(name: str, row: dict[str, Any]) -> None:
    """Add one run to the runs part, read again just before writing: runs trained side by side (one per core)
    each finish with their own row, and none may write back a copy read before another one finished."""
    results = read_part("runs") or {}
    results[name] = row
    write_part("runs", results)


def train_part(configs: list[Path], workdir: Path, overrides: list[str], name: str | None = None) -> None:
    from tokengraft.config import load_recipe
    from tokengraft.api import evaluate
    from tokengraft.models import load_tokenizer
    from tokengraft.planner import plan
    from tokengraft.planner.types import parse_size
    from tokengraft.tasks import get_task

    workdir.mkdir(parents=True, exist_ok=True)
    if name is not None and len(configs) != 1:
        raise SystemExit("--name names one run: pass one config with it")
    for config in configs:
        run_name = name or config.stem
        recipe = load_recipe(config, overrides)
        # The mined count first (mining is cheap), so the plan is made for the real number of rows.
        generated = get_task("lexicon").generate(recipe.seed, recipe.data.generate_options,
                                                 load_tokenizer(recipe.model.name), recipe.tokens.word_start)
        planned = plan(recipe, new_tokens=len(generated.tokens), budget=parse_size(f"{BUDGET_GIB}GB"), device="cpu")
        run_dir = workdir / run_name
        out = workdir / f"{run_name}.measured.json"
        print(f"[{run_name}] {len(generated.tokens):,} tokens; planned {planned.total / 2**30:.2f} GiB "
              f"({planned.verdict}); training ...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "_child", str(config), str(run_dir), str(out), *overrides],
                              env=child_env())
        if proc.returncode != 0:
            raise SystemExit(f"training {run_name} failed")
        measured = json.loads(out.read_text())
        metrics = evaluate(run_dir)
        row = {"config": str(config), "overrides": overrides, "new_tokens": len(generated.tokens),
               "train_chunks": len(generated.splits["train"]), "steps": measured["steps"],
               "train_seconds": measured["seconds"], "train_cpu_seconds": measured["cpu_seconds"],
               "planned_total_mib": round(planned.total / 2**20, 1),
               "planned_growth_mib": round(planned.growth_over_load / 2**20, 1),
               "measured_growth_mib": round(measured["growth"] / 2**20, 1) if measured["growth"] else None,
               "measured_total_mib": round((measured["peak_hwm"] - measured["pre_load_rss"]) / 2**20, 1)
               if measured["peak_hwm"] else None,
               "verdict": planned.verdict, "metrics": metrics, "speed": held_out_speed(run_dir),
               "english_control": english_control(run_dir)}
        save_run(run_name, row)


def reeval_part(names: list[str], workdir: Path) -> None:
    """Replace the saved metrics of trained runs with a fresh `tokengraft eval` of their run directories."""
    from tokengraft.api import evaluate

    results = read_part("runs") or {}
    for name in names:
        if name not in results:
            raise SystemExit(f"no trained run {name!r} in lexicon_languages_runs.json (have: {', '.join(results)})")
        if not (workdir / name / "graft.json").is_file():
            raise SystemExit(f"{workdir / name} is not a run directory: pass the --workdir it was trained in")
        save_run(name, {**results[name], "metrics": evaluate(workdir / name)})


# ----------------------------------------------------------------------------- the markdown


def new_token_rates(m: dict[str, Any]) -> str:
    """Chat reply / raw continuation / held-out text; a run evaluated before the last two existed shows n/a."""
    keys = ("generated_new_token_rate", "continuation_new_token_rate", "test_text_new_token_rate")
    return " / ".join(f"{m[k]:.3f}" if k in m else "n/a" for k in keys)


def plot_runs(runs: dict[str, Any], path: Path) -> None:
    """The issue's three model targets, run by run: bits per byte against the base (left of 0 is better), how often
    raw continuations write a new unit (up is better), and the English control's change (shaded: within +2 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    bpb = [100 * (runs[n]["metrics"]["bits_per_byte"] / runs[n]["metrics"]["base_bits_per_byte"] - 1) for n in names]
    rate = [runs[n]["metrics"].get("continuation_new_token_rate", float("nan")) for n in names]
    english = [100 * runs[n]["english_control"]["pydoc_change"] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.scatter(bpb, rate)
    for name, x, y in zip(names, bpb, rate):
        left.annotate(name.removeprefix("lexicon_"), (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    left.axvline(0, color="grey", lw=0.8)
    left.set(xlabel="bits per byte vs the base model (%), held-out Japanese",
             ylabel="new units in raw continuations (share of tokens)", title="Japanese: better is up and left")
    right.barh(range(len(names)), english)
    right.axvspan(-2, 2, color="green", alpha=0.12)
    right.set_yticks(range(len(names)), [n.removeprefix("lexicon_") for n in names], fontsize=8)
    right.set(xlabel="pydoc (English control) bits per byte change (%)", title="English: within +2 % (shaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report() -> None:
    lines = ["# Vocabulary expansion for a new language (built-in SmolLM2-135M tokenizer / model)", "",
             "Held-out text: the test chapters of Debian's translated Debian Reference (same chapters, ch10 + pr01, "
             "in every language; `benchmarks/lexicon_corpus.py`, manifest in `lexicon_corpus_manifest.json`), "
             "and the pydoc test split as the English control the tokenizer already fits. Lexicons are mined from "
             "the TRAIN chapters only. Produced by `python benchmarks/lexicon_languages.py tokenizer|inits|train`.", ""]
    tok = read_part("tokenizer")
    if tok:
        lines += ["## Tokens per byte on held-out text, tokenizer only (no model)", "",
                  "Reduction = 1 - expanded tokens / base tokens on the test split. `mined` is how many tokens the "
                  "miner found within the budget (the corpus has ~0.4-0.5 MB of training text per language: beyond "
                  "a few thousand repeated units the budget cannot be filled). With min count 1 more CJK units do "
                  "not help past ~10k: units seen once take matches (leftmost-longest) from better ones. `ja-plus` "
                  "is `ja` with six more Japanese Debian manuals in its training text (1.65 MB; the same test "
                  "text, byte for byte).", "",
                  "| corpus | min count | budget | mined | base tokens/byte | expanded | reduction |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        groups: list[list[dict[str, Any]]] = []  # budgets the corpus could not fill give the same lexicon: one line
        for r in tok["rows"]:
            last = groups[-1][0] if groups else None
            if last and (last["corpus"], last["min_count"], last["mined"]) == (r["corpus"], r["min_count"], r["mined"]):
                groups[-1].append(r)
            else:
                groups.append([r])
        for g in groups:
            r = g[0]
            budget = f"{r['budget']:,}" + (f"-{g[-1]['budget']:,}" if len(g) > 1 else "")
            lines.append(f"| {r['corpus']} | {r['min_count']} | {budget} | {r['mined']:,} | "
                         f"{r['base_tokens_per_byte']:.4f} | {r['tokens_per_byte']:.4f} | {100 * r['reduction']:.1f} % |")
        lines += ["", "Examples (first tokens of the largest min-count-2 lexicon): "]
        seen = set()
        for r in reversed(tok["rows"]):
            if r["min_count"] == 2 and r["corpus"] not in seen:
                seen.add(r["corpus"])
                lines.append(f"- {r['corpus']}: " + ", ".join(f"`{t}`" for t in r["examples"]))
        lines.append("")
    inits = read_part("inits")
    if inits:
        lines += ["## Step-0 bits per byte by init (built-in model, new rows not trained)", "",
                  "Scored on the test split cut into the task's default 1,000-character chunks (more context per "
                  "chunk than the recipes' 150-character rows, so the base figure is lower than in the trained "
                  "runs' table): compare the inits within a row. `--min-count 1` is the ~10k-unit lexicon.", "",
                  "| language | tokens | base | " + " | ".join(INITS) + " |", "|---|---:|---:|" + "---:|" * len(INITS)]
        for lang, r in inits.items():
            lines.append(f"| {lang} | {r['tokens']:,} | {r['base']:.4f} | "
                         + " | ".join(f"{r[i]:.4f}" if i in r else "" for i in INITS) + " |")
        lines.append("")
    runs = read_part("runs")
    if runs:
        lines += ["## Trained recipes", "",
                  "| run | new tokens | steps | tokens/byte (base) | bits/byte (base) | new-token rate: chat reply / "
                  "raw continuation / held-out text | "
                  "held-out scoring speed-up | pydoc bits/byte change | planned / measured growth MiB | verdict |",
                  "|---|---:|---:|---|---|---:|---:|---:|---|---|"]
        for name, r in runs.items():
            m = r["metrics"]
            shown = f"{name} ({' '.join(r['overrides'])})" if r.get("overrides") else name
            lines.append(
                f"| {shown} | {r['new_tokens']:,} | {r['steps']} | {m['tokens_per_byte']:.4f} "
                f"({m.get('base_tokens_per_byte', float('nan')):.4f}) | {m['bits_per_byte']:.4f} "
                f"({m.get('base_bits_per_byte', float('nan')):.4f}) | {new_token_rates(m)} | "
                f"{r['speed']['speedup']:.2f}x | {100 * r['english_control']['pydoc_change']:+.2f} % | "
                f"{r['planned_growth_mib']} / {r['measured_growth_mib']} | {r['verdict']} |")
        plot_runs(runs, RESULTS / "lexicon_languages_runs.png")
        lines += ["", "![bits per byte, new units in generation and the English control, run by run]"
                  "(lexicon_languages_runs.png)", ""]
        for name, r in runs.items():
            examples = r["metrics"].get("continuation_examples") or []
            if examples:
                lines += [f"Raw continuations, {name} (greedy, 48 new tokens; the excerpt's last 60 characters, then "
                          "the first 160 of the continuation):", ""]
                lines += [f"- {e['excerpt']!r} -> {e['continuation']!r}" for e in examples] + [""]
    (RESULTS / "lexicon_languages.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        config, run_dir, out, *overrides = sys.argv[2:]
        train_child(Path(config), Path(run_dir), overrides, Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("tokenizer", help="tokens per byte on held-out text per language and budget (no model)")
    p.add_argument("--langs", nargs="+", default=["de", "ja", "zh-cn", "en", "pydoc"])
    p.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--min-counts", nargs="+", type=int, default=[2, 1],
                   help="the miner's min counts (1 on ja-plus: millions of candidate n-grams, slow)")
    p = sub.add_parser("inits", help="step-0 bits per byte of each init strategy (built-in model)")
    p.add_argument("--langs", nargs="+", default=["de", "zh-cn"])
    p.add_argument("--budget", type=int, default=20000)
    p.add_argument("--limit", type=int, default=None, help="score only the first N test chunks")
    p.add_argument("--model", default="smollm2-135m-instruct", help="MODEL spec (default: the built-in model)")
    p.add_argument("--distill-tokens", type=int, default=None, help="training tokens the distilled fit scans")
    p.add_argument("--min-count", type=int, default=2, help="the miner's min count (1 reaches ~10k Japanese units)")
    p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS), help="which inits to score")
    p = sub.add_parser("train", help="train + evaluate recipes (heavy)")
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lexicon-languages")
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. train.max_steps=2")
    p.add_argument("--name", default=None, help="the run's name (default: the config's stem), e.g. for a run "
                   "with overrides kept beside the recipe's own")
    p = sub.add_parser("reeval", help="evaluate trained runs again with today's metrics (no training)")
    p.add_argument("names", nargs="+", help="run names (recipe stems) in the runs part")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lexicon-languages")
    sub.add_parser("report", help="rebuild the markdown from the JSON parts")
    args = parser.parse_args()
    if args.part == "tokenizer":
        tokenizer_part(args.langs, tuple(args.budgets), tuple(args.min_counts))
    elif args.part == "inits":
        inits_part(args.langs, args.budget, args.limit, args.model, args.distill_tokens, args.min_count,
                   tuple(args.inits))
    elif args.part == "train":
        train_part(args.configs, args.workdir, args.set, args.name)
    elif args.part == "reeval":
        reeval_part(args.names, args.workdir)
    else:
        report()


if __name__ == "__main__":
    main()
