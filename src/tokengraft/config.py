"""The recipe: one YAML file describes a whole run.

Sections are dataclasses; the string under each field is its documentation
(``schema_docs()`` collects them, so the docs cannot drift from the code). Loading
checks every key and type before anything heavy happens, and every error names the
field and the fix: unknown keys get the closest valid key, enums list their values.

The field machinery (ranges, coercion, suggestions, docs) is generic and lives in
schema.py; this module holds only the recipe's sections and its cross-field rules.
Method entries (``methods:``) are built through the methods package's one registry
(``tokengraft.methods.registry``), so each method's fields are defined in one place.
Model-dependent checks need a model and live above this module (core/guard.py's
``check_recipe_on_model``).

Paths: relative data paths in the YAML resolve against the YAML file's directory;
relative paths given as command-line overrides resolve against the current
directory (that is where the user typed them). Saved recipes hold absolute paths.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tokengraft.constants import ANSWERS, BUILTIN_ALIAS, BUILTIN_ALIASES, INIT_STRATEGIES, Answers, Backend, Engine, Side
from tokengraft.errors import TokengraftError
from tokengraft.files import read_utf8
from tokengraft.methods.registry import REGISTRY
from tokengraft.methods.spec import MethodSpec, spec_from_dict
from tokengraft.schema import build, field_docs, fields_to_plain, option, suggest, unknown_key
from tokengraft.tasks import Task, get_task, task_names

MAX_LR = 10.0
"""Largest learning rate a recipe accepts: far above any that trains (AdamW steps are ~lr in size); a value past
it is a typo (1e3 for 1e-3) that would only show up as a NaN stop minutes into training."""

Number = int | float


def _parse_init(value: Any, dotted: str) -> TokenInit:
    """``tokens.init``: one strategy name for both sides, or {input: ..., output: ...}."""
    if isinstance(value, str):
        value = {"input": value, "output": value}
    return build(TokenInit, value, dotted)


def _parse_methods(value: Any, dotted: str) -> list[MethodSpec]:
    """``methods``: a list of {type: ..., ...} entries, each built by its method's spec."""
    if value is None:
        value = []
    if not isinstance(value, list):
        raise TokengraftError(f"methods must be a list of {{type: ..., ...}} entries, got {value!r}")
    return [method_from_dict(m, f"{dotted}[{i}]") for i, m in enumerate(value)]


# ----------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    name: str = BUILTIN_ALIAS
    """MODEL spec: the built-in alias, a local HF directory, a .gguf file, or a hub id."""
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    """Weights dtype when loading."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """Load the block linears quantized with bitsandbytes (pip install -e ".[quant]"): 4bit (QLoRA) or 8bit (LLM.int8).
    Embeddings, head and norms stay in `dtype`; token rows train in fp32; LoRA and adapters train on top.
    CPU and CUDA; export --merged writes a de-quantised float32 checkpoint."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4bit only: the 4-bit code. nf4 (QLoRA's normal float) suits normally distributed weights; bitsandbytes'
    own default is fp4, so tokengraft always passes this explicitly."""
    double_quant: bool = True
    """4bit only: quantize the per-64-weight scales too (QLoRA double quantisation): 4.13 instead of 4.5 bits per weight."""
    compute_dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "auto"
    """4bit only: dtype the de-quantised matmuls run in. auto = float32 on CPU (bf16 is ~10x slower there without
    bf16 instructions), bfloat16 on a GPU that supports it, float16 on older GPUs."""
    trust_remote_code: bool = False
    """Run the model repository's own code. Off unless you trust the source."""


@dataclass
class TokenInit:
    input: str | dict[str, str] = "mean"
    """Init strategy for input-embedding rows, or {token: strategy, '*': default}."""
    output: str | dict[str, str] = "mean"
    """Init strategy for output (head) rows; ignored for tied models."""


@dataclass
class TokensConfig:
    add: list[str] = option(factory=list)
    """Token strings to add to the vocabulary."""
    add_file: str | None = None
    """A text file with one token per line, appended to `add` (for whole vocabularies)."""
    special: bool = True
    """Add as special (control) tokens, never split and skipped by decode(skip_special_tokens); else normal added tokens."""
    single_word: bool = False
    """Normal added tokens only: match only as whole words."""
    word_start: bool = False
    """Normal added tokens only: add each word as " word" (with its leading space). Byte-level BPE tokenizers
    (GPT-2, Llama 3, SmolLM2, Qwen) fold the space into a word's first piece, so a bare "word" token still costs
    a separate space token in running text and saves nothing on two-piece words."""
    init: TokenInit = option(factory=TokenInit, parse=_parse_init)
    """Row init: one strategy for both sides, or {input: ..., output: ...}. Strategies: mean, hewitt, text, subwords, spherical, random."""
    init_text: dict[str, str] = option(factory=dict)
    """For init `text`: the text whose token rows are averaged, per token (e.g. {'<PASS>': 'unknown'})."""
    train_existing: list[str | int] = option(factory=list)
    """Existing token strings or ids whose rows also train (e.g. untrained chat-template tokens)."""
    sides: Side = "both"
    """Which rows train: input embeddings, output head, or both (tied models share one row)."""
    backend: Backend = "rows"
    """rows: row-sparse trainable rows (O(new x hidden)); peft: PEFT trainable_tokens; full: whole matrices (baseline)."""
    pad_to_multiple_of: int | None = option(None, lo=1)
    """Round the resized vocabulary up to a multiple of this (tensor-core friendly)."""
    spherical_scale: float = option(1.5, lo=0, lo_open=True)
    """For init `spherical`: radius = scale x base row std x sqrt(hidden)."""
    expand: dict[str, int] = option(factory=dict)
    """Several trainable rows for one token: {'<STYLE_VERBOSE>': 4} adds hidden tokens <STYLE_VERBOSE_1>..<STYLE_VERBOSE_4>
    that the run's chat template inserts right after every <STYLE_VERBOSE> in a message (a short learned prefix the token
    expands to; they start from the token's own init). Needs a chat template; `text` rows, which skip it, are not expanded."""
    distill_output: bool = False
    """After init, fit each new token's output row (a tied model's shared row) so its logit matches the log-probability
    of its pieces on training contexts (least squares, anchored at the init; core/distill.py). Needs backend rows."""

    def all_tokens(self) -> list[str]:
        """`add` followed by the lines of `add_file`, duplicates removed, order kept."""
        tokens = list(self.add)
        if self.add_file:
            tokens += read_token_file(self.add_file)
        return list(dict.fromkeys(tokens))


@dataclass
class DataConfig:
    train: str | None = None
    """Training JSONL (prompt/completion, messages, or text rows)."""
    validation: str | None = None
    """Validation JSONL; when null, `validation_fraction` of train is held out."""
    validation_fraction: float = option(0.1, lo=0, hi=1, hi_open=True)
    """Share of train held out for validation when no validation file is given (0 = none)."""
    generate: bool = False
    """Let the task generator write the data into the run directory (tasks pass, style, lexicon)."""
    generate_options: dict[str, Any] = option(factory=dict)
    """Passed to the task generator."""
    max_length: int = option(256, lo=2)
    """Longest sequence in tokens; longer examples are dropped (never silently cut)."""
    on_overflow: Literal["drop", "error", "truncate_prompt"] = "drop"
    """Too-long examples: drop (counted), error, or truncate_prompt (left-cut the prompt, never the completion)."""
    system: str | None = None
    """System prompt for chat templates; null = the template's default."""
    self_answers: bool = False
    """Train on the base model's own right answers: task pass, answerable questions train on ITS answer, not the short
    gold; task style, a terse completion becomes the sentence of the base model's answer that gives the right answer."""
    know_check: bool = False
    """Task pass (R-Tuning): answerable training questions the base model answers wrong become <PASS> targets."""
    drop_unknown: bool = False
    """Training questions the base model answers wrong are left out, so the rows teach nothing the model does not
    already know (fine-tuning on unknown facts teaches a model to make answers up: Gekhman et al., 2024). Task pass:
    answerable questions (neither their gold answer nor <PASS>); task style: terse rows (their verbose partner stays).
    With self_answers, what remains replays the base model's own right answers. Excludes know_check, which turns
    those questions into <PASS> instead. Rows marked keep_unknown: true (the pass task's replay_gold) stay."""
    know_check_samples: int = option(0, lo=0)
    """Task pass, for know_check / drop_unknown / self_answers: 0 = a question is known when the base model's one
    greedy answer is right; N >= 2 = also sample N answers per answerable training question, and count it known
    only when the greedy answer is right AND at least half of the N samples are (consistency; each row records
    base_samples and know_share). Sampling is seeded by the recipe seed: the same recipe gives the same rows."""
    know_check_temperature: float = option(0.7, lo=0, lo_open=True)
    """Sampling temperature of the know_check_samples answers (> 0; higher: more varied answers, a stricter check)."""


@dataclass
class TrainConfig:
    epochs: Number = option(3, lo=0, lo_open=True)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 = use epochs."""
    batch_size: int = option(8, lo=1)
    """Examples per device per step."""
    grad_accum: int = option(1, lo=1)
    """Gradient accumulation steps (effective batch = batch_size x grad_accum)."""
    group_by_length: bool = False
    """Draw each step's examples among ones of similar length (transformers' LengthGroupedSampler, seeded): less
    padding, so faster steps on a CPU when lengths vary (short <PASS> rows beside long READ rows); the order differs
    from the plain shuffle, so the same seed gives other (still reproducible) rows per step."""
    lr: float = option(2.0e-4, lo=0, hi=MAX_LR, lo_open=True)
    """Learning rate of the method parameters (LoRA, adapters, unfrozen weights)."""
    token_lr: float = option(1.0e-3, lo=0, hi=MAX_LR, lo_open=True)
    """Learning rate of the new-token rows (new rows start far from trained ones and need a larger step)."""
    weight_decay: float = option(0.0, lo=0, hi=1)
    """Decoupled (AdamW-style) weight decay."""
    optimizer: Literal["adamw", "adafactor", "paged_adamw_8bit"] = "adamw"
    """adafactor keeps almost no optimizer state (large vocabularies, reference 004); paged_adamw_8bit is QLoRA's
    bitsandbytes optimizer (8-bit moments paged to CPU memory under pressure; CUDA only)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = option(0.03, lo=0, hi=1, hi_open=True)
    """Share of the steps spent warming the learning rate up from 0."""
    max_grad_norm: float = option(1.0, lo=0)
    """Gradient clipping norm; 0 = off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more time."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto = fp32 on CPU, bf16 where the GPU supports it."""
    logging_steps: int = option(10, lo=1)
    """Log the loss every N steps."""
    eval_steps: int = option(50, lo=0)
    """Evaluate every N steps; 0 = only at the end."""
    save_steps: int = option(100, lo=0)
    """Checkpoint every N steps; 0 = only at the end."""
    save_total_limit: int | None = option(2, lo=1)
    """Keep at most this many checkpoints (null = all)."""
    snapshot_steps: int = option(0, lo=0)
    """Save the token rows every N steps (for drift plots); 0 = off."""
    report_to: list[str] = option(factory=list)
    """Trackers, e.g. [tensorboard]."""
    supervised_head_only: bool = True
    """Run the LM head only where labels != -100 (saves the vocab-sized logits of prompt tokens)."""
    objective: Literal["ce", "idk"] = "ce"
    """ce: cross-entropy; idk: uncertainty-aware loss that moves mass to <PASS> (task pass only)."""
    kl_untokened: float = option(0.0, lo=0)
    """Weight of a KL(base || tuned) term at the completion tokens of training rows whose input holds none of the
    grafted tokens (the style task's plain rows, data.generate_options.n_plain; the pass task's answerable questions);
    the base distribution is the same model with its LoRA switched off, and a task's answer tokens (<PASS>) are left
    out of both sides. Keeps prompts without the new tokens answering like the base model, also on questions training
    never asks. Needs a lora method. 0 = off."""


@dataclass
class EvalConfig:
    max_new_tokens: int = option(32, lo=1)
    """Generation length for task metrics."""
    batch_size: int = option(16, lo=1)
    """Prompts per generation batch."""
    pass_bias: float | None = None
    """Calibrated <PASS> logit bias (written by calibration)."""
    target_false_pass: float = option(0.05, lo=0, hi=1, lo_open=True, hi_open=True)
    """Calibration target: share of answerable questions allowed to get <PASS>."""
    target_recall: float | None = option(None, lo=0, hi=1, lo_open=True)
    """Optional calibration target for <PASS> recall on unanswerable validation questions: of the
    biases that keep target_false_pass, the smallest that reaches it (fewest answers given up);
    unset or unreachable: the largest such bias (most recall)."""
    answers: Answers = "tuned"
    """Task pass: who writes the answer when the model does not pass. tuned: the tuned model. base: the tuned model
    only decides whether to pass (its <PASS> margin at the first answer position plus the calibrated bias) and the
    base model writes the answer, greedily, so answering stays exactly the base model's wherever the run answers:
    what training changed can cost an answer only by passing on it. `tokengraft eval` / `generate` then load both
    models; a merged or GGUF export holds the tuned model alone and answers as `tuned`."""


@dataclass
class DistributedConfig:
    engine: Engine = "ddp"
    """How the processes of a launcher (accelerate launch, torchrun) share the work. ddp: each holds the whole model
    (what a launcher gives by default); deepspeed: DeepSpeed ZeRO shards optimizer state, gradients and (stage 3)
    the parameters, the frozen base included; fsdp: PyTorch FSDP2 shards the parameters (GPU only: on CPU accelerate
    would silently run DDP, so tokengraft refuses). deepspeed and fsdp need a launcher (torchrun --nproc_per_node 1
    for one process, e.g. ZeRO with offload on one GPU)."""
    zero_stage: int | None = option(None, lo=1, hi=3)
    """engine deepspeed: 1 shards optimizer state, 2 also gradients, 3 also the parameters; null = the stage in
    deepspeed_config, else 2."""
    deepspeed_config: str | None = None
    """engine deepspeed: a DeepSpeed JSON config to start from (offload, bucket sizes, ...). tokengraft fills the batch
    size, accumulation, clipping and precision from `train` and builds the optimiser itself (token rows get
    train.token_lr), so the file must not have an optimizer or scheduler section."""


@dataclass
class Recipe:
    seed: int = 42
    """Seeds data splits, init and training."""
    task: Literal["pass", "style", "lexicon", "generic", "classification"] = "generic"
    """Task metrics and data generator; generic = no task metrics."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model."""
    tokens: TokensConfig = field(default_factory=TokensConfig)
    """Which tokens to add or train, how their rows start, and where they live."""
    methods: list[MethodSpec] = option(factory=lambda: [_default_lora()], parse=_parse_methods)
    """Methods applied to the base model, each {type: lora|alora|adapter|prefix|freeze, ...its fields}."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data and how it is rendered and cut."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Task evaluation and calibration."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Sharded training under a launcher (DeepSpeed ZeRO, FSDP); the default, ddp, needs nothing here."""

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain YAML types; `Recipe` rebuilt from it compares equal."""
        return fields_to_plain(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=120)
        path.write_text(f"# tokengraft train {path}\n{body}", encoding="utf-8")
        return path

    def summary(self) -> str:
        tokens = self.tokens.add[:3] + (["..."] if len(self.tokens.add) > 3 else [])
        n_tokens = str(len(self.tokens.add)) + (f" + file {Path(self.tokens.add_file).name}" if self.tokens.add_file else "")
        methods = ", ".join(_method_text(m) for m in self.methods) or "none (token rows only)"
        data = "generated by the task" if self.data.generate else Path(self.data.train or "?").name
        steps = f"{self.train.max_steps} steps" if self.train.max_steps > 0 else f"{self.train.epochs} epochs"
        quant = "" if self.model.quantization == "none" else f" ({self.model.quantization}" + (
            f" {self.model.quant_type}{'+dq' if self.model.double_quant else ''})" if self.model.quantization == "4bit" else ")")
        return (f"task {self.task}, model {self.model.name}{quant}, tokens {n_tokens} {tokens}, backend {self.tokens.backend}, "
                f"methods {methods}, data {data}, {steps} lr {self.train.lr:g} token_lr {self.train.token_lr:g}")


# ----------------------------------------------------------------------------- methods (from the methods registry)


def method_from_dict(raw: Any, where: str) -> MethodSpec:
    """One ``methods`` entry as its method's spec; unknown types and fields get the closest valid name."""
    if not isinstance(raw, dict):
        raise TokengraftError(f"{where} must be a mapping like {{type: lora, r: 16}}, got {raw!r}")
    kind = raw.get("type")
    if kind not in REGISTRY:
        raise TokengraftError(f"{where}.type must be one of {', '.join(REGISTRY)}, got {kind!r}"
                              + suggest(str(kind), list(REGISTRY)))
    cls = REGISTRY[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key != "type" and key not in names:
            raise unknown_key(f"{where}.{key}", key, names)
    try:
        return spec_from_dict(cls, raw)
    except TokengraftError as exc:
        raise TokengraftError(f"{where}: {exc}") from None


def _default_lora() -> MethodSpec:
    return method_from_dict({"type": "lora", "targets": "attention_mlp", "r": 16, "alpha": 32, "dropout": 0.05}, "methods[0]")


def _method_text(m: Any) -> str:
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    kind = d.pop("type", "?")
    main = {k: d[k] for k in ("targets", "r", "placement", "mode", "num_virtual_tokens") if k in d}
    return f"{kind}({' '.join(f'{k}={v}' for k, v in main.items())})"


# ----------------------------------------------------------------------------- loading


def expansion_tokens(token: str, count: int) -> list[str]:
    """The hidden tokens of a ``tokens.expand`` entry: ``<STYLE_VERBOSE>`` -> ``<STYLE_VERBOSE_1>`` .. ``<STYLE_VERBOSE_{count}>``."""
    stem, close = (token[:-1], token[-1]) if len(token) > 1 and token.endswith(">") else (token, "")
    return [f"{stem}_{i}{close}" for i in range(1, count + 1)]


def read_token_file(path: str | Path) -> list[str]:
    """One token per line; blank lines skipped; surrounding whitespace stripped."""
    p = Path(path)
    if not p.is_file():
        raise TokengraftError(f"tokens.add_file {p} does not exist")
    return [line.strip() for line in read_utf8(p, "tokens.add_file").splitlines() if line.strip()]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative data/token-file paths absolute against ``base`` (in place)."""
    for section, key in (("data", "train"), ("data", "validation"), ("tokens", "add_file"),
                         ("distributed", "deepspeed_config")):
        sect = raw.get(section)
        if isinstance(sect, dict) and isinstance(sect.get(key), str) and sect[key]:
            p = Path(sect[key]).expanduser()
            sect[key] = str(p if p.is_absolute() else (base / p).resolve())
    options = raw.get("data", {}).get("generate_options") if isinstance(raw.get("data"), dict) else None
    for key in ("corpus", "replay_corpus"):  # the lexicon task's corpus directories
        if isinstance(options, dict) and isinstance(options.get(key), str) and options[key]:
            p = Path(options[key]).expanduser()
            options[key] = str(p if p.is_absolute() else (base / p).resolve())
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        name = model["name"]
        candidate = base / name
        if name not in BUILTIN_ALIASES and not Path(name).is_absolute() and candidate.exists():
            model["name"] = str(candidate.resolve())


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise TokengraftError(f"override {dotted}: {'.'.join(parts[:i])} has {len(node)} entries; "
                                      f"'{part}' is not an index 0..{len(node) - 1}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise TokengraftError(f"override {dotted}: {here} is not a section")
        if here == "tokens.init" and isinstance(node.get(part), str):
            node[part] = {"input": node[part], "output": node[part]}
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise TokengraftError(f"override {dotted}: index '{last}' is out of range ({len(node)} entries)")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise TokengraftError(f"override {dotted}: {'.'.join(parts[:-1])} is not a section")


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=1e-4`` -> ("train.lr", 0.0001); the value is YAML (lists, null, numbers)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TokengraftError(f"override {text!r} must look like key=value (e.g. train.lr=1e-4)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise TokengraftError(f"override {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return key, parsed


def apply_overrides(recipe: Recipe, overrides: typing.Iterable[str] = (), base: Path | None = None) -> Recipe:
    """A new Recipe with dotted overrides applied to the effective config (so defaults can be overridden too)."""
    raw = recipe.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
    _resolve_paths(raw, base or Path.cwd())
    return build(Recipe, raw, "")


def recipe_from_dict(raw: Any, base: Path | None = None) -> Recipe:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise TokengraftError(f"a recipe must be a YAML mapping of sections, got {type(raw).__name__}")
    _resolve_paths(raw, base or Path.cwd())
    return build(Recipe, raw, "")


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = (), validate: bool = True) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, and check it (without loading weights)."""
    path = Path(path)
    if not path.is_file():
        raise TokengraftError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(read_utf8(path, "recipe"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TokengraftError(f"{path}: invalid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    try:
        recipe = recipe_from_dict(raw, base=path.resolve().parent)
        recipe = apply_overrides(recipe, overrides)
        if validate:
            validate_recipe(recipe)
    except TokengraftError as exc:
        raise TokengraftError(f"{path}: {exc}") from None
    return recipe


# ----------------------------------------------------------------------------- distributed


def deepspeed_file(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed JSON config, checked: tokengraft builds the optimiser and its schedule itself."""
    p = Path(path)
    if not p.is_file():
        raise TokengraftError(f"distributed.deepspeed_config: file {p} does not exist")
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokengraftError(f"distributed.deepspeed_config: {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise TokengraftError(f"distributed.deepspeed_config: {p} must hold a JSON object")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise TokengraftError(f"distributed.deepspeed_config: {p} has a {section!r} section; remove it: tokengraft "
                                  "builds the optimiser and schedule from train (token rows get train.token_lr)")
    stage = config.get("zero_optimization", {}).get("stage")
    if stage is not None and stage not in (1, 2, 3):
        raise TokengraftError(f"distributed.deepspeed_config: {p} sets zero_optimization.stage {stage!r}; use 1, 2 or 3")
    return config


def zero_stage(dist: DistributedConfig) -> int:
    """The ZeRO stage a deepspeed run uses: the recipe's, else the config file's, else 2."""
    if dist.zero_stage is not None:
        return dist.zero_stage
    if dist.deepspeed_config:
        stage = deepspeed_file(dist.deepspeed_config).get("zero_optimization", {}).get("stage")
        if stage is not None:
            return int(stage)
    return 2


def shards_parameters(dist: DistributedConfig) -> bool:
    """Whether the engine keeps parameters in shards between forwards (ZeRO-3, FSDP), not whole on every rank."""
    return dist.engine == "fsdp" or (dist.engine == "deepspeed" and zero_stage(dist) == 3)


def _validate_distributed(recipe: Recipe) -> None:
    dist = recipe.distributed
    if dist.engine != "deepspeed" and (dist.zero_stage is not None or dist.deepspeed_config):
        key = "zero_stage" if dist.zero_stage is not None else "deepspeed_config"
        raise TokengraftError(f"distributed.{key} is set but distributed.engine is {dist.engine}; "
                              "set distributed.engine: deepspeed")
    if dist.engine == "deepspeed" and dist.deepspeed_config:
        file_stage = deepspeed_file(dist.deepspeed_config).get("zero_optimization", {}).get("stage")
        if dist.zero_stage is not None and file_stage is not None and file_stage != dist.zero_stage:
            raise TokengraftError(f"distributed.zero_stage is {dist.zero_stage} but {dist.deepspeed_config} sets "
                                  f"zero_optimization.stage {file_stage}; keep one of them")
    if dist.engine == "fsdp" and recipe.model.device == "cpu":
        raise TokengraftError("distributed.engine: fsdp needs GPUs (on CPU accelerate silently runs DDP); "
                              "use distributed.engine: deepspeed with zero_stage: 3 to shard on CPU")
    if shards_parameters(dist) and recipe.tokens.backend != "rows":
        raise TokengraftError(f"tokens.backend {recipe.tokens.backend} keeps the token rows inside the whole "
                              "embedding matrices, which ZeRO-3 / FSDP split across ranks (PEFT's trainable tokens "
                              "cannot be gathered for saving there: peft issue 2946); use tokens.backend: rows")
    if shards_parameters(dist) and recipe.model.quantization != "none":
        raise TokengraftError("model.quantization keeps the base in bitsandbytes' packed weights, which ZeRO-3 / FSDP "
                              "do not shard here; use distributed.engine: ddp or deepspeed with zero_stage: 2")


# ----------------------------------------------------------------------------- validation


def init_strategy_map(init: str | dict[str, str], tokens: list[str], label: str, *,
                      strict: bool = False) -> dict[str, str]:
    """token -> init strategy for one side: the one reading of ``tokens.init`` (recipe check and core/vocab.py).

    ``init`` is a strategy name, or {token: strategy, '*': default} (default 'mean');
    ``label`` names the setting in errors. ``strict`` is the recipe check: every key must
    name a token being added, and a mapping is checked even with no tokens (an empty
    add_file). Adding tokens resolves only those it adds and ignores keys for the rest.
    """
    if isinstance(init, str):
        mapping = {t: init for t in tokens}
    else:
        if strict:
            for key in init:
                if key != "*" and key not in tokens:
                    raise TokengraftError(f"{label} names {key!r}, which is not a token being added"
                                          + suggest(key, tokens))
        mapping = {t: init.get(t, init.get("*", "mean")) for t in tokens}
        if strict and not tokens:
            mapping = dict(init)
    for token, strategy in mapping.items():
        if strategy not in INIT_STRATEGIES:
            raise TokengraftError(f"{label} for {token!r} is {strategy!r}; use one of {', '.join(INIT_STRATEGIES)}"
                                  + suggest(strategy, list(INIT_STRATEGIES)))
    return mapping


def check_answers(answers: str, task: str) -> str:
    """``answers`` (``eval.answers``, or eval's / generate's override) if it is one of ANSWERS and fits ``task``."""
    if answers not in ANSWERS:
        raise TokengraftError(f"eval.answers must be one of {', '.join(ANSWERS)}, got {answers!r}")
    if answers == "base" and task != "pass":
        raise TokengraftError(f"eval.answers: base needs task: pass (the base model answers what the tuned model does "
                              f"not pass on); the task is {task}")
    return answers


def validate_recipe(recipe: Recipe) -> list[str]:
    """Check cross-field rules without a model (core/guard.py's ``check_recipe_on_model`` adds the model's).

    Raises TokengraftError for anything that cannot run or would fail silently; returns
    notes about settings that are legal but ignored.
    """
    notes: list[str] = []
    t, d, tr = recipe.tokens, recipe.data, recipe.train
    # tokens
    for i, token in enumerate(t.add):
        if not token.strip():
            raise TokengraftError(f"tokens.add[{i}] is empty; remove it")
    dupes = sorted({x for x in t.add if t.add.count(x) > 1})
    if dupes:
        raise TokengraftError(f"tokens.add lists {dupes[0]!r} more than once")
    tokens = t.all_tokens()
    sides = [init_strategy_map(t.init.input, tokens, "tokens.init.input", strict=True),
             init_strategy_map(t.init.output, tokens, "tokens.init.output", strict=True)]
    text_tokens = sorted({k for side in sides for k, v in side.items() if v == "text" and k != "*"})
    for key in t.init_text:
        if key not in tokens:
            raise TokengraftError(f"tokens.init_text has {key!r}, which is not in tokens.add" + suggest(key, tokens))
    missing = [tok for tok in text_tokens if tok not in t.init_text]
    if missing:
        raise TokengraftError(f"tokens.init_text has no entry for {missing[0]!r}, needed by init 'text' "
                              f"(e.g. tokens.init_text: {{{missing[0]!r}: 'unknown'}}), or use init: mean")
    for i, item in enumerate(t.train_existing):
        if isinstance(item, int) and item < 0:
            raise TokengraftError(f"tokens.train_existing[{i}] is a negative id ({item})")
    if (t.single_word or t.word_start) and t.special:
        raise TokengraftError("tokens.single_word / word_start apply to normal added tokens; set tokens.special: false")
    for token, count in t.expand.items():
        if token not in tokens:
            raise TokengraftError(f"tokens.expand names {token!r}, which is not in tokens.add" + suggest(token, tokens))
        if not isinstance(count, int) or not 1 <= count <= 64:
            raise TokengraftError(f"tokens.expand[{token!r}] must be a number of extra rows from 1 to 64, got {count!r}")
        taken = [name for name in expansion_tokens(token, count) if name in tokens]
        if taken:
            raise TokengraftError(f"tokens.expand[{token!r}] would add {taken[0]!r}, which tokens.add already lists")
    if t.expand and t.word_start:
        raise TokengraftError("tokens.expand and tokens.word_start exclude each other (expansion is for control tokens)")
    if t.distill_output and t.backend != "rows":
        raise TokengraftError(f"tokens.distill_output fits the row-sparse rows; set tokens.backend: rows (not {t.backend})")
    if t.single_word and t.word_start:
        # single_word wants a non-word character before the match, but a " word" token starts with the space
        # that follows the previous word: it would never match in running text.
        raise TokengraftError("tokens.word_start and tokens.single_word exclude each other; drop single_word")
    task = get_task(recipe.task)
    if not tokens and not t.train_existing:
        if task.tokens:
            raise TokengraftError(f"task {recipe.task} needs its tokens in tokens.add (e.g. {list(task.tokens)})")
        if not (task.mines_tokens and d.generate):
            notes.append("no tokens to add or train: this is plain fine-tuning of the methods")
    # methods
    kinds = [m.type if hasattr(m, "type") else m.get("type") for m in recipe.methods]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise TokengraftError(f"methods lists '{kind}' {kinds.count(kind)} times; merge them into one entry")
    wrapping = [m.type for m in recipe.methods if getattr(m, "wraps_model", False)]
    if len(wrapping) > 1:
        raise TokengraftError(f"methods {' and '.join(wrapping)} both wrap the model with PEFT; keep one of them")
    # task / objective
    if tr.kl_untokened > 0 and not any(m.type == "lora" for m in recipe.methods):
        raise TokengraftError("train.kl_untokened compares with the model's LoRA switched off; it needs a lora method "
                              "(methods: [{type: lora, ...}]; an alora already runs untokened rows as the base model)")
    if recipe.task == "classification" and t.expand:
        raise TokengraftError("tokens.expand inserts its hidden tokens through the chat template, which a classifier's "
                              "text rows never go through; drop tokens.expand for task classification")
    if recipe.task == "classification" and any(m.type == "alora" for m in recipe.methods):
        raise TokengraftError("methods: alora (activated LoRA) works on causal language models only; "
                              "task classification trains a classifier: use lora")
    if tr.objective == "idk" and recipe.task != "pass":
        raise TokengraftError(f"train.objective: idk needs task: pass (it moves probability to <PASS>); task is {recipe.task}")
    if recipe.task == "classification" and tr.supervised_head_only:
        notes.append("train.supervised_head_only is ignored for task classification")
    if recipe.eval.pass_bias is not None and recipe.task != "pass":
        notes.append("eval.pass_bias is ignored outside task pass")
    check_answers(recipe.eval.answers, recipe.task)
    if tr.max_steps == 0 or tr.max_steps < -1:
        raise TokengraftError(f"train.max_steps must be -1 (use epochs) or a positive number of steps, got {tr.max_steps}")
    if recipe.model.device != "auto" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", recipe.model.device):
        raise TokengraftError(f"model.device must be auto, cpu, mps, cuda or cuda:N; got {recipe.model.device!r}")
    notes += _check_quantization(recipe)
    if tr.optimizer.startswith("paged_") and recipe.model.device in ("cpu", "mps"):
        raise TokengraftError(f"train.optimizer: {tr.optimizer} needs a CUDA GPU (its state is paged through CUDA "
                              f"unified memory) and model.device is {recipe.model.device}; use adamw or adafactor")
    # data
    if d.generate:
        if not task.can_generate:
            raise TokengraftError(f"task {recipe.task} has no data generator; set data.generate: false and data.train: FILE.jsonl")
        if d.train or d.validation:
            raise TokengraftError("data.generate is true and data.train/validation are set; "
                                  "set data.generate: false to use your files, or remove data.train")
    elif not d.train:
        hint = " or data.generate: true" if task.can_generate else ""
        raise TokengraftError(f"data.train is required (a JSONL file){hint}")
    for key in ("train", "validation"):
        value = getattr(d, key)
        if value and not Path(value).is_file():
            raise TokengraftError(f"data.{key}: file {value} does not exist")
    if d.generate_options and not d.generate:
        notes.append("data.generate_options is ignored because data.generate is false")
    if d.know_check and not task.know_check:
        raise TokengraftError("data.know_check turns questions the base model gets wrong into <PASS> rows; "
                              "it needs task: pass")
    if d.drop_unknown and task.labeller is None:
        raise TokengraftError("data.drop_unknown leaves out training questions the base model gets wrong; "
                              f"task {recipe.task} has no such questions")
    if d.drop_unknown and d.know_check:
        raise TokengraftError("data.drop_unknown and data.know_check both decide what the questions the base model "
                              "gets wrong train on (left out, or <PASS>); set one of them")
    if d.self_answers and task.labeller is None:
        able = ", ".join(name for name in task_names() if get_task(name).labeller is not None)
        raise TokengraftError(f"data.self_answers relabels training rows by the base model's own answers; "
                              f"task {recipe.task} has no such rows (tasks: {able})")
    notes += _check_know_check_samples(recipe, task)
    _validate_distributed(recipe)
    if not d.validation and d.validation_fraction == 0 and not d.generate and tr.eval_steps:
        notes.append("no validation data (data.validation null, validation_fraction 0): evaluation is skipped")
    return notes


def _check_know_check_samples(recipe: Recipe, task: Task) -> list[str]:
    """``data.know_check_samples``: 0 or at least 2, for a labeller that samples, read by an option that uses labels."""
    d = recipe.data
    if d.know_check_samples == 0:
        default = next(f.default for f in dataclasses.fields(DataConfig) if f.name == "know_check_temperature")
        if d.know_check_temperature != default:
            return ["data.know_check_temperature is ignored because data.know_check_samples is 0"]
        return []
    if d.know_check_samples < 2:
        raise TokengraftError(f"data.know_check_samples must be 0 (one greedy answer) or at least 2 (sampled answers, "
                              f"at least half of which must be right), got {d.know_check_samples}")
    if not (d.know_check or d.drop_unknown or d.self_answers):
        raise TokengraftError("data.know_check_samples samples answers for the know-check labels, which nothing "
                              "reads here; set data.know_check (wrong -> <PASS>), data.drop_unknown (wrong -> left "
                              "out) or data.self_answers, or set data.know_check_samples: 0")
    if not task.know_check_samples:
        able = ", ".join(name for name in task_names() if get_task(name).know_check_samples)
        raise TokengraftError(f"data.know_check_samples: task {recipe.task} labels its rows by one greedy answer; "
                              f"set data.know_check_samples: 0 (sampled labels: task {able})")
    return []


def _check_quantization(recipe: Recipe) -> list[str]:
    """Quantized bases: what cannot train on them is refused here, before anything loads."""
    m = recipe.model
    notes: list[str] = []
    four_bit_only = [k for k, default in (("quant_type", "nf4"), ("double_quant", True), ("compute_dtype", "auto"))
                     if getattr(m, k) != default]
    if m.quantization == "none":
        if four_bit_only:
            notes.append(f"model.{four_bit_only[0]} is ignored because model.quantization is none")
        return notes
    if m.quantization == "8bit" and four_bit_only:
        notes.append(f"model.{four_bit_only[0]} applies to 4bit only and is ignored with model.quantization: 8bit")
    if recipe.task == "classification":
        raise TokengraftError("model.quantization is not supported for task classification yet; "
                              "set model.quantization: none")
    if m.name.endswith(".gguf"):
        raise TokengraftError(f"model.quantization: {m.quantization} needs a Hugging Face model directory or hub id, "
                              f"not a GGUF file ({m.name}); use model.quantization: none")
    if m.device == "mps":
        raise TokengraftError("model.quantization needs model.device cpu or cuda (bitsandbytes has no mps backend)")
    for i, spec in enumerate(recipe.methods):
        if getattr(spec, "type", None) == "freeze" and getattr(spec, "mode", None) in ("attention_only", "top_k_blocks"):
            raise TokengraftError(f"methods[{i}] (freeze, mode {spec.mode}) trains base linear weights, which "
                                  f"model.quantization: {m.quantization} stores as integers that cannot train; use lora "
                                  "(QLoRA), freeze mode bitfit, or model.quantization: none")
    if importlib.util.find_spec("bitsandbytes") is None:  # training refuses it; a recipe can still be checked here
        notes.append('model.quantization needs bitsandbytes, which is not installed: pip install -e ".[quant]"')
    return notes


# ----------------------------------------------------------------------------- defaults and docs


def default_recipe(task: str = "generic") -> Recipe:
    """A sensible starting recipe per task (data generated for tasks that have a generator)."""
    tasks = typing.get_args(typing.get_type_hints(Recipe)["task"])
    if task not in tasks:
        raise TokengraftError(f"unknown task {task!r}; use one of {', '.join(tasks)}" + suggest(task, list(tasks)))
    recipe = Recipe(task=task)  # type: ignore[arg-type]
    spec = get_task(task)
    recipe.data.generate = spec.can_generate
    if spec.tokens:
        recipe.tokens.add = list(spec.tokens)
        recipe.tokens.init_text = dict(spec.init_text)
    if task == "pass":
        recipe.tokens.init = TokenInit("text", "text")
    elif task == "style":
        recipe.tokens.init = TokenInit("text", "mean")
    elif task == "lexicon":
        # Whole new words: normal (not special) tokens that decode as text, initialised
        # from their own subword pieces; trained through the embeddings alone (reference 004).
        recipe.tokens.special = False
        recipe.tokens.init = TokenInit("subwords", "subwords")
        recipe.methods = []
        recipe.train.lr = 5e-4
        recipe.train.token_lr = 5e-4
    return recipe


def schema_docs(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, doc) for every recipe field, in file order: the reference for recipes."""
    return field_docs(cls, prefix)
