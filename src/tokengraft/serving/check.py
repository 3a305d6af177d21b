"""``tokengraft serve-check``: does vLLM serve an export the way transformers runs it?

On the run's held-out prompts, with greedy decoding and the very same prompt ids (rendered by the
export's chat template and system prompt, as training rendered them), it compares:

- the first generated token and the whole greedy continuation, vLLM against transformers;
- the task's metric on both: the ``<PASS>`` rate on unanswerable vs answerable questions and how
  often a generated ``<PASS>`` shows in the text a default request returns (vLLM's text;
  transformers' ``decode(skip_special_tokens=True)``), or the style tokens' length ratio;
- tokens/s (transformers' batched ``generate`` vs one vLLM ``generate`` call over all prompts)
  and vLLM's engine start;
- with ``server=True``, vLLM's OpenAI-compatible server: one chat request for an unanswerable
  question, and the ``content`` a client receives, by default and with ``skip_special_tokens: false``.

The transformers side loads the export with plain ``AutoModelForCausalLM`` (the calibrated
``<PASS>`` bias is folded into its weights, so neither side adds a logit bias). vLLM runs in a
child process (runner.py), in another interpreter when it lives in its own venv.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokengraft.data import ChatFormat
from tokengraft.errors import TokengraftError
from tokengraft.generation import generate_batch, stop_ids, until_stop
from tokengraft.serving.runner import VllmServer, new_log, run_offline, vllm_python
from tokengraft.tasks import metrics

PASS_TOKEN = "<PASS>"
Say = Callable[[str], None]


def prompts_of(rows: list[dict[str, Any]]) -> list[str | list[dict[str, str]]]:
    """What each held-out row asks: its ``prompt``, its ``messages`` up to the last assistant turn, or
    the first 200 characters of its ``text`` (lexicon rows), as ``tokengraft eval`` prompts them."""
    prompts: list[str | list[dict[str, str]]] = []
    for n, row in enumerate(rows, 1):
        if isinstance(row.get("prompt"), (str, list)):
            prompts.append(row["prompt"])
        elif isinstance(row.get("messages"), list) and row["messages"]:
            messages = list(row["messages"])
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
            prompts.append(messages)
        elif isinstance(row.get("text"), str):
            prompts.append(row["text"][:200])
        else:
            raise TokengraftError(f"held-out row {n} has no prompt, messages or text field to ask the model")
    return prompts


def first_token(ids: list[int]) -> int | None:
    return ids[0] if ids else None


def pass_summary(rows: list[dict[str, Any]], ids: list[list[int]], texts: list[str], pass_id: int) -> dict[str, Any]:
    """<PASS> first on unanswerable vs answerable rows, and how often a generated <PASS> is in the client's text."""
    unanswerable = [i for i, r in enumerate(rows) if r.get("answerable") is False]
    answerable = [i for i, r in enumerate(rows) if r.get("answerable") is True]

    def rate(group: list[int]) -> float | None:
        return sum(first_token(ids[i]) == pass_id for i in group) / len(group) if group else None

    said = [i for i, row_ids in enumerate(ids) if pass_id in row_ids]
    return {"pass_rate_unanswerable": rate(unanswerable), "pass_rate_answerable": rate(answerable),
            "unanswerable": len(unanswerable), "answerable": len(answerable), "said_pass": len(said),
            "pass_in_text": sum(PASS_TOKEN in texts[i] for i in said)}


def style_summary(rows: list[dict[str, Any]], ids: list[list[int]], seed: int = 0) -> dict[str, Any] | None:
    """Median verbose/terse length ratio over the held-out pairs (the style task's headline metric)."""
    by_pair: dict[Any, dict[str, int]] = {}
    for row, row_ids in zip(rows, ids):
        if row.get("style") in ("terse", "verbose") and "pair_id" in row:
            by_pair.setdefault(row["pair_id"], {})[row["style"]] = len(row_ids)
    pairs = [(p["terse"], p["verbose"]) for p in by_pair.values() if len(p) == 2]
    if not pairs:
        return None
    stats = metrics.length_stats([t for t, _ in pairs], [v for _, v in pairs], seed=seed)
    return {"length_ratio": stats["median_ratio"], "terse_median_tokens": stats["median_terse"],
            "verbose_median_tokens": stats["median_verbose"], "pairs": len(pairs)}


def engine_summary(rows: list[dict[str, Any]], ids: list[list[int]], texts: list[str], seconds: float,
                    pass_id: int | None, task: str | None) -> dict[str, Any]:
    tokens = sum(len(x) for x in ids)
    out: dict[str, Any] = {"generate_s": seconds, "generated_tokens": tokens,
                           "tokens_per_s": tokens / seconds if seconds > 0 else None,
                           "median_tokens": statistics.median(len(x) for x in ids) if ids else None}
    if pass_id is not None:
        out.update(pass_summary(rows, ids, texts, pass_id))
    if task == "style":
        out["style"] = style_summary(rows, ids)
    return out


def _server_question(rows: list[dict[str, Any]], hf_ids: list[list[int]], pass_id: int | None) -> int:
    """An unanswerable question that transformers answers with <PASS> (the case a client must see), else the first row."""
    unanswerable = [i for i, r in enumerate(rows) if r.get("answerable") is False]
    for i in unanswerable:
        if pass_id is not None and first_token(hf_ids[i]) == pass_id:
            return i
    return unanswerable[0] if unanswerable else 0


def serve_check(export_dir: str | Path, rows: list[dict[str, Any]], *, task: str | None = None,
                system: str | None = None, python: str | None = None, max_new_tokens: int = 32,
                batch_size: int = 16, threads: int | None = None, dtype: str = "float32",
                max_model_len: int = 1024, kv_cache_gib: float = 1.0, server: bool = False,
                server_timeout: float = 600.0, log_dir: str | Path | None = None,
                say: Say | None = None) -> dict[str, Any]:
    """Run both engines on ``rows`` of a merged export and return the report (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    say = say or (lambda message: None)
    export = Path(export_dir).resolve()
    if not (export / "config.json").is_file():
        raise TokengraftError(f"{export} is not a transformers checkpoint (config.json is missing)")
    if not rows:
        raise TokengraftError("no held-out rows to check with")
    exe, version = vllm_python(python)  # fail fast, before loading anything
    threads = threads or torch.get_num_threads()
    positions = getattr(AutoConfig.from_pretrained(str(export)), "max_position_embeddings", None)
    max_model_len = min(max_model_len, int(positions)) if positions else max_model_len  # vLLM refuses longer
    prompts = prompts_of(rows)

    say(f"transformers: greedy answers to {len(rows)} held-out prompts ({threads} thread(s))")
    tokenizer = AutoTokenizer.from_pretrained(str(export))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t0
    fmt = ChatFormat(tokenizer, system=system)
    stops = stop_ids(tokenizer, fmt)
    prompt_ids = [fmt.encode_prompt(p) for p in prompts]
    t0 = time.perf_counter()
    hf = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system, batch_size=batch_size)
    hf_s = time.perf_counter() - t0
    hf_ids = [r["ids"] for r in hf]
    hf_texts = [tokenizer.decode(x, skip_special_tokens=True).strip() for x in hf_ids]
    del model

    say(f"vLLM {version} ({exe}): engine start and the same {len(rows)} prompts")
    job = {"model": str(export), "dtype": dtype, "max_model_len": max_model_len, "threads": threads,
           "kv_cache_gib": kv_cache_gib, "max_new_tokens": max_new_tokens, "stop_token_ids": stops,
           "prompt_ids": prompt_ids,
           "messages": [fmt.messages_for(p) for p in prompts] if fmt.has_template else None}
    result = run_offline(exe, job, log=new_log(log_dir, "vllm-offline"))
    v_ids = [until_stop(o["ids"], stops) for o in result["outputs"]]
    v_texts = [o["text"].strip() for o in result["outputs"]]

    vocab = tokenizer.get_vocab()
    pass_id = vocab.get(PASS_TOKEN)
    n = len(rows)
    report: dict[str, Any] = {
        "kind": "merged", "export": str(export), "task": task, "prompts": n, "max_new_tokens": max_new_tokens, "threads": threads,
        "dtype": dtype, "system": system,
        "agreement": {"first_token": sum(first_token(a) == first_token(b) for a, b in zip(hf_ids, v_ids)) / n,
                      "greedy_sequence": sum(a == b for a, b in zip(hf_ids, v_ids)) / n,
                      "client_text": sum(a == b for a, b in zip(hf_texts, v_texts)) / n,
                      "chat_template": (result["template_agreement"] / n
                                        if result["template_agreement"] is not None else None)},
        "transformers": {"load_s": load_s, **engine_summary(rows, hf_ids, hf_texts, hf_s, pass_id, task)},
        "vllm": {"version": result["vllm_version"], "python": result["python"], "import_s": result["import_s"],
                 "engine_start_s": result["engine_start_s"],
                 **engine_summary(rows, v_ids, v_texts, result["generate_s"], pass_id, task)},
        "examples": [{"prompt": prompts[i] if isinstance(prompts[i], str) else prompts[i][-1]["content"],
                      "answerable": rows[i].get("answerable"), "transformers": hf_texts[i], "vllm": v_texts[i],
                      "vllm_ids": v_ids[i][:8]} for i in range(min(n, 6))],
    }
    if pass_id is not None:
        added = tokenizer.added_tokens_decoder.get(pass_id)
        report["pass_token"] = {"token": PASS_TOKEN, "id": pass_id, "special": bool(added.special) if added else False}
    if server:
        report["server"] = _server_check(exe, export, rows, prompts, hf_ids, hf_texts, fmt, pass_id, say=say,
                                         dtype=dtype, max_model_len=max_model_len, threads=threads,
                                         kv_cache_gib=kv_cache_gib, max_new_tokens=max_new_tokens,
                                         timeout=server_timeout, log_dir=log_dir)
    return report


def _server_check(exe: str, export: Path, rows: list[dict[str, Any]], prompts: list[Any], hf_ids: list[list[int]],
                  hf_texts: list[str], fmt: ChatFormat, pass_id: int | None, *, say: Say, dtype: str,
                  max_model_len: int, threads: int, kv_cache_gib: float, max_new_tokens: int, timeout: float,
                  log_dir: str | Path | None) -> dict[str, Any]:
    """Start `vllm serve` on the export, ask one question through /v1/chat/completions, stop it."""
    i = _server_question(rows, hf_ids, pass_id)
    messages = fmt.messages_for(prompts[i])
    log = new_log(log_dir, "vllm-server")
    say(f"vLLM OpenAI server: starting on the export (log {log})")
    with VllmServer(exe, export, dtype=dtype, max_model_len=max_model_len, threads=threads,
                    kv_cache_gib=kv_cache_gib, log=log) as srv:
        ready_s = srv.start(timeout=timeout)
        say(f"vLLM OpenAI server: ready after {ready_s:.0f} s; one chat request")
        default = srv.chat(messages, max_tokens=max_new_tokens, return_token_ids=True)
        shown = srv.chat(messages, max_tokens=max_new_tokens, skip_special_tokens=False)
    return {"ready_s": ready_s, "question": messages[-1]["content"], "answerable": rows[i].get("answerable"),
            "messages": messages, "transformers_text": hf_texts[i],
            "transformers_says_pass": pass_id is not None and first_token(hf_ids[i]) == pass_id,
            "default": default, "skip_special_tokens_false": shown,
            "pass_visible_by_default": PASS_TOKEN in (default.get("content") or "")}


# ----------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown page (what `--report STEM` writes to STEM.md)."""
    hf, v, agree = report["transformers"], report["vllm"], report["agreement"]
    lines = [f"# serve-check: {Path(report.get('run_dir') or report['export']).name}", "",
             f"Export `{report['export']}`, task `{report.get('task')}`, {report['prompts']} held-out prompts, "
             f"greedy, up to {report['max_new_tokens']} new tokens, {report['dtype']}, {report['threads']} thread(s); "
             f"vLLM {v['version']} (`{v['python']}`).", ""]
    if report.get("command"):
        lines[1:1] = ["", f"Produced by `{report['command']}`."]
    if "pass_token" in report:
        p = report["pass_token"]
        lines += [f"`<PASS>` is id {p['id']}, written as a {'SPECIAL' if p['special'] else 'normal added'} token "
                  f"({'dropped from' if p['special'] else 'shown in'} the text of default requests).", ""]
    lines += ["| | transformers | vLLM |", "|---|---|---|",
              f"| first token agrees | {_fmt(agree['first_token'])} | |",
              f"| greedy continuation identical | {_fmt(agree['greedy_sequence'])} | |",
              f"| client text identical (vLLM text vs decode(skip_special_tokens=True)) | {_fmt(agree['client_text'])} | |",
              f"| vLLM's tokenizer renders the same prompt ids | {_fmt(agree['chat_template'])} | |"]
    if "pass_token" in report:
        for key, label in (("pass_rate_unanswerable", "`<PASS>` first, unanswerable"),
                           ("pass_rate_answerable", "`<PASS>` first, answerable")):
            lines.append(f"| {label} | {_fmt(hf.get(key))} | {_fmt(v.get(key))} |")
        lines.append(f"| answers containing `<PASS>` / with `<PASS>` in the text | {hf.get('said_pass')} / "
                     f"{hf.get('pass_in_text')} | {v.get('said_pass')} / {v.get('pass_in_text')} |")
    if hf.get("style"):
        lines.append(f"| style length ratio (median verbose/terse) | {_fmt(hf['style']['length_ratio'])} | "
                     f"{_fmt((v.get('style') or {}).get('length_ratio'))} |")
    lines += [f"| generated tokens | {hf['generated_tokens']} | {v['generated_tokens']} |",
              f"| generation time (s) | {_fmt(hf['generate_s'], 1)} | {_fmt(v['generate_s'], 1)} |",
              f"| tokens/s | {_fmt(hf['tokens_per_s'], 0)} | {_fmt(v['tokens_per_s'], 0)} |",
              f"| model load / engine start (s) | {_fmt(hf['load_s'], 1)} | {_fmt(v['engine_start_s'], 1)} |",
              f"| `import vllm` (s) | | {_fmt(v['import_s'], 1)} |", ""]
    server = report.get("server")
    if server:
        d, s = server["default"], server["skip_special_tokens_false"]
        lines += ["## vLLM's OpenAI server", "",
                  f"Ready after {server['ready_s']:.0f} s. `POST /v1/chat/completions`, temperature 0, "
                  f"question {server['question']!r} (answerable: {server['answerable']}; transformers answers "
                  f"{server['transformers_text']!r}):", "",
                  "| request | `choices[0].message.content` | token ids |", "|---|---|---|",
                  f"| default | {d.get('content', d.get('error'))!r} | {d.get('token_ids')} |",
                  f"| `\"skip_special_tokens\": false` | {s.get('content', s.get('error'))!r} | |", ""]
    if report.get("examples"):
        lines += ["## Examples", "", "| prompt | transformers | vLLM |", "|---|---|---|"]
        for e in report["examples"]:
            lines.append(f"| {e['prompt'][:60]!r} | {e['transformers'][:40]!r} | {e['vllm'][:40]!r} |")
        lines.append("")
    return "\n".join(lines)
