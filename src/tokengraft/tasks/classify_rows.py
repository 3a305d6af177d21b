"""Classification rows (``{"text", "label"}``) as model inputs: parsed, encoded and batched.

Training and evaluation of ``task: classification`` both read rows this way, so
truncation, the pad-token refusal and the padding side are the same in both.

Padding: the classifier picks the rightmost token that is not the config's pad id,
so batches are right-padded with exactly that id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tokengraft.data import Example
from tokengraft.errors import TokengraftError
from tokengraft.tasks.classify_data import LabelSet


@dataclass
class Row:
    text: str
    label: Any
    where: str
    meta: dict[str, Any] = field(default_factory=dict)


def as_rows(rows: list[Any], source: str) -> list[Row]:
    """Generated dicts or parsed JSONL examples (data.py's ``text`` form) as classification rows."""
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, Example):
            if r.kind != "text" or "label" not in r.meta:
                raise TokengraftError(f"{r.where}: a classification row is {{\"text\": ..., \"label\": ...}}; "
                                      f"this one is a {r.kind} row" + ("" if "label" in r.meta else " without 'label'"))
            out.append(Row(r.completion, r.meta["label"], r.where, dict(r.meta)))
            continue
        where = f"{source} row {i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or "label" not in r:
            raise TokengraftError(f"{where}: a classification row needs a string 'text' and a 'label'")
        if not r["text"].strip():
            raise TokengraftError(f"{where}: empty 'text'")
        out.append(Row(r["text"], r["label"], where, {k: v for k, v in r.items() if k != "text"}))
    return out


def encode_rows(rows: list[Row], tokenizer: Any, labels: LabelSet, max_length: int,
                on_overflow: str = "drop", pad_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """``[{"input_ids", "labels", "row"}]`` (``row`` indexes ``rows``) and the number dropped as too long.

    ``truncate_prompt`` keeps the LAST ``max_length`` tokens: the classifier reads the
    final position, so the end of the text is the part that must survive. A text ending
    in the pad token (``pad_id``) is refused: the classifier would skip that token and
    silently read an earlier position.
    """
    items: list[dict[str, Any]] = []
    dropped = 0
    ids = tokenizer([r.text for r in rows])["input_ids"] if rows else []
    for index, (row, seq) in enumerate(zip(rows, ids)):
        label = labels.to_id(row.label, row.where)
        if not seq:
            raise TokengraftError(f"{row.where}: the text tokenizes to nothing")
        if len(seq) > max_length:
            if on_overflow == "error":
                raise TokengraftError(f"{row.where}: {len(seq)} tokens, more than data.max_length {max_length}; "
                                      "raise data.max_length or set data.on_overflow: drop")
            if on_overflow == "drop":
                dropped += 1
                continue
            seq = seq[-max_length:]
        if pad_id is not None and seq[-1] == pad_id:
            raise TokengraftError(f"{row.where}: the text ends with the pad token {tokenizer.convert_ids_to_tokens(pad_id)!r}, "
                                  "which the classifier skips when it looks for the last token; remove it from the text")
        items.append({"input_ids": list(seq), "labels": label, "row": index})
    return items, dropped


class ClassificationCollator:
    """Right-pads ``input_ids`` with the classifier's pad id; ``labels`` become a [B] tensor."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise TokengraftError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)  # [B, T]
        attention = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)  # [B]
        return batch
