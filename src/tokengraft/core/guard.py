"""Refuse the setups that fail silently, and say what will train.

Every reference lost time to a run that trained but taught nothing: embeddings
left frozen by a wrong ``modules_to_save`` name, a token the tokenizer split, a
method that matched no module. Three checks, from cheapest to most concrete:

- ``check_recipe_on_model`` checks a recipe against its model's structure on the meta
  device (no weights read): method targets, block ranges, existing tokens;
- ``preflight`` checks the assembled model (not the config's intent) and raises one
  clear error;
- ``audit`` counts trainable parameters by role so the user sees what is actually
  being trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokengraft.config import Recipe
from tokengraft.core.arch import describe
from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import load_config_model, load_tokenizer
from tokengraft.quantization import check_placement, logical_numel


def check_recipe_on_model(recipe: Recipe) -> list[str]:
    """The recipe's model-dependent checks, on the meta device: no weights are read.

    Run after ``config.validate_recipe`` (``tokengraft validate --check-model``). Each
    method's ``check`` resolves where its parameters would go (raising on LoRA names that
    do not exist, top_k past the depth, BitFit without biases); then the tokens are
    checked against the tokenizer. Returns notes about legal but noteworthy settings.
    """
    notes: list[str] = []
    model = load_config_model(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    arch = describe(model)
    for i, spec in enumerate(recipe.methods):
        try:
            spec.check(model, arch)
        except TokengraftError as exc:
            raise TokengraftError(f"methods[{i}] ({spec.type}) on {recipe.model.name}: {exc}") from None
    try:
        tokenizer = load_tokenizer(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    except TokengraftError as exc:  # e.g. a config-only directory: training will refuse it with this message
        return notes + [f"tokenizer checks skipped: {exc}"]
    vocab = tokenizer.get_vocab()
    for i, item in enumerate(recipe.tokens.train_existing):
        if isinstance(item, int) and item >= len(tokenizer):
            raise TokengraftError(f"tokens.train_existing[{i}] is id {item}, past the tokenizer's {len(tokenizer)} tokens")
        if isinstance(item, str) and item not in vocab:
            raise TokengraftError(f"tokens.train_existing[{i}] {item!r} is not a token of {recipe.model.name}; "
                                  "list new tokens under tokens.add")
    known = [tok for tok in recipe.tokens.all_tokens() if tok in vocab]
    if known:
        notes.append(f"{len(known)} token(s) already exist in the vocabulary and keep their ids (e.g. {known[0]!r})")
    return notes


def _trains(module: Any) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


def preflight(g: Graft) -> None:
    """Raise ``TokengraftError`` when the graft would train silently wrong."""
    hf = unwrap_peft(g.model)
    tokenizer = g.tokenizer
    rows = g.report.final_rows
    if len(tokenizer) > rows:
        raise TokengraftError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model has {rows:,} embedding rows; "
            "ids past the matrix would index out of range (resize the model or use the matching tokenizer)"
        )
    for token in g.settings.add:
        pieces = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise TokengraftError(
                f"token {token!r} is split into {len(pieces)} pieces by the tokenizer: it was not added as one token"
            )
    check_placement(g.model)  # a quantized base split over GPU + CPU/disk cannot train
    # When nothing trains at all, say so rather than blaming one side.
    if not any(p.requires_grad for p in g.model.parameters()):
        raise TokengraftError("nothing is trainable: no token rows and no method selected any parameter")
    sides = g.settings.sides
    if sides in ("both", "input") and not _trains(hf.get_input_embeddings()):
        raise TokengraftError(
            "the new tokens' INPUT rows are frozen: the model could not learn to READ them "
            "(the silent failure of a wrong modules_to_save name); check tokens.backend"
        )
    if sides in ("both", "output") and hf.get_output_embeddings() is not None and not _trains(hf.get_output_embeddings()):
        raise TokengraftError(
            "the new tokens' OUTPUT rows are frozen: the model could not learn to WRITE them; check tokens.backend"
        )
    if g.rows is not None:
        missing = sorted(set(g.trainable_ids) - set(g.rows.ids.tolist()))
        if missing:
            raise TokengraftError(f"token ids {missing} have no trainable row")


@dataclass
class Audit:
    """Trainable parameters by role, against the base model's size."""

    by_role: dict[str, int]
    total_model: int

    @property
    def trainable(self) -> int:
        return sum(self.by_role.values())

    def to_dict(self) -> dict[str, Any]:
        return {"trainable_by_role": self.by_role, "trainable": self.trainable, "model_parameters": self.total_model,
                "trainable_pct": round(100.0 * self.trainable / max(1, self.total_model), 4)}

    def table(self) -> str:
        lines = ["trainable parameters by role:"]
        for role, count in self.by_role.items():
            lines.append(f"  {role:<12} {count:>14,}  {100.0 * count / max(1, self.total_model):8.4f} %")
        lines.append(f"  {'total':<12} {self.trainable:>14,}  {100.0 * self.trainable / max(1, self.total_model):8.4f} %"
                     f"  of {self.total_model:,}")
        return "\n".join(lines)


def _role(name: str, token_ids: set[int], parameter: Any) -> str:
    if id(parameter) in token_ids:
        return "token rows"
    if "lora_" in name:
        return "lora"
    if "tokengraft_adapters" in name:
        return "adapters"
    if "prompt_encoder" in name or "prefix" in name:
        return "prefix"
    return "other"


def audit(g: Graft) -> Audit:
    token_ids = {id(p) for p in g.token_parameters()}
    by_role: dict[str, int] = {"token rows": 0, "lora": 0, "adapters": 0, "prefix": 0, "other": 0}
    seen: set[int] = set()
    total = 0
    for name, parameter in g.model.named_parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if parameter.requires_grad:
            by_role[_role(name, token_ids, parameter)] += parameter.numel()
        elif "lora_" not in name:
            total += logical_numel(parameter)  # a packed 4-bit weight holds two weights per stored byte
    return Audit(by_role={k: v for k, v in by_role.items() if v}, total_model=total)
