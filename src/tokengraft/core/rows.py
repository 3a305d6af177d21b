"""Row-sparse trainable token rows.

The base embedding and head stay frozen. Only the rows of the tokens we teach
(new ids, plus existing ids the user lists) are parameters, held in small
``[n, hidden]`` tensors:

- input side: look up the frozen matrix, then overwrite the positions whose id
  is trainable with the trained row (ids past the frozen matrix are clamped
  before the base lookup, then overwritten);
- output side: frozen logits, then the trained rows' logits overwrite the
  columns of ids inside the matrix and are appended for ids past it.

Extra memory and compute are O(n x hidden): no second vocab x hidden matrix is
materialised in forward or backward (reference 004's 1.87 GB gradient came from
exactly that). Tied models share one row set; untied ones train input and
output rows separately. The wrappers are ordinary modules set with
``set_input_embeddings`` / ``set_output_embeddings``, so ``generate`` and PEFT
work unchanged, and no class ``forward`` is patched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tokengraft.constants import SIDES
from tokengraft.core.arch import is_tied
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft


def _slot_table(ids: torch.Tensor, total_rows: int) -> torch.Tensor:
    """id -> slot in the row tensor, -1 for ids that are not trainable."""
    table = torch.full((total_rows,), -1, dtype=torch.long)
    table[ids] = torch.arange(len(ids))
    return table


def _hold_rows(module: nn.Module, rows: nn.Parameter | torch.Tensor) -> None:
    """Trainable rows are a Parameter; a side that does not train keeps its rows as a buffer."""
    if isinstance(rows, nn.Parameter):
        module.rows = rows
    else:
        module.register_buffer("rows", rows, persistent=False)


class RowEmbedding(nn.Module):
    """A frozen embedding whose trainable ids read from a small row tensor."""

    def __init__(self, base: nn.Embedding, ids: torch.Tensor, rows: nn.Parameter | torch.Tensor, total_rows: int):
        super().__init__()
        self.base = base
        self.base_rows, self.hidden_size = base.weight.shape
        self.total_rows = total_rows
        self.register_buffer("ids", ids.clone(), persistent=False)
        self.register_buffer("slot_of", _slot_table(ids, total_rows).to(base.weight.device), persistent=False)
        _hold_rows(self, rows)

    # nn.Embedding look-alikes: code around the model reads these.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.total_rows

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size

    @property
    def padding_idx(self) -> int | None:
        return self.base.padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.numel() and int(input_ids.max()) >= self.total_rows:
            raise TokengraftError(f"token id {int(input_ids.max())} is past the model's {self.total_rows} rows")
        out = self.base(input_ids.clamp(max=self.base_rows - 1))  # [B, T, H], scaled by the base if it scales
        slots = self.slot_of[input_ids]
        mask = slots >= 0
        # No shortcut when no position is trainable (m = 0): the rows stay in the graph and get a zero
        # gradient, as a dense embedding's rows do. Every process then reduces the same set of gradients
        # (DDP without find_unused_parameters; DeepSpeed ZeRO-3 reduce-scatters every parameter and
        # stops on a mismatch), and the optimiser steps them as it steps DeepSpeed's flat partitions.
        picked = self.rows[slots[mask]].to(out.dtype)  # [m, H]
        return out.index_put((mask,), self._scaled(picked))

    def _scaled(self, picked: torch.Tensor) -> torch.Tensor:
        """The base module's own scaling, applied exactly as it applies it to its rows.

        Gemma's scaled embedding returns ``lookup * embed_scale.to(weight.dtype)`` (a float32
        ``sqrt(hidden)`` buffer); the trained rows are stored unscaled like the base matrix,
        so a token's input vector is the same whether its row is here or merged into the base.
        """
        scale = getattr(self.base, "embed_scale", None)
        if isinstance(scale, torch.Tensor):
            return picked * scale.to(self.base.weight.dtype)
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            return picked * scale
        return picked


class RowHead(nn.Module):
    """A frozen LM head whose trainable ids' logits come from a small row tensor."""

    def __init__(self, base: nn.Linear, ids: torch.Tensor, rows: nn.Parameter | torch.Tensor, total_rows: int):
        super().__init__()
        self.base = base
        self.base_rows, self.hidden_size = base.weight.shape
        self.total_rows = total_rows
        inside = ids < self.base_rows
        appended_ids = ids[~inside]
        expected = torch.arange(self.base_rows, total_rows)
        if not torch.equal(appended_ids.cpu(), expected):
            raise TokengraftError("appended token ids must fill the rows past the matrix without gaps")
        self.register_buffer("inside_ids", ids[inside].clone(), persistent=False)
        self.register_buffer("inside_slots", torch.nonzero(inside).flatten(), persistent=False)
        self.register_buffer("appended_slots", torch.nonzero(~inside).flatten(), persistent=False)
        # The frozen bias of the overwritten columns, copied now: under ZeRO-3 / FSDP the base's bias is
        # whole only inside the base's own forward, and this module adds it after that forward returned.
        bias = getattr(base, "bias", None)
        self.register_buffer("inside_bias", bias.detach()[ids[inside]].clone() if bias is not None else None,
                             persistent=False)
        _hold_rows(self, rows)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    @property
    def out_features(self) -> int:
        return self.total_rows

    @property
    def in_features(self) -> int:
        return self.hidden_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)  # [..., V_base]
        extra = hidden @ self.rows.to(hidden.dtype).T  # [..., n]
        if len(self.inside_ids):
            inside = extra.index_select(-1, self.inside_slots)
            if self.inside_bias is not None:
                inside = inside + self.inside_bias.to(inside.dtype)
            logits = logits.index_copy(-1, self.inside_ids, inside.to(logits.dtype))
        if len(self.appended_slots):
            logits = torch.cat([logits, extra.index_select(-1, self.appended_slots).to(logits.dtype)], dim=-1)
        return logits


@dataclass
class RowGraft:
    """The trainable rows attached to a model, and how to save or merge them."""

    ids: torch.Tensor  # [n] sorted token ids
    tied: bool
    sides: str
    input_rows: torch.Tensor  # [n, H]; a Parameter when the input side trains
    output_rows: torch.Tensor | None  # [n, H]; None when tied (the head reads input_rows)
    base_embedding: nn.Embedding
    base_head: nn.Module | None
    total_rows: int

    def parameters(self) -> list[nn.Parameter]:
        params = [t for t in (self.input_rows, self.output_rows) if isinstance(t, nn.Parameter)]
        return list({id(p): p for p in params}.values())

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"ids": self.ids.detach().cpu(), "input": self.input_rows.detach().float().cpu().contiguous()}
        if self.output_rows is not None:
            state["output"] = self.output_rows.detach().float().cpu().contiguous()
        return state

    def detach(self, model: Any) -> None:
        """Put the original frozen modules back (the rows are kept in this object)."""
        hf = unwrap_peft(model)
        hf.set_input_embeddings(self.base_embedding)
        if self.base_head is not None:
            hf.set_output_embeddings(self.base_head)
        _set_vocab_size(hf, self.base_embedding.weight.shape[0])

    def merge_into(self, model: Any) -> None:
        """Write the rows into plain, resized matrices; the model needs no tokengraft code afterwards."""
        self.detach(model)
        hf = unwrap_peft(model)
        embedding = hf.get_input_embeddings()
        if embedding.weight.shape[0] < self.total_rows:
            hf.resize_token_embeddings(self.total_rows, mean_resizing=False)
            embedding = hf.get_input_embeddings()
        head = hf.get_output_embeddings()
        index = self.ids.to(embedding.weight.device)
        with torch.no_grad():
            embedding.weight[index] = self.input_rows.detach().to(embedding.weight)
            if head is not None and not is_tied(hf):
                source = self.output_rows if self.output_rows is not None else self.input_rows
                head.weight[index] = source.detach().to(head.weight)
                if getattr(head, "bias", None) is not None:
                    appended = index[index >= self.base_embedding.weight.shape[0]]
                    head.bias[appended] = 0.0
        _set_vocab_size(hf, embedding.weight.shape[0])


def _set_vocab_size(hf: Any, rows: int) -> None:
    """transformers' loss and generation read the vocabulary size from the config (Gemma: the model too)."""
    hf.config.vocab_size = rows
    if isinstance(getattr(hf, "vocab_size", None), int):
        hf.vocab_size = rows


def tied_sides_error(sides: str) -> TokengraftError:
    """A tied model has one row per token for READ and WRITE: one side alone cannot be trained or exported."""
    return TokengraftError(
        f"tokens.sides is {sides!r} but this model ties its input and output embeddings: each token has one row "
        "that it both READS and WRITES, so one side cannot train alone (nor be saved apart); use tokens.sides: both"
    )


def attach_rows(
    model: Any,
    ids: list[int],
    init_input: torch.Tensor,
    init_output: torch.Tensor | None = None,
    *,
    sides: str = "both",
    total_rows: int | None = None,
) -> RowGraft:
    """Wrap the model's embedding and head so that only the rows of ``ids`` train.

    ``init_input``/``init_output`` are the starting rows [n, H] (``init_output``
    ignored when the model is tied). Call after any PEFT wrapping: PEFT freezes
    every parameter it did not create, and these rows must stay trainable.
    """
    if sides not in SIDES:
        raise TokengraftError(f"tokens.sides is {sides!r}; use one of {', '.join(SIDES)}")
    if not ids:
        raise TokengraftError("no token rows to train: tokens.add and tokens.train_existing are both empty")
    hf = unwrap_peft(model)
    embedding = hf.get_input_embeddings()
    head = hf.get_output_embeddings()
    if isinstance(embedding, RowEmbedding) or isinstance(head, RowHead):
        raise TokengraftError("this model already has token rows attached")
    tied = is_tied(hf)
    if tied and sides != "both":
        raise tied_sides_error(sides)
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    id_tensor = torch.tensor([ids[i] for i in order], dtype=torch.long)
    if len(set(ids)) != len(ids):
        raise TokengraftError("a token id is listed twice among the trainable rows")
    base_rows = embedding.weight.shape[0]
    total = total_rows or max(base_rows, int(id_tensor.max()) + 1)
    device = embedding.weight.device
    if sides != "both":
        warnings.warn(
            f"training only the {sides} rows of the new tokens: the model can "
            + ("READ them but never learns to WRITE them (their output rows stay at init)." if sides == "input"
               else "WRITE them but does not learn what they mean when it READS them (input rows stay at init).")
            + " Use tokens.sides: both unless that is what you want.",
            stacklevel=2,
        )

    def rows_for(init: torch.Tensor, trainable: bool) -> torch.Tensor:
        data = init[order].detach().to(device=device, dtype=torch.float32).clone()
        return nn.Parameter(data, requires_grad=True) if trainable else data

    input_rows = rows_for(init_input, sides in ("both", "input"))
    if tied and sides == "both":
        output_rows = None
        head_rows = input_rows
    else:
        source = init_output if (init_output is not None and not tied) else init_input
        output_rows = rows_for(source, sides in ("both", "output"))
        head_rows = output_rows
    id_device = id_tensor.to(device)
    hf.set_input_embeddings(RowEmbedding(embedding, id_device, input_rows, total))
    if head is not None:
        hf.set_output_embeddings(RowHead(head, id_device, head_rows, total))
    elif sides != "input":
        raise TokengraftError("this model has no output head (get_output_embeddings() is None); use tokens.sides: input")
    _set_vocab_size(hf, total)
    return RowGraft(ids=id_tensor, tied=tied, sides=sides, input_rows=input_rows, output_rows=output_rows,
                    base_embedding=embedding, base_head=head, total_rows=total)


def existing_rows(model: Any, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Current input (and untied output) rows for ids already inside the matrices."""
    hf = unwrap_peft(model)
    embedding = hf.get_input_embeddings()
    head = hf.get_output_embeddings()
    index = torch.tensor(ids, dtype=torch.long, device=embedding.weight.device)
    inp = embedding.weight.detach()[index].float().cpu()
    out = None
    if head is not None and not is_tied(hf):
        out = head.weight.detach()[index].float().cpu()
    return inp, out
