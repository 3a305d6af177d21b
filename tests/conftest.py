"""Test-wide settings: offline, one torch thread, a throwaway answers cache.

The tests use toy-sized models whose matmuls are too small to gain from a second
thread; on a shared 2-core machine two threads per process mostly add contention.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI picks its thread count from the idle cores (threads.choose_threads): tests keep one,
# even when the shell exports more for benchmarks. A second intra-op thread in this process
# would also deadlock the training children test_run_dir_safety.py forks from it (a forked
# child inherits OpenMP's pool state but not its worker threads).
os.environ["TOKENGRAFT_THREADS"] = "1"
# Tiny models' answers must not land in the user's answers cache (answer_cache.py).
if "TOKENGRAFT_ANSWER_CACHE" not in os.environ:
    os.environ["TOKENGRAFT_ANSWER_CACHE"] = tempfile.mkdtemp(prefix="tokengraft-test-answers-")
    atexit.register(shutil.rmtree, os.environ["TOKENGRAFT_ANSWER_CACHE"], True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
