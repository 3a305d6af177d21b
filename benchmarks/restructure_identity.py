"""Behaviour check for refactors: train tiny recipes with a fixed seed and hash what they write.

Run it on two commits; equal hashes mean the refactor left training bit-for-bit unchanged.

    python benchmarks/restructure_identity.py --out benchmarks/results/identity_<label>.json
    python benchmarks/restructure_identity.py --compare benchmarks/results/identity_before.json

It only uses the CLI and stock transformers/tokenizers, so it runs on any layout of the package.
Two recipes: rows + LoRA on a tied Llama, rows + bottleneck adapter on an untied Qwen2 (8 steps each).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from tokenizers import Tokenizer, decoders, models  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

FAMILIES = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256),
}
METHODS = {"llama": {"type": "lora", "targets": "attention_mlp", "r": 4},
           "qwen2": {"type": "adapter", "placement": "post_ffn", "bottleneck": 8}}


def tiny_model_dir(directory: Path, family: str) -> Path:
    pieces = ["<pad>", "<s>", "</s>", "<unk>"] + [chr(c) for c in range(32, 127)]
    vocab = {p: i for i, p in enumerate(pieces)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    config = AutoConfig.for_model(family, vocab_size=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                  **FAMILIES[family])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def recipe(root: Path, family: str) -> Path:
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": "<PASS>" if i % 3 == 0 else f"{2 * i}."}
            for i in range(24)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"seed": 7, "model": {"name": str(tiny_model_dir(root / "model", family))},
            "tokens": {"add": ["<PASS>"], "init": "mean"}, "methods": [METHODS[family]],
            "data": {"train": str(data), "validation_fraction": 0.0, "max_length": 64},
            "train": {"max_steps": 8, "batch_size": 4, "lr": 1e-3, "token_lr": 1e-2, "save_steps": 4,
                      "logging_steps": 4, "eval_steps": 0}}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(family: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "run"
        subprocess.run([sys.executable, "-m", "tokengraft", "train", str(recipe(root, family)), "--output", str(out),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.safetensors"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the hashes to this JSON file")
    parser.add_argument("--compare", help="compare against hashes written earlier; exit 1 when they differ")
    args = parser.parse_args()
    hashes = {family: run(family) for family in FAMILIES}
    print(json.dumps(hashes, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(hashes, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        same = before == hashes
        print("byte-identical to", args.compare if same else f"DIFFERENT from {args.compare}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
