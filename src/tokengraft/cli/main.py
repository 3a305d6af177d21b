"""The `tokengraft` command line: argparse and dispatch.

Each subcommand is a small function that parses its own arguments and calls
the library or a module of ``tokengraft.cli`` (which prints); imports that
load torch happen inside the handlers so `--help` stays fast.
A `TokengraftError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tokengraft.cli.demo import demo_tasks
from tokengraft.constants import ANSWERS, BUILTIN_ALIAS
from tokengraft.errors import TokengraftError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: `configure` adds its arguments, the decorated function runs it."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help_text, configure, handler)
        return handler

    return register


def _threads() -> str:
    """Give torch the cores that are free (threads.choose_threads); the heavy commands call this first."""
    from tokengraft.threads import configure_threads

    threads, why = configure_threads()
    return f"{threads} ({why})"


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=BUILTIN_ALIAS,
                        help=f"local HF directory, .gguf file, hub id, or the built-in alias (default {BUILTIN_ALIAS})")


# ----------------------------------------------------------------------------- inspect


def _configure_inspect(parser: argparse.ArgumentParser) -> None:
    _model_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (stable keys for scripts)")
    parser.add_argument("--top-k", type=int, default=4, help="how many top blocks the freezing summary covers")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


@command("inspect", "roles, module names, biases, tying, padding rows of a model", _configure_inspect)
def _inspect(args: argparse.Namespace) -> int:
    from tokengraft.cli.inspect import run_inspect

    return run_inspect(args.model, as_json=args.json, top_k=args.top_k, trust_remote_code=args.trust_remote_code)


# ----------------------------------------------------------------------------- methods


def _configure_methods(parser: argparse.ArgumentParser) -> None:
    _model_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (stable keys for scripts)")
    parser.add_argument("--top-k", type=int, default=4, help="blocks the freeze rows unfreeze, counted from the top")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


@command("methods", "trainable parameters and placement of each PEFT method on a model (meta device)", _configure_methods)
def _methods(args: argparse.Namespace) -> int:
    from tokengraft.cli.methods import run_methods

    return run_methods(args.model, as_json=args.json, top_k=args.top_k, trust_remote_code=args.trust_remote_code)


# ----------------------------------------------------------------------------- validate


def _configure_validate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*",
                        help="dotted key=value overrides, e.g. train.lr=1e-4 methods.0.r=8 (put --flags before CONFIG)")
    parser.add_argument("--check-model", action="store_true",
                        help="also run model-dependent checks on the meta device (no weights are read)")
    parser.add_argument("--print", dest="print_config", action="store_true", help="print the effective recipe as YAML")


@command("validate", "check a recipe (keys, types, values, files) without loading weights", _configure_validate)
def _validate(args: argparse.Namespace) -> int:
    from tokengraft.config import load_recipe, validate_recipe
    from tokengraft.data import check_data_files

    recipe = load_recipe(args.config, args.overrides, validate=False)
    try:
        notes = validate_recipe(recipe)
        check_data_files(recipe)  # as train does before it loads the model (imports torch, reads no weights)
        if args.check_model:  # the model checks need torch and transformers: import them only then
            from tokengraft.core.guard import check_recipe_on_model

            notes += check_recipe_on_model(recipe)
    except TokengraftError as exc:
        raise TokengraftError(f"{args.config}: {exc}") from None
    if args.print_config:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), end="")
    print(f"OK: {recipe.summary()}")
    for note in notes:
        print(f"note: {note}")
    return 0


# ----------------------------------------------------------------------------- plan


def _configure_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=1 (put --flags before CONFIG)")
    parser.add_argument("--budget", default=None, help="device memory to fit, e.g. 15GB (GB = GiB); exit code 1 when over")
    parser.add_argument("--json", action="store_true", help="every line item in bytes, the total and the verdict as JSON")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="number of new tokens (for a lexicon task before mining; overrides tokens.add/add_file)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="plan for this device (default: model.device; auto = cuda when present or quantized)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: scanned data, else data.max_length)")
    parser.add_argument("--supervised-tokens", type=int, default=None,
                        help="supervised positions per micro-batch (default: scanned data, else every position)")
    parser.add_argument("--devices", type=int, default=1,
                        help="processes (one device each) sharing the run; figures are per device (default 1)")
    shard = parser.add_mutually_exclusive_group()
    shard.add_argument("--zero", type=int, choices=[1, 2, 3], default=None,
                       help="plan for DeepSpeed ZeRO stage 1, 2 or 3 (default: the recipe's distributed section)")
    shard.add_argument("--fsdp", action="store_true", help="plan for FSDP2 sharding (GPU)")
    shard.add_argument("--ddp", action="store_true", help="plan for replicas (DDP), whatever the recipe says")


@command("plan", "per-device memory budget of a recipe, from the config alone (no weights loaded)", _configure_plan)
def _plan(args: argparse.Namespace) -> int:
    from tokengraft.cli.plan import run_plan

    sharding = f"zero{args.zero}" if args.zero else "fsdp" if args.fsdp else "none" if args.ddp else None
    return run_plan(args.config, args.overrides, budget=args.budget, as_json=args.json, new_tokens=args.new_tokens,
                    device=args.device, seq_len=args.seq_len, supervised_tokens=args.supervised_tokens,
                    devices=args.devices, sharding=sharding)


# ----------------------------------------------------------------------------- train / eval / generate / export / demo


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4 methods.0.r=8")
    parser.add_argument("--output", "-o", default=None, help="run directory (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its newest checkpoint that verifies (same recipe)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove what --output holds (an older run) and train afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    parser.add_argument("--deepspeed", metavar="CONFIG.json", default=None,
                        help="train with DeepSpeed ZeRO under a launcher, from this DeepSpeed config "
                             "(the same as distributed.engine=deepspeed distributed.deepspeed_config=CONFIG.json)")


@command("train", "graft tokens and train a recipe; progress bar, checkpoints, run directory", _configure_train)
def _train(args: argparse.Namespace) -> int:
    from tokengraft.api import train
    from tokengraft.config import load_recipe

    _threads()
    overrides = list(args.overrides)
    if args.deepspeed:
        overrides += ["distributed.engine=deepspeed", f"distributed.deepspeed_config={args.deepspeed}"]
    recipe = load_recipe(args.config, overrides)
    output = args.output or str(Path("runs") / Path(args.config).stem)
    result = train(recipe, output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if result.already_finished:
        print(f"tokengraft: {result.run_dir} already finished its {result.steps} steps; --resume has nothing to do")
    else:
        print(f"tokengraft: trained {result.steps} steps in {result.train_seconds:.0f} s; run directory {result.run_dir}")
    return 0


def _add_answers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answers", choices=ANSWERS, default=None,
                        help="<PASS> runs: who answers what the run does not pass on; base = the base model (the run "
                             "only decides whether to pass). Default: the recipe's eval.answers")


def _configure_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `tokengraft train`")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test rows")
    parser.add_argument("--no-base", action="store_true", help="skip the base-model comparison")
    parser.add_argument("--pass-bias", type=float, default=None, help="override the saved <PASS> logit bias")
    _add_answers_argument(parser)


@command("eval", "task metrics on the run's held-out test split (pass / style / lexicon)", _configure_eval)
def _eval(args: argparse.Namespace) -> int:
    from tokengraft.api import evaluate
    from tokengraft.cli.report import metrics_table

    _threads()
    result = evaluate(args.run_dir, limit=args.limit, base=not args.no_base, pass_bias=args.pass_bias,
                      answers=args.answers)
    print(json.dumps(result, indent=2) if args.json else metrics_table(result))
    return 0


def _configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (or a merged checkpoint directory)")
    parser.add_argument("prompt", nargs="+", help="user message(s); each is answered separately")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--system", default=None, help="system prompt (default: the recipe's data.system)")
    _add_answers_argument(parser)


@command("generate", "greedy answers from a trained run", _configure_generate)
def _generate(args: argparse.Namespace) -> int:
    from tokengraft.cli.generate import run_generate

    _threads()
    return run_generate(args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens, system=args.system,
                        answers=args.answers)


def _configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `tokengraft train`")
    parser.add_argument("--merged", metavar="OUT", default=None,
                        help="write a plain transformers checkpoint (LoRA merged, rows written in, vLLM-servable)")
    parser.add_argument("--gguf", metavar="OUT.gguf", default=None, help="write a llama.cpp GGUF file")
    parser.add_argument("--type", dest="gguf_type", default="f16", choices=["f32", "f16", "q8_0"], help="GGUF tensor type")
    parser.add_argument("--lora-adapter", metavar="OUT", default=None,
                        help="write OUT/base (resized base with the new rows, written once) and OUT/adapters/NAME "
                             "(a plain PEFT LoRA adapter that vLLM's multi-LoRA serving accepts); runs that share "
                             "the base model and new tokens export into the same OUT")
    parser.add_argument("--adapter-name", default=None, help="name of the adapter under OUT/adapters (default: the run directory's name)")
    parser.add_argument("--rows-in-adapter", action="store_true",
                        help="with --lora-adapter: when this run's token rows differ from those in OUT/base, carry the "
                             "difference in the adapter (an exact LoRA on embed_tokens and lm_head) instead of refusing")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--visible-tokens", nargs="+", metavar="TOKEN", default=None,
                       help="the run's tokens to write as normal added tokens, which servers show in the text they "
                            "return (default: the task's answer tokens, i.e. <PASS> for task pass)")
    shown.add_argument("--keep-special", action="store_true",
                       help="write the tokenizer exactly as the run has it (a special <PASS> is then dropped from "
                            "the text of vLLM / llama.cpp responses unless the client asks for special tokens)")


def _visible_tokens(args: argparse.Namespace) -> list[str] | None:
    return [] if args.keep_special else args.visible_tokens


def _shown_note(out: Path) -> str:
    """Which tokens a server will show, from the export's own record."""
    from tokengraft.export.info import read_export_info

    info = read_export_info(out) or {}
    shown = info.get("visible_tokens") or []
    hidden = [t["token"] for t in info.get("tokens", []) if t.get("special")]
    parts = []
    if shown:
        parts.append(f"{', '.join(shown)} written as normal added tokens (same ids, one token each): servers show "
                     "them in the text they return")
    if hidden:
        parts.append(f"{', '.join(hidden[:5])} kept special: servers drop them from the text they return unless a "
                     "request asks for special tokens (skip_special_tokens: false)")
    return "; ".join(parts)


def _answers_note(run_dir: str) -> str | None:
    """What an export of a run that answers with the base model (eval.answers: base) does not carry."""
    from tokengraft.rundir import run_answers

    if run_answers(run_dir) != "base":
        return None
    return ("this run answers with eval.answers: base, which a single checkpoint cannot: the merged and GGUF exports "
            "answer as the tuned model does. To keep the base model's answers, export --lora-adapter, serve it beside "
            "its base, ask the adapter for one token (<PASS> or not) and the base for every answer it does not pass on")


@command("export", "merged transformers checkpoint or GGUF from a run directory", _configure_export)
def _export(args: argparse.Namespace) -> int:
    if not args.merged and not args.gguf and not args.lora_adapter:
        raise TokengraftError("export needs --merged OUT, --gguf OUT.gguf or --lora-adapter OUT")
    if (args.adapter_name or args.rows_in_adapter) and not args.lora_adapter:
        raise TokengraftError("--adapter-name and --rows-in-adapter go with --lora-adapter OUT")
    answers_note = _answers_note(args.run_dir)
    if answers_note:
        print(f"tokengraft: {answers_note}")
    if args.merged:
        from tokengraft.api import export_merged

        from tokengraft.export.merged import DEQUANTIZATION_FILE, dequantization_summary, read_dequantization_report

        out = export_merged(args.run_dir, args.merged, visible_tokens=_visible_tokens(args))
        print(f"tokengraft: merged checkpoint written to {out} (load it with AutoModelForCausalLM.from_pretrained)")
        note = _shown_note(out)
        if note:
            print(f"tokengraft: {note}")
        report = read_dequantization_report(out)
        if report is not None:  # a quantized base: how far the de-quantised checkpoint is from what trained
            print(f"tokengraft: {dequantization_summary(report)} ({Path(out) / DEQUANTIZATION_FILE})")
    if args.gguf:
        from tokengraft.export.gguf import export_gguf

        out = export_gguf(args.run_dir, args.gguf, tensor_type=args.gguf_type, visible_tokens=_visible_tokens(args))
        print(f"tokengraft: GGUF written to {out}")
    if args.lora_adapter:
        from tokengraft.export.lora_adapter import export_lora_adapter

        done = export_lora_adapter(args.run_dir, args.lora_adapter, name=args.adapter_name,
                                   visible_tokens=_visible_tokens(args), rows_in_adapter=args.rows_in_adapter)
        shared = "written" if done.base_written else "shared: already there, checked against this run"
        rows = (f"; rows of {', '.join(done.rows_in_adapter[:5])} differ from the base's and are carried in the "
                "adapter" if done.rows_in_adapter else "")
        print(f"tokengraft: base {done.base} ({shared}); adapter {done.name!r} at {done.adapter} "
              f"(LoRA r={done.rank}{rows})")
        note = _shown_note(done.base)
        if note:
            print(f"tokengraft: {note}")
        print(f"tokengraft: serve with: vllm serve {done.base} --enable-lora --max-lora-rank {done.vllm_max_lora_rank} "
              f"--lora-modules {done.name}={done.adapter.resolve()}  (CPU: also --max-loras = adapters + 1)")
    return 0


def _configure_serve_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a run directory (exported to a temporary directory first), a merged export, "
                                       "or the OUT of export --lora-adapter (every adapter on its base)")
    parser.add_argument("--python", default=None, metavar="PYTHON",
                        help="the interpreter that has vLLM, e.g. venv-vllm/bin/python (default: this one; vLLM "
                             "pins transformers<5.20, so it usually lives in its own venv)")
    parser.add_argument("--server", action="store_true",
                        help="also start vLLM's OpenAI server and send one chat request for an unanswerable question")
    parser.add_argument("--data", default=None, metavar="FILE.jsonl", help="prompt rows to use instead of the run's test split")
    parser.add_argument("--limit", type=int, default=None, help="use N held-out rows (for <PASS>: half unanswerable)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's eval.max_new_tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads for both engines (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-model-len", type=int, default=1024, help="vLLM's context length (KV cache per sequence)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM's KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--export-dir", default=None, help="keep the export of a run directory here instead of a temporary one")
    parser.add_argument("--report", default=None, metavar="STEM",
                        help="write STEM.json and STEM.md, e.g. benchmarks/results/serve_pass; vLLM logs beside them")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


@command("serve-check", "serve an export with vLLM and compare with transformers on held-out prompts", _configure_serve_check)
def _serve_check(args: argparse.Namespace) -> int:
    from tokengraft.api import serve_check
    from tokengraft.serving.adapters import adapters_markdown
    from tokengraft.serving.check import report_markdown

    log_dir = Path(args.report).parent if args.report else None
    report = serve_check(args.target, data=args.data, limit=args.limit, python=args.python, server=args.server,
                         max_new_tokens=args.max_new_tokens, threads=args.threads, dtype=args.dtype,
                         max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib, export_dir=args.export_dir,
                         log_dir=log_dir, say=lambda message: print(f"tokengraft: {message}", file=sys.stderr))
    report["command"] = "tokengraft " + " ".join(shlex.quote(a) for a in args.argv)
    page = adapters_markdown(report) if report.get("kind") == "lora-adapters" else report_markdown(report)
    if args.report:
        json_path, md_path = Path(f"{args.report}.json"), Path(f"{args.report}.md")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        md_path.write_text(page)
        print(f"tokengraft: report written to {json_path} and {md_path}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else page)
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=demo_tasks(), help="which field task to run end to end")
    parser.add_argument("--output", "-o", default=None,
                        help="run directory (default runs/demo-<task>[-<model>][-<quantization>])")
    parser.add_argument("--model", default=None,
                        help="MODEL to run the demo on instead of the recipe's (e.g. the built-in gemma3-270m)")
    parser.add_argument("--quantization", choices=["4bit", "8bit"], default=None,
                        help="load the built-in model's block linears quantized (QLoRA NF4 + double quant for 4bit); "
                             'the same as the override model.quantization=4bit; needs pip install -e ".[quant]"')
    parser.add_argument("--resume", action="store_true", help="continue the demo run in --output (same recipe)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --output")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the demo recipe")


@command("demo", "end to end on the built-in model: data, training, evaluation, before/after, timings", _configure_demo)
def _demo(args: argparse.Namespace) -> int:
    from tokengraft.cli.demo import run_demo

    threads = _threads()
    overrides = list(args.overrides) + ([f"model.quantization={args.quantization}"] if args.quantization else [])
    suffix = (f"-{Path(args.model).name}" if args.model else "") + (f"-{args.quantization}" if args.quantization else "")
    return run_demo(args.task, args.output or f"runs/demo-{args.task}{suffix}", overrides, model=args.model,
                    resume=args.resume, overwrite=args.overwrite, threads=threads)


def _configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", help="two or more recipe YAML files of the same task")
    parser.add_argument("--output", "-o", default="runs/compare", help="directory for the runs and the table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override applied to every recipe (repeatable), e.g. --set train.max_steps=50")
    parser.add_argument("--no-eval", action="store_true", help="skip task metrics (eval loss only)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N test rows")
    parser.add_argument("--overwrite", action="store_true", help="replace runs an earlier compare left in --output")
    parser.add_argument("--own-data", action="store_true",
                        help="every recipe generates its own data (compare data options, e.g. replay rows); "
                             "default: all train on the first recipe's data")


@command("compare", "train recipes on the same data, split and seed; side-by-side table", _configure_compare)
def _compare(args: argparse.Namespace) -> int:
    from tokengraft.cli.compare import compare, markdown_table

    _threads()
    result = compare(args.recipes, args.output, evaluate=not args.no_eval, eval_limit=args.eval_limit,
                     overrides=args.overrides, overwrite=args.overwrite, own_data=args.own_data)
    print(markdown_table(result))
    return 0


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokengraft", description="Teach pretrained causal LMs new tokens.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        configure(sp)
        sp.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a command's positional overrides at its first --flag, so `train CONFIG --output RUN
    # train.lr=1e-4` would be refused; key=value words after the flags are overrides too.
    if extra and hasattr(args, "overrides") and all("=" in word and not word.startswith("-") for word in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.parse_args(argv)  # argparse's own message for what it does not know (exits 2)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # a report names the command that made it
    try:
        return int(args.handler(args) or 0)
    except TokengraftError as exc:
        print(f"tokengraft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokengraft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
