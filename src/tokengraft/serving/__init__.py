"""Serving checks: run an export with vLLM (in its own interpreter) and compare with transformers.

- ``check``: `serve_check` (offline engine vs transformers on held-out prompts, task metrics,
  tokens/s, optionally one request to vLLM's OpenAI server) and the markdown report;
- ``runner``: the vLLM child processes (the offline worker, the OpenAI server);
- ``vllm_worker``: the script the vLLM interpreter runs (standard library + vLLM only).

An engine beside evaluation and export: it reads a merged checkpoint; ``tokengraft.api`` makes
that checkpoint from a run directory first.
"""
