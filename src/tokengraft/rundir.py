"""The run directory's format: its file names, how a graft is saved, read back and restored.

A run directory holds:
- ``graft.json``        base model spec + fingerprint, tokens with ids, backend, methods, version,
                        how the base was quantized (``quantization``, null for full precision)
                        (and, once evaluated, the calibrated ``pass_bias``);
- ``config.yaml``       the effective recipe (when trained from one);
- tokenizer files       with the new tokens and the chat template;
- ``rows.safetensors``  only the trained rows, by id (``ids``, ``input``, ``output`` when untied);
- ``embeddings.safetensors`` the whole matrices, for the ``full`` backend only;
- method weights        written by the methods registry (LoRA, adapters, ...);
- ``labels.json``       a classifier's class names (``task: classification``);
- ``data/``             the splits the run trained and is evaluated on;
- ``metrics.json``, ``dataset_stats.json``, ``log_history.json`` what training and evaluation measured;
- ``phases.json``       wall time of each phase of the `tokengraft demo` that made the run;
- ``snapshots/``        token-row snapshots taken during training (``train.snapshot_steps``);
- ``checkpoint-<step>/`` step checkpoints in this same format (training/checkpoints.py), each with a
                        ``COMPLETE`` manifest of its files (sizes, sha256) written last;
- ``.tokengraft.lock``, ``.tokengraft-owner.json`` the exclusive lock of the training that owns the
                        directory, and who holds it (training/ownership.py).

This module is the one place that knows those names; training, evaluation and
export read and write the directory through it, so the format has one owner.
Loading checks the base fingerprint first (a different base model is a clear
error, not a size-mismatch traceback) and the tokenizer's presence, through one
path for causal LMs (`load_graft`) and classifiers (`load_classifier`), then
restores the trained tensors. Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokengraft import __version__
from tokengraft.config import Recipe, load_recipe
from tokengraft.core.arch import describe
from tokengraft.core.graft import Graft, TokenSettings, apply_method_configs, effective_matrices, listed_tokens
from tokengraft.core.rows import RowGraft, attach_rows
from tokengraft.core.vocab import AddReport
from tokengraft.errors import TokengraftError
from tokengraft.files import write_json  # public here too: rundir.write_json
from tokengraft.methods import load_methods
from tokengraft.methods.classification import build_classifier
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import fingerprint, has_tokenizer, load_model
from tokengraft.quantization import QuantSpec, installed_version, spec_of
from tokengraft.tasks.classify_data import LabelSet

GRAFT_FILE = "graft.json"
ROWS_FILE = "rows.safetensors"
EMBEDDINGS_FILE = "embeddings.safetensors"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.yaml"
DATA_DIR = "data"
METRICS_FILE = "metrics.json"
DATASET_STATS_FILE = "dataset_stats.json"
LOG_HISTORY_FILE = "log_history.json"
PHASES_FILE = "phases.json"
SNAPSHOTS_DIR = "snapshots"
STAGING_PREFIX = ".saving-"  # save_graft's temporary sibling; one left behind is a killed save's leftover
LOCK_FILE = ".tokengraft.lock"
OWNER_FILE = ".tokengraft-owner.json"
REQUIRED_META = ("base_model", "base_fingerprint", "settings", "trainable_ids")
CLASSIFICATION_TASK = "classification"  # graft.json ``task`` of a classifier run (head + labels, no LM head)


@dataclass
class ClassifierGraft(Graft):
    """A graft whose model is a sequence classifier; ``labels`` maps head outputs to class names."""

    labels: LabelSet | None = None

    def token_parameters(self) -> list[torch.nn.Parameter]:
        # Only token rows get train.token_lr: PEFT's trainable copy of the head (modules_to_save) is not a token row.
        return self.rows.parameters() if self.rows is not None else []


# ----------------------------------------------------------------------------- names and small files


def data_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its data splits (generated ones are written there)."""
    return Path(run_dir) / DATA_DIR


def split_file(run_dir: str | Path, split: str) -> Path:
    """The JSONL file of one data split (``train``, ``validation``, ``test``, ...)."""
    return data_dir(run_dir) / f"{split}.jsonl"


def write_metrics(run_dir: str | Path, result: dict[str, Any]) -> Path:
    return write_json(Path(run_dir) / METRICS_FILE, result)


def write_phases(run_dir: str | Path, phases: dict[str, Any]) -> Path:
    """``phases.json``: where the command that made the run spent its time (timing.PhaseLog + context)."""
    return write_json(Path(run_dir) / PHASES_FILE, phases)


def write_labels(run_dir: str | Path, labels: LabelSet) -> Path:
    return write_json(Path(run_dir) / LABELS_FILE, labels.to_dict())


def read_run_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run was trained with (as saved, not re-validated: its files may have moved since)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TokengraftError(f"{run_dir} has no {CONFIG_FILE}; it was not written by `tokengraft train`")
    return load_recipe(path, validate=False)


def run_answers(run_dir: str | Path) -> str:
    """The run's ``eval.answers``; "tuned" for a directory without a recipe (a graft saved through the
    API, an export), whose model can only answer itself."""
    return read_run_recipe(run_dir).eval.answers if (Path(run_dir) / CONFIG_FILE).is_file() else "tuned"


# ----------------------------------------------------------------------------- save


def save_graft(g: Graft, run_dir: str | Path, *, base_spec: str, dtype: str = "float32",
               extra: dict[str, Any] | None = None) -> Path:
    """Write the graft's artifacts into ``run_dir`` (created if needed); returns the path.

    Files are written to a temporary sibling directory and moved in one rename per
    file, so an interrupted save never leaves a half-written file behind a valid name;
    ``graft.json`` is moved last, so its presence means every other file is in place.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    added = set(g.report.added)  # a set: list membership per token is quadratic on a 20,000-token lexicon
    with tempfile.TemporaryDirectory(dir=run, prefix=STAGING_PREFIX) as tmp:
        staged = Path(tmp)
        g.tokenizer.save_pretrained(staged)
        rows = g.token_rows()
        save_file(rows, str(staged / ROWS_FILE))
        if g.settings.backend == "full":
            embedding, head = effective_matrices(g.model)
            full = {"input": embedding.detach().float().cpu().contiguous()}
            if head is not None and head is not embedding:
                full["output"] = head.detach().float().cpu().contiguous()
            save_file(full, str(staged / EMBEDDINGS_FILE))
        if g.methods is not None:
            g.methods.save(staged)
        meta = {
            "tokengraft_version": __version__,
            "base_model": base_spec,
            "dtype": dtype,
            "base_fingerprint": g.base_fingerprint,
            "tokens": [{"token": t, "id": g.report.ids[t], "new": t in added} for t in g.settings.add],
            "trainable_ids": g.trainable_ids,
            "settings": asdict(g.settings),
            "methods": g.method_configs,
            "report": g.report.to_dict(),
            "total_rows": g.report.final_rows,
            "tied": bool(g.rows.tied) if g.rows is not None else None,
            # How the base was quantized (None: full precision), read from the model itself: loading re-quantizes
            # it the same way, and the fingerprint (taken of the quantized weights) checks that it did.
            "quantization": quant.to_record() if (quant := spec_of(g.model)) is not None else None,
        }
        meta.update(extra or {})
        (staged / GRAFT_FILE).write_text(json.dumps(meta, indent=2))
        # graft.json goes first and comes back last: while the other files are replaced the directory
        # describes no graft, so a kill mid-save never leaves graft.json beside weights it does not describe.
        (run / GRAFT_FILE).unlink(missing_ok=True)
        for item in sorted(staged.iterdir(), key=lambda p: p.name == GRAFT_FILE):
            target = run / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    return run


# ----------------------------------------------------------------------------- read


def read_graft_meta(run_dir: str | Path) -> dict[str, Any]:
    """``graft.json``, checked: a missing directory, file or key is one clear error, not a KeyError later."""
    run = Path(run_dir)
    if not run.is_dir():
        raise TokengraftError(f"run directory {run} does not exist")
    path = run / GRAFT_FILE
    if not path.is_file():
        raise TokengraftError(f"{run} is not a tokengraft run directory: {GRAFT_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TokengraftError(f"{path} is damaged (invalid JSON at line {exc.lineno}); re-run training or restore it") from None
    if not isinstance(meta, dict):
        raise TokengraftError(f"{path} is damaged: it holds a {type(meta).__name__}, not an object")
    for key in REQUIRED_META:
        if key not in meta:
            raise TokengraftError(f"{path} is damaged: key {key!r} is missing")
    return meta


def update_graft_meta(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Add or replace top-level ``graft.json`` fields (e.g. the calibrated ``pass_bias``), atomically."""
    meta = read_graft_meta(run_dir)
    meta.update(fields)
    write_json(Path(run_dir) / GRAFT_FILE, meta)
    return meta


def is_classifier_meta(meta: dict[str, Any]) -> bool:
    """Whether ``graft.json`` describes a classifier (head + labels) rather than a causal LM."""
    return meta.get("task") == CLASSIFICATION_TASK


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file of the run directory; a missing or damaged one is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise TokengraftError(f"{path.parent} is incomplete: {path.name} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TokengraftError(f"{path} is damaged ({exc}); re-run training or restore it") from None


def report_from_meta(meta: dict[str, Any]) -> AddReport:
    """The ``AddReport`` a loaded graft carries, rebuilt from ``graft.json`` (no initial rows: they were trained)."""
    r = meta.get("report", {})
    tokens = meta.get("tokens", [])
    return AddReport(
        requested=r.get("requested", len(tokens)),
        already_present=[t["token"] for t in tokens if not t.get("new")],
        added=[t["token"] for t in tokens if t.get("new")],
        ids={t["token"]: t["id"] for t in tokens},
        old_tokenizer_size=r.get("old_tokenizer_size", 0), final_tokenizer_size=r.get("final_tokenizer_size", 0),
        old_rows=r.get("old_rows", 0), final_rows=int(meta["total_rows"]),
    )


# ----------------------------------------------------------------------------- load


@dataclass
class _Opened:
    """What both loaders start from: checked metadata, the rows file, the base model and the run's tokenizer."""

    run: Path
    meta: dict[str, Any]
    rows_state: dict[str, torch.Tensor]
    model: Any
    tokenizer: Any


def load_base(meta: dict[str, Any], *, device: str = "auto", dtype: str | None = None) -> tuple[Any, Any]:
    """The base model a run was trained on, loaded as it was (dtype, and re-quantized the same way)."""
    return load_model(meta["base_model"], dtype=dtype or meta.get("dtype", "float32"), device=device,
                      quantization=QuantSpec.from_record(meta.get("quantization")))


def _open(run_dir: str | Path, meta: dict[str, Any], *, device: str, dtype: str | None, check_fingerprint: bool,
          model: Any) -> _Opened:
    from transformers import AutoTokenizer

    run = Path(run_dir)
    rows_state = load_tensors(run / ROWS_FILE)
    if model is None:
        model, _ = load_base(meta, device=device, dtype=dtype)
    if check_fingerprint:
        found = fingerprint(model)
        if found != meta["base_fingerprint"]:
            record = meta.get("quantization") or {}
            hint = ""
            if record.get("bitsandbytes_version") and record.get("bitsandbytes_version") != installed_version():
                hint = (f" (it was quantized with bitsandbytes {record['bitsandbytes_version']}, this is "
                        f"{installed_version()}: install that version to re-quantize it identically)")
            raise TokengraftError(
                f"{run} was trained on a different base model: fingerprint {meta['base_fingerprint']} expected, "
                f"{found} found for {meta['base_model']!r}; load it with the base it was trained on{hint}"
            )
    if not has_tokenizer(run):  # transformers 5 would build an empty tokenizer instead of failing
        raise TokengraftError(f"{run} is incomplete: its tokenizer (tokenizer.json) is missing; re-run training or restore it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run))
    except (OSError, ValueError) as exc:
        raise TokengraftError(f"{run}: tokenizer files are missing or damaged ({str(exc).splitlines()[0]})") from None
    return _Opened(run=run, meta=meta, rows_state=rows_state, model=model, tokenizer=tokenizer)


def load_graft(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
               check_fingerprint: bool = True, model: Any = None) -> Graft:
    """A causal-LM run as a whole ``Graft`` (model, tokenizer, rows, methods, report), frozen for inference.

    ``model`` may pass an already loaded, untouched base model (saves a reload).
    Classification runs load with `load_classifier` (``tokengraft.load`` picks the right one).
    """
    meta = read_graft_meta(run_dir)
    if is_classifier_meta(meta):
        raise TokengraftError(f"{run_dir} is a classification run; load it with tokengraft.load or rundir.load_classifier")
    opened = _open(run_dir, meta, device=device, dtype=dtype, check_fingerprint=check_fingerprint, model=model)
    run, rows_state, model, tokenizer = opened.run, opened.rows_state, opened.model, opened.tokenizer
    settings = TokenSettings(**meta["settings"])
    base_embedding, base_head = unwrap_peft(model).get_input_embeddings(), unwrap_peft(model).get_output_embeddings()
    _check_rows_file(run / ROWS_FILE, rows_state, base_embedding.weight.shape[1],
                     untied=base_head is not None and base_head.weight is not base_embedding.weight)
    ids = [int(i) for i in rows_state["ids"].tolist()]
    if sorted(ids) != sorted(meta["trainable_ids"]):
        raise TokengraftError(f"{run / ROWS_FILE} does not match {GRAFT_FILE} (different token ids); the run directory is damaged")
    total_rows = int(meta["total_rows"])
    if len(tokenizer) > total_rows:
        raise TokengraftError(f"{run}: tokenizer has {len(tokenizer)} tokens but the graft has {total_rows} rows")

    # Freezes the base when there are no methods; loads their trained weights when there are.
    model, methods_state = apply_method_configs(model, tokenizer, meta.get("methods") or [], str(run),
                                                listed_tokens(settings))
    rows: RowGraft | None = None
    if settings.backend == "full":
        _restore_full(model, load_tensors(run / EMBEDDINGS_FILE), total_rows)
    else:
        # The `peft` backend trains the same rows as `rows`; both load as the row overlay.
        rows = attach_rows(model, ids, rows_state["input"], rows_state.get("output"),
                           sides="both", total_rows=total_rows)
        for parameter in rows.parameters():
            parameter.requires_grad_(False)
    model.eval()
    return Graft(model=model, tokenizer=tokenizer, settings=settings, report=report_from_meta(meta), trainable_ids=ids,
                 rows=rows, methods=methods_state, base_fingerprint=meta["base_fingerprint"],
                 method_configs=meta.get("methods") or [])


def name_labels(classifier: Any, labels: LabelSet) -> None:
    """Write the class names into the classifier's config, so its outputs are readable outside tokengraft too."""
    classifier.config.id2label = dict(enumerate(labels.names))
    classifier.config.label2id = {name: i for i, name in enumerate(labels.names)}


def load_classifier(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
                    check_fingerprint: bool = True, model: Any = None) -> ClassifierGraft:
    """A classification run's classifier (head, methods, input token rows), frozen for inference."""
    meta = read_graft_meta(run_dir)
    if not is_classifier_meta(meta) or "labels" not in meta:
        raise TokengraftError(f"{run_dir} is not a classification run (graft.json has no task: classification and labels)")
    labels = LabelSet.from_dict(meta["labels"])
    opened = _open(run_dir, meta, device=device, dtype=dtype, check_fingerprint=check_fingerprint, model=model)
    run, rows_state, tokenizer = opened.run, opened.rows_state, opened.tokenizer
    clf = build_classifier(opened.model, labels.num_labels, tokenizer, seed=int(meta.get("seed", 0)))
    del opened  # the classifier holds its own copy of the backbone
    name_labels(clf, labels)
    # The head's weights are saved with the method weights, so this also restores a head-only run.
    clf, state = load_methods(clf, describe(clf, tokenizer), None, run)
    ids = [int(i) for i in rows_state["ids"].tolist()]
    rows = None
    if ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the input-only warning is for causal LMs
            rows = attach_rows(clf, ids, rows_state["input"], None, sides="input", total_rows=int(meta["total_rows"]))
        for p in rows.parameters():
            p.requires_grad_(False)
    for p in clf.parameters():
        p.requires_grad_(False)
    clf.eval()
    return ClassifierGraft(model=clf, tokenizer=tokenizer, settings=TokenSettings(**meta["settings"]),
                           report=report_from_meta(meta), trainable_ids=ids, rows=rows, methods=state,
                           method_configs=meta.get("methods") or [], base_fingerprint=meta["base_fingerprint"],
                           labels=labels)


def _check_rows_file(path: Path, state: dict[str, torch.Tensor], hidden: int, *, untied: bool) -> None:
    """A rows file with a missing tensor or a wrong shape is damaged: say so before any indexing fails.

    An untied model without ``output`` rows would silently reuse the input rows as its head.
    """
    for key in ("ids", "input") + (("output",) if untied else ()):
        if key not in state:
            raise TokengraftError(f"{path} is damaged: tensor {key!r} is missing; re-run training or restore it")
    n = state["ids"].numel()
    for key in ("input", "output"):
        if key in state and tuple(state[key].shape) != (n, hidden):
            raise TokengraftError(f"{path} is damaged: tensor {key!r} has shape {tuple(state[key].shape)}, "
                                  f"expected ({n}, {hidden}) for {n} token ids and this base model's width")


def _restore_full(model: Any, tensors: dict[str, torch.Tensor], total_rows: int) -> None:
    """The ``full`` backend's whole matrices, written into the resized base."""
    hf = unwrap_peft(model)
    hf.resize_token_embeddings(total_rows, mean_resizing=False)
    embedding, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    with torch.no_grad():
        embedding.weight.copy_(tensors["input"].to(embedding.weight))
        if head is not None and head.weight is not embedding.weight:
            head.weight.copy_(tensors.get("output", tensors["input"]).to(head.weight))
