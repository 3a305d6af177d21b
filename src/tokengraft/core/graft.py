"""Put it together: add tokens, apply methods, make the right rows trainable.

One entry point, ``graft(model, tokenizer, settings, method_specs)``, used by
training, loading and the benchmarks, so every path builds the model the same
way. Three backends train the same token rows:

- ``rows``  (default) our row-sparse overlay (rows.py): O(n x hidden) extra memory;
- ``peft``  PEFT's trainable tokens (``TrainableTokensConfig``) on the resized matrices;
- ``full``  the references' ``modules_to_save`` on the input and output embeddings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from tokengraft.config import TokensConfig, expansion_tokens, read_token_file
from tokengraft.constants import BACKENDS, Backend, Side
from tokengraft.core.arch import describe, is_tied
from tokengraft.core.rows import RowGraft, attach_rows, existing_rows, tied_sides_error
from tokengraft.core.vocab import AddReport, add_tokens, expand_chat_template
from tokengraft.data import ensure_chat_template
from tokengraft.errors import TokengraftError
from tokengraft.methods import MethodsState, apply_methods, build_spec, load_methods, unwrap_peft
from tokengraft.models import fingerprint


@dataclass
class TokenSettings:
    """The recipe's ``tokens`` section resolved for `graft`: the final token list, and each side's init.

    Not a second schema: a recipe's settings come from `token_settings` (the one
    conversion), which reads ``add_file``, applies ``word_start`` and splits ``init`` into
    its two sides. Built directly (tests, benchmarks, step-0 evaluation) it keeps the
    library defaults below, which differ from a recipe's on purpose: normal (not special)
    tokens, and the output side initialised like the input side. A run directory's
    ``graft.json`` stores these fields as its ``settings``, and loading rebuilds them from
    there, so their names are a file format.
    """

    add: list[str]
    special: bool = False
    init_input: str | dict[str, str] = "mean"
    init_output: str | dict[str, str] | None = None  # None: as init_input
    init_text: dict[str, str] = field(default_factory=dict)
    train_existing: list[str | int] = field(default_factory=list)
    sides: Side = "both"
    backend: Backend = "rows"
    pad_to_multiple_of: int | None = None
    spherical_scale: float = 1.5
    single_word: bool = False
    expand: dict[str, int] = field(default_factory=dict)  # token -> hidden tokens after it (``tokens.expand``)


def token_settings(tokens: TokensConfig, extra_tokens: list[str] | None = None) -> TokenSettings:
    """The recipe's ``tokens`` section as graft settings (``extra_tokens``: added by the task, e.g. mined words).

    A ``tokens.expand`` entry's hidden tokens follow their token in ``add`` and start from
    its init (same strategy, same ``init_text``).
    """
    add = list(tokens.add) + list(extra_tokens or [])
    if tokens.add_file:
        add += [t for t in read_token_file(tokens.add_file) if t not in add]
    if tokens.word_start:
        add = list(dict.fromkeys(t if t.startswith(" ") else " " + t for t in add))
    hidden = {t: expansion_tokens(t, n) for t, n in tokens.expand.items()}
    add = [name for t in add for name in [t, *hidden.get(t, [])]]
    init_text = dict(tokens.init_text)
    init_text.update({name: init_text[t] for t, names in hidden.items() if t in init_text for name in names})
    return TokenSettings(
        add=add, special=tokens.special, init_input=_expanded_init(tokens.init.input, hidden),
        init_output=_expanded_init(tokens.init.output, hidden), init_text=init_text,
        train_existing=list(tokens.train_existing), sides=tokens.sides, backend=tokens.backend,
        pad_to_multiple_of=tokens.pad_to_multiple_of, spherical_scale=tokens.spherical_scale,
        single_word=tokens.single_word, expand=dict(tokens.expand),
    )


def _expanded_init(init: str | dict[str, str], hidden: dict[str, list[str]]) -> str | dict[str, str]:
    """A per-token init mapping with each hidden token mapped like its token (a single strategy covers them already)."""
    if isinstance(init, str):
        return init
    default = init.get("*", "mean")
    return {**init, **{name: init.get(t, default) for t, names in hidden.items() for name in names}}


def listed_tokens(settings: TokenSettings) -> list[str]:
    """The tokens a recipe names (``add`` without the hidden ``tokens.expand`` tokens): aLoRA's default invocation."""
    hidden = {name for t, n in settings.expand.items() for name in expansion_tokens(t, n)}
    return [t for t in settings.add if t not in hidden]


@dataclass
class Graft:
    """A model with grafted tokens, ready to train or generate."""

    model: Any  # possibly PEFT-wrapped
    tokenizer: Any
    settings: TokenSettings
    report: AddReport
    trainable_ids: list[int]
    rows: RowGraft | None = None  # rows backend
    methods: MethodsState | None = None  # what the methods made trainable, when methods were applied
    method_configs: list[dict] = field(default_factory=list)
    base_fingerprint: str = ""

    @property
    def hf_model(self) -> Any:
        return unwrap_peft(self.model)

    def token_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that hold token rows (they get their own learning rate)."""
        if self.rows is not None:
            return self.rows.parameters()
        names = ("trainable_tokens_delta", "modules_to_save")
        return [p for n, p in self.model.named_parameters() if p.requires_grad and any(k in n for k in names)]

    def token_rows(self) -> dict[str, torch.Tensor]:
        """Current trained rows by id, whatever the backend: {"ids", "input", "output"?}."""
        if self.rows is not None:
            return self.rows.state_dict()
        ids = torch.tensor(sorted(self.trainable_ids), dtype=torch.long)
        embedding, head = effective_matrices(self.model)
        state = {"ids": ids, "input": embedding[ids].detach().float().cpu().contiguous()}
        if head is not None and head is not embedding:
            state["output"] = head[ids].detach().float().cpu().contiguous()
        return state


def resolve_existing_ids(tokenizer: Any, items: list[str | int]) -> list[int]:
    """Ids of ``tokens.train_existing`` entries (token strings or ids), refusing any the tokenizer lacks."""
    ids = []
    vocab = tokenizer.get_vocab()
    for item in items:
        if isinstance(item, int):
            if not 0 <= item < len(tokenizer):
                raise TokengraftError(f"tokens.train_existing id {item} is outside the tokenizer (0..{len(tokenizer) - 1})")
            ids.append(item)
        elif item in vocab:
            ids.append(vocab[item])
        else:
            raise TokengraftError(f"tokens.train_existing lists {item!r}, which is not a token of this tokenizer")
    return ids


def _module_name(model: Any, module: Any) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise TokengraftError("could not locate the embedding module by identity")


def effective_matrices(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The matrices the model computes with, seeing through PEFT wrappers (trainable tokens, modules_to_save).

    On a tied model the head is the embedding's matrix (the same tensor object).
    """
    hf = unwrap_peft(model)

    def matrix(module: Any) -> torch.Tensor | None:
        if module is None:
            return None
        if hasattr(module, "get_merged_weights"):  # PEFT TrainableTokensLayer
            return module.get_merged_weights(module.active_adapters)
        if hasattr(module, "modules_to_save"):  # PEFT ModulesToSaveWrapper
            return next(iter(module.modules_to_save.values())).weight
        return module.weight

    embedding = matrix(hf.get_input_embeddings())
    head = embedding if is_tied(hf) else matrix(hf.get_output_embeddings())
    return embedding, head


def apply_method_configs(model: Any, tokenizer: Any, method_configs: list[dict],
                         run_dir: str | None, tokens: list[str] | None = None) -> tuple[Any, MethodsState | None]:
    """Freeze the base, then apply each configured method (loading its weights from ``run_dir`` when given).

    ``tokens`` are the tokens the recipe grafts (``tokens.add``): what a method that names
    tokens (aLoRA's invocation) resolves against the tokenizer by default.
    """
    if not method_configs:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model, None
    specs = [build_spec(dict(c)).bind(tokenizer, list(tokens or [])) for c in method_configs]
    arch = describe(model, tokenizer)
    if run_dir is not None:
        return load_methods(model, arch, specs, run_dir)
    return apply_methods(model, arch, specs)


def graft(
    model: Any,
    tokenizer: Any,
    settings: TokenSettings,
    method_configs: list[dict] | None = None,
    *,
    seed: int = 0,
    verbose: bool = True,
    methods_dir: str | None = None,
) -> Graft:
    """Add the tokens, apply the methods, and leave exactly the intended parameters trainable.

    ``method_configs`` are the recipe's ``methods`` entries (dicts with a ``type``);
    ``methods_dir`` loads their trained weights from a run directory instead of
    initialising them.
    """
    if settings.backend not in BACKENDS:
        raise TokengraftError(f"tokens.backend is {settings.backend!r}; use one of {', '.join(BACKENDS)}")
    if settings.sides != "both" and is_tied(model):
        raise tied_sides_error(settings.sides)  # before anything is added: the tokenizer stays untouched
    base_fingerprint = fingerprint(model)
    # A base model without a chat template trains in the plain format; the run's tokenizer records it (it renders
    # exactly what the tokenizer rendered without it, so stamping it early changes nothing if a check below fails).
    ensure_chat_template(tokenizer)
    if settings.expand:  # before any token is added: a template that cannot take it leaves the tokenizer untouched
        expand_chat_template(tokenizer, settings.expand)
    resize = settings.backend != "rows"
    report = add_tokens(
        model, tokenizer, settings.add, special=settings.special, init=settings.init_input,
        output_init=settings.init_output, init_text=settings.init_text,
        pad_to_multiple_of=settings.pad_to_multiple_of, resize=resize, single_word=settings.single_word,
        seed=seed, spherical_scale=settings.spherical_scale, verbose=verbose,
    )
    existing = [i for i in resolve_existing_ids(tokenizer, settings.train_existing) if i not in report.new_ids]
    trainable_ids = sorted(set(report.new_ids) | set(existing))
    if not trainable_ids:
        raise TokengraftError(
            "every token in tokens.add is already in the vocabulary and tokens.train_existing is empty: "
            "nothing to graft; list the existing tokens under tokens.train_existing to train their rows"
        )

    listed = listed_tokens(settings)
    result = Graft(model=model, tokenizer=tokenizer, settings=settings, report=report,
                   trainable_ids=trainable_ids, base_fingerprint=base_fingerprint,
                   method_configs=[dict(c) for c in method_configs or []])
    if settings.backend == "rows":
        model, result.methods = apply_method_configs(model, tokenizer, method_configs or [], methods_dir, listed)
        result.model = model
        result.rows = attach_row_graft(model, report, existing, settings)
    elif settings.backend == "peft":
        _inject_trainable_tokens(model, trainable_ids, settings.sides)
        model, result.methods = apply_method_configs(model, tokenizer, method_configs or [], methods_dir, listed)
        result.model = model
        for name, parameter in model.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.requires_grad_(True)
    else:
        model, result.methods = apply_method_configs(model, tokenizer, method_configs or [], methods_dir, listed)
        result.model = model
        _wrap_modules_to_save(model, settings.sides, trainable_ids)
    return result


def attach_row_graft(model: Any, report: AddReport, existing: list[int], settings: TokenSettings) -> RowGraft:
    """The rows backend: attach trainable rows for the new ids (init from ``report``) and the ``existing`` ids."""
    ids = list(report.new_ids)
    init_in = report.init_input if report.init_input is not None else torch.empty(0)
    init_out = report.init_output
    if existing:
        ex_in, ex_out = existing_rows(model, existing)
        ids += existing
        init_in = torch.cat([init_in.reshape(-1, ex_in.shape[1]), ex_in]) if len(report.new_ids) else ex_in
        if ex_out is not None:
            init_out = torch.cat([init_out, ex_out]) if init_out is not None else ex_out
    return attach_rows(model, ids, init_in, init_out, sides=settings.sides, total_rows=report.final_rows)


def _inject_trainable_tokens(model: Any, ids: list[int], sides: str) -> None:
    """PEFT's own trainable-tokens layer on the (already resized) matrices."""
    from peft import TrainableTokensConfig, inject_adapter_in_model

    hf = unwrap_peft(model)
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    tied = is_tied(hf)
    targets = []
    if sides in ("both", "input") or tied:
        targets.append(_module_name(hf, embedding).split(".")[-1])
    if head is not None and not tied and sides in ("both", "output"):
        targets.append(_module_name(hf, head).split(".")[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about tied adapters; tying is what we want here
        inject_adapter_in_model(TrainableTokensConfig(target_modules=targets, token_indices=ids), hf)


def _wrap_modules_to_save(model: Any, sides: str, trainable_ids: list[int]) -> None:
    """The references' way: whole embedding matrices trainable through PEFT's ModulesToSaveWrapper.

    On a tied model the head is re-pointed at the trainable copy of the embedding
    so tying survives (PEFT alone would train two diverging copies). The copies'
    gradients are masked to ``trainable_ids`` (reference 004's gradient mask), so
    this backend teaches the same tokens as the others and leaves every other
    row untouched (with weight decay 0 on the token group, as train.py sets);
    the full vocab x hidden gradient is still allocated, which is its cost.
    """
    from peft.utils import ModulesToSaveWrapper

    hf = unwrap_peft(model)
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    tied = is_tied(hf)
    names = []
    if sides in ("both", "input") or tied:
        names.append(_module_name(hf, embedding))
    if head is not None and not tied and sides in ("both", "output"):
        names.append(_module_name(hf, head))
    for name in names:  # what PEFT does for LoraConfig(modules_to_save=...), on any model
        parent_name, _, child = name.rpartition(".")
        parent = hf.get_submodule(parent_name)
        wrapper = ModulesToSaveWrapper(getattr(parent, child), "default")
        wrapper.set_adapter("default", inference_mode=False)
        setattr(parent, child, wrapper)
    if tied:
        wrapper = hf.get_input_embeddings()
        head.weight = next(iter(wrapper.modules_to_save.values())).weight
    seen: set[int] = set()
    for module in (hf.get_input_embeddings(), hf.get_output_embeddings()):
        copies = getattr(module, "modules_to_save", None)
        if copies is None:
            continue
        weight = next(iter(copies.values())).weight
        if id(weight) in seen:  # tied: one copy, one hook
            continue
        seen.add(id(weight))
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[torch.tensor(trainable_ids, dtype=torch.long, device=weight.device)] = 1.0
        weight.register_hook(lambda grad, mask=mask: grad * mask)
