"""``tokengraft serve-check OUT`` for ``export --lora-adapter OUT``: many adapters on one base.

vLLM's multi-LoRA engine gets every adapter in ``OUT/adapters/`` and ONE batch of requests:
each adapter's held-out prompts (its run's test split) with that adapter, plus the first
adapter's prompts on the bare base, so base and LoRA requests share batches the way a busy
server mixes them. transformers answers the same prompt ids with PEFT (``PeftModel`` over a
fresh copy of ``OUT/base`` per adapter) and the bare base. Per adapter the report gives
first-token and greedy agreement and the ``<PASS>`` rates of both engines.

Each adapter is validated with ``add_lora`` before anything is generated (a bad adapter inside
``generate`` kills vLLM's engine), and the engine gets ``max_loras`` = adapters + 1: on CPU,
vLLM 0.32 applies the last slot's adapter to base requests batched with LoRA requests (the
no-LoRA index -1 picks the last slot); a spare, empty last slot keeps base requests exact.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokengraft.constants import vllm_max_lora_rank
from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.generation import generate_batch, stop_ids, until_stop
from tokengraft.serving.check import PASS_TOKEN, Say, engine_summary, first_token, prompts_of
from tokengraft.serving.runner import new_log, run_offline, vllm_python


@dataclass
class AdapterCase:
    """One adapter and the held-out rows (and system prompt) of the run it came from."""

    name: str
    path: Path
    rows: list[dict[str, Any]]
    system: str | None = None
    task: str | None = None


def adapter_rank(path: Path) -> int:
    """The largest LoRA rank in an adapter (its r, or a larger one from rank_pattern)."""
    config = json.loads((path / "adapter_config.json").read_text())
    return max([int(config.get("r", 0))] + [int(v) for v in (config.get("rank_pattern") or {}).values()])


def _agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    n = max(1, len(a))
    return {"first_token": sum(first_token(x) == first_token(y) for x, y in zip(a, b)) / n,
            "greedy_sequence": sum(x == y for x, y in zip(a, b)) / n}


def serve_check_adapters(base: str | Path, cases: list[AdapterCase], *, python: str | None = None,
                         max_new_tokens: int = 32, batch_size: int = 16, threads: int | None = None,
                         dtype: str = "float32", max_model_len: int = 1024, kv_cache_gib: float = 1.0,
                         log_dir: str | Path | None = None, say: Say | None = None) -> dict[str, Any]:
    """Every adapter of ``cases`` on ``base``: vLLM multi-LoRA (one mixed batch) against PEFT."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    say = say or (lambda message: None)
    base = Path(base).resolve()
    if not cases:
        raise TokengraftError(f"{base.parent} has no adapters under adapters/")
    exe, version = vllm_python(python)
    threads = threads or torch.get_num_threads()
    positions = getattr(AutoConfig.from_pretrained(str(base)), "max_position_embeddings", None)
    max_model_len = min(max_model_len, int(positions)) if positions else max_model_len
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    stops = stop_ids(tokenizer, ChatFormat(tokenizer))
    pass_id = tokenizer.get_vocab().get(PASS_TOKEN)
    dtype_t = getattr(torch, dtype)

    prompt_ids: list[list[int]] = []
    prompt_lora: list[int | None] = []
    hf_ids: list[list[list[int]]] = []
    case_prompts: list[list[Any]] = []
    hf_seconds = 0.0
    for k, case in enumerate(cases):
        say(f"transformers + PEFT: adapter {case.name!r} on {len(case.rows)} held-out prompts")
        prompts = prompts_of(case.rows)
        case_prompts.append(prompts)
        fmt = ChatFormat(tokenizer, system=case.system)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype_t),
                                          str(case.path)).eval()
        t0 = time.perf_counter()
        out = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=case.system,
                             batch_size=batch_size)
        hf_seconds += time.perf_counter() - t0
        hf_ids.append([r["ids"] for r in out])
        prompt_ids += [fmt.encode_prompt(p) for p in prompts]
        prompt_lora += [k] * len(prompts)
        del model
    first = cases[0]
    say(f"transformers: the bare base on {len(first.rows)} prompts")
    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype_t).eval()
    base_prompts = prompts_of(first.rows)
    base_hf = [r["ids"] for r in generate_batch(base_model, tokenizer, base_prompts, max_new_tokens=max_new_tokens,
                                                system=first.system, batch_size=batch_size)]
    del base_model
    fmt = ChatFormat(tokenizer, system=first.system)
    base_ids = [fmt.encode_prompt(p) for p in base_prompts]
    # Interleave base requests with the LoRA ones, so the engine's batches mix both.
    tagged = [(("lora", i), ids, k) for i, (ids, k) in enumerate(zip(prompt_ids, prompt_lora))]
    plain = [(("base", j), ids, None) for j, ids in enumerate(base_ids)]
    mixed = [item for pair in zip(tagged, plain) for item in pair] + tagged[len(plain):] + plain[len(tagged):]
    where = [tag for tag, _, _ in mixed]
    mixed_ids = [ids for _, ids, _ in mixed]
    mixed_lora = [k for _, _, k in mixed]

    rank = vllm_max_lora_rank(max(adapter_rank(c.path) for c in cases))
    say(f"vLLM {version} ({exe}): base + {len(cases)} adapters (max_loras {len(cases) + 1}, max_lora_rank {rank}), "
        f"{len(mixed_ids)} requests in one call")
    job = {"model": str(base), "dtype": dtype, "max_model_len": max_model_len, "threads": threads,
           "kv_cache_gib": kv_cache_gib, "max_new_tokens": max_new_tokens, "stop_token_ids": stops,
           "prompt_ids": mixed_ids, "prompt_lora": mixed_lora, "max_lora_rank": rank,
           "loras": [{"name": c.name, "path": str(Path(c.path).resolve())} for c in cases]}
    result = run_offline(exe, job, log=new_log(log_dir, "vllm-lora"))
    lora_out: dict[int, list[int]] = {}
    base_out: dict[int, list[int]] = {}
    texts: dict[tuple[str, int], str] = {}
    for (kind, i), o in zip(where, result["outputs"]):
        (lora_out if kind == "lora" else base_out)[i] = until_stop(o["ids"], stops)
        texts[(kind, i)] = o["text"].strip()

    adapters = []
    start = 0
    for case, ids, prompts in zip(cases, hf_ids, case_prompts):
        v = [lora_out[start + i] for i in range(len(ids))]
        v_texts = [texts[("lora", start + i)] for i in range(len(ids))]
        h_texts = [tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]
        start += len(ids)
        adapters.append({"name": case.name, "path": str(case.path), "task": case.task, "prompts": len(ids),
                         "agreement": _agreement(ids, v),
                         "transformers": engine_summary(case.rows, ids, h_texts, 0.0, pass_id, case.task),
                         "vllm": engine_summary(case.rows, v, v_texts, 0.0, pass_id, case.task),
                         "examples": [{"prompt": str(prompts[i])[:120], "transformers": h_texts[i], "vllm": v_texts[i]}
                                      for i in range(min(3, len(ids)))]})
    base_v = [base_out[j] for j in range(len(base_hf))]
    generated = sum(len(x) for x in lora_out.values()) + sum(len(x) for x in base_out.values())
    return {
        "kind": "lora-adapters", "base": str(base), "max_new_tokens": max_new_tokens, "threads": threads,
        "dtype": dtype, "requests": len(mixed_ids), "max_loras": len(cases) + 1, "max_lora_rank": rank,
        "adapters": adapters,
        "base_only": {"prompts": len(base_hf), "agreement": _agreement(base_hf, base_v),
                      "transformers": engine_summary(first.rows, base_hf, [""] * len(base_hf), 0.0, pass_id, first.task),
                      "vllm": engine_summary(first.rows, base_v, [""] * len(base_v), 0.0, pass_id, first.task)},
        "vllm": {"version": result["vllm_version"], "python": result["python"],
                 "engine_start_s": result["engine_start_s"], "generate_s": result["generate_s"],
                 "generated_tokens": generated,
                 "tokens_per_s": generated / result["generate_s"] if result["generate_s"] else None},
        "transformers": {"generate_s": hf_seconds,
                         "note": "PEFT, one adapter at a time (LoRA not merged); the bare base not timed"},
    }


def adapters_markdown(report: dict[str, Any]) -> str:
    """The multi-adapter report as markdown."""
    v = report["vllm"]
    lines = [f"# serve-check: {len(report['adapters'])} LoRA adapters on `{report['base']}`", "",
             f"vLLM {v['version']} multi-LoRA (`max_loras` {report['max_loras']}, `max_lora_rank` "
             f"{report['max_lora_rank']}): {report['requests']} greedy requests in one call, each adapter's held-out "
             "prompts mixed with base-only requests; transformers: PEFT on the same base, same prompt ids. "
             f"Engine start {v['engine_start_s']:.1f} s, {v['generated_tokens']} tokens in {v['generate_s']:.1f} s."
             + (f" Produced by `{report['command']}`." if report.get("command") else ""), "",
             "| adapter | prompts | first token agrees | greedy identical | `<PASS>` unanswerable (HF / vLLM) "
             "| `<PASS>` answerable (HF / vLLM) |", "|---|---|---|---|---|---|"]

    def pair(hf: dict[str, Any], vl: dict[str, Any], key: str) -> str:
        a, b = hf.get(key), vl.get(key)
        return "-" if a is None else f"{a:.2f} / {b:.2f}"

    rows = [(a["name"], a) for a in report["adapters"]] + [("(base, no adapter)", report["base_only"])]
    for name, a in rows:
        agree = a["agreement"]
        lines.append(f"| {name} | {a['prompts']} | {agree['first_token']:.2f} | {agree['greedy_sequence']:.2f} | "
                     f"{pair(a['transformers'], a['vllm'], 'pass_rate_unanswerable')} | "
                     f"{pair(a['transformers'], a['vllm'], 'pass_rate_answerable')} |")
    return "\n".join(lines) + "\n"
