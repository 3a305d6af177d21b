"""Test-wide settings: offline, and one torch thread.

The tests use toy-sized models whose matmuls are too small to gain from a second
thread; on a shared 2-core machine two threads per process mostly add contention.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
