"""The `tokengraft` command line.

Each subcommand is a small function that parses its own arguments and calls
the library; heavy imports happen inside the handlers so `--help` is instant.
A `TokengraftError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import TokengraftError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Register a subcommand: `configure` adds its arguments, the decorated function runs it."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help_text, configure, handler)
        return handler

    return register


def _model_arg(parser: argparse.ArgumentParser) -> None:
    from .models import BUILTIN_ALIAS

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
    from .inspect_report import run_inspect

    return run_inspect(args.model, as_json=args.json, top_k=args.top_k, trust_remote_code=args.trust_remote_code)


# ----------------------------------------------------------------------------- methods


def _configure_methods(parser: argparse.ArgumentParser) -> None:
    _model_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object (stable keys for scripts)")
    parser.add_argument("--top-k", type=int, default=4, help="blocks the freeze rows unfreeze, counted from the top")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off by default)")


@command("methods", "trainable parameters and placement of each PEFT method on a model (meta device)", _configure_methods)
def _methods(args: argparse.Namespace) -> int:
    from .methods_report import run_methods

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
    import yaml

    from .config import load_recipe, validate_recipe

    recipe = load_recipe(args.config, args.overrides, validate=False)
    try:
        notes = validate_recipe(recipe, check_model=args.check_model)
    except TokengraftError as exc:
        raise TokengraftError(f"{args.config}: {exc}") from None
    if args.print_config:
        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True), end="")
    print(f"OK: {recipe.summary()}")
    for note in notes:
        print(f"note: {note}")
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
    args = parser.parse_args(argv)
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
