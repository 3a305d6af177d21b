"""The package's shape, enforced: imports go down the layers, and private names stay private.

Two checks that keep the restructuring of issue 14 from eroding:

- ``lint-imports`` (import-linter) checks the layers contract in ``pyproject.toml``
  (cli -> api -> engines -> rundir -> components -> config -> methods / tasks ->
  bottom); a new upward import, and so any import circle between layers, fails here.
- The AST of every module under ``src/`` and ``tests/`` is walked for uses of another
  module's ``_private`` name: ``from tokengraft.x import _y``, ``tokengraft.x._y``,
  ``module_alias._y``, ``getattr(module, "_y")`` / ``monkeypatch.setattr(module, "_y", ...)``
  and dotted strings such as ``"tokengraft.x._y"``. A module may use its own private
  names; a helper two modules need is made public in the lower one. PEFT's private
  names are refused the same way (its public config fields do the job).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "tokengraft"
THIRD_PARTY_PRIVATE = ("peft",)  # libraries whose private names we must not import
DOTTED = re.compile(r"^tokengraft(\.\w+)+$")

# Uses that remain while the restructuring lands in parallel branches: (file, name). Each one is
# someone's open work (the comment says whose); the test fails on any use NOT listed here, and on a
# listed one that has gone (so the list only shrinks). It must be empty when issue 14 is done.
KNOWN: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> str:
    """Dotted name of a file under src/ or tests/ (``tests.x`` for tests, never a package module)."""
    rel = path.relative_to(SRC if path.is_relative_to(SRC) else ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of tokengraft (not a function or class in one)."""
    if dotted.split(".")[0] != PACKAGE:
        return False
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@dataclass(frozen=True)
class Use:
    file: str
    line: int
    name: str  # the private name as used, fully qualified ("tokengraft.rundir._load_tensors")

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}"


class PrivateUses(ast.NodeVisitor):
    """Collects uses of another module's private names in one file."""

    def __init__(self, file: str, module: str, is_package: bool = False) -> None:
        self.file, self.module, self.is_package = file, module, is_package
        self.bound: dict[str, str] = {}  # local name -> the tokengraft module it is bound to
        self.uses: list[Use] = []

    def add(self, node: ast.AST, owner: str, name: str) -> None:
        if owner != self.module:
            self.uses.append(Use(self.file, getattr(node, "lineno", 0), f"{owner}.{name}"))

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.module.split(".")
        keep = len(base) - node.level + (1 if self.is_package else 0)
        return ".".join(base[:keep] + ([node.module] if node.module else []))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] in THIRD_PARTY_PRIVATE + (PACKAGE,):
                for i, part in enumerate(parts[1:], 1):
                    if _private(part):
                        self.add(node, ".".join(parts[:i]), part)
                        break
            if parts[0] == PACKAGE:
                if alias.asname:
                    self.bound[alias.asname] = alias.name
                else:
                    self.bound[parts[0]] = parts[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._absolute(node)
        top = source.split(".")[0]
        if top in THIRD_PARTY_PRIVATE + (PACKAGE,):
            for alias in node.names:
                if _private(alias.name):
                    self.add(node, source, alias.name)
                elif top == PACKAGE and is_package_module(f"{source}.{alias.name}"):
                    self.bound[alias.asname or alias.name] = f"{source}.{alias.name}"
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        root: ast.AST = node
        while isinstance(root, ast.Attribute):
            chain.append(root.attr)
            root = root.value
        if isinstance(root, ast.Name) and root.id in self.bound:
            owner = self.bound[root.id]
            for attr in reversed(chain):
                if _private(attr):
                    self.add(node, owner, attr)
                    return  # the outermost private attribute is reported once, from the full chain
                if not is_package_module(f"{owner}.{attr}"):
                    break  # an object inside a module: its attributes are its own business
                owner = f"{owner}.{attr}"
            return  # the inner Attribute nodes are parts of this chain: do not visit them again
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(module, "_x"), setattr(module, "_x", v), monkeypatch.setattr(module, "_x", v)
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("getattr", "setattr", "delattr", "hasattr") and len(node.args) >= 2:
            target, attr = node.args[0], node.args[1]
            if isinstance(target, ast.Name) and target.id in self.bound and isinstance(attr, ast.Constant) \
                    and isinstance(attr.value, str) and _private(attr.value):
                self.add(node, self.bound[target.id], attr.value)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # "tokengraft.x._y" in monkeypatch.setattr / mock.patch strings
        if isinstance(node.value, str) and DOTTED.match(node.value):
            parts = node.value.split(".")
            for i, part in enumerate(parts[1:], 1):
                if _private(part):
                    self.add(node, ".".join(parts[:i]), part)
                    break


def python_files() -> Iterator[Path]:
    """Every module under src/ and tests/ but this file (whose strings are the checker's test data)."""
    for folder in (SRC, ROOT / "tests"):
        yield from (p for p in sorted(folder.rglob("*.py")) if p != Path(__file__).resolve())


def private_uses() -> list[Use]:
    uses: list[Use] = []
    for path in python_files():
        visitor = PrivateUses(str(path.relative_to(ROOT)), module_name(path), path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        uses += visitor.uses
    return uses


def test_no_module_uses_another_modules_private_names() -> None:
    uses = private_uses()
    new = [u for u in uses if (u.file, u.name) not in KNOWN]
    gone = KNOWN - {(u.file, u.name) for u in uses}
    assert not new, "private names used across modules (make the helper public in the lower module):\n" + \
        "\n".join(map(str, new))
    assert not gone, f"fixed, so remove from KNOWN in {Path(__file__).name}: {sorted(gone)}"


# ----------------------------------------------------------------------------- the checker itself


def _uses_in(source: str, module: str = "tokengraft.core.demo_mod") -> list[str]:
    visitor = PrivateUses("x.py", module)
    visitor.visit(ast.parse(source))
    return [u.name for u in visitor.uses]


def test_the_checker_sees_each_form_of_private_use() -> None:
    source = """
from tokengraft.rundir import _load_tensors, read_graft_meta
from tokengraft.core import arch
from tokengraft.config import Recipe
import tokengraft.training.lm
import tokengraft.core.vocab as vocab
from peft.utils.other import _set_trainable
from .rows import _helper

tokengraft.training.lm._unwrap(model)
vocab._register_tokens(tok, [], True, False)
arch._NAME_HINTS.values()
getattr(arch, "_private_table")
monkeypatch.setattr("tokengraft.models._has_tokenizer", lambda *a: True)
Recipe._field_docs  # a class attribute: not a module's private name
tokengraft.__version__
"""
    assert _uses_in(source) == [
        "tokengraft.rundir._load_tensors", "peft.utils.other._set_trainable", "tokengraft.core.rows._helper",
        "tokengraft.training.lm._unwrap", "tokengraft.core.vocab._register_tokens", "tokengraft.core.arch._NAME_HINTS",
        "tokengraft.core.arch._private_table", "tokengraft.models._has_tokenizer"]


def test_a_module_may_use_its_own_private_names() -> None:
    source = "from tokengraft.core.demo_mod import _mine\nimport tokengraft.core.demo_mod as me\nme._other\n"
    assert _uses_in(source) == []


# ----------------------------------------------------------------------------- layers


def test_import_layers_contract_holds() -> None:
    """`lint-imports` on this tree: the layers contract in pyproject.toml is kept (no upward import, no circle)."""
    pytest.importorskip("importlinter", reason="pip install -e '.[test]' installs import-linter")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = proc.stdout[proc.stdout.find("Contracts"):] if "Contracts" in proc.stdout else proc.stdout
    assert proc.returncode == 0, f"lint-imports failed:\n{report}\n{proc.stderr[-2000:]}"
    assert "BROKEN" not in proc.stdout and "KEPT" in proc.stdout


# ----------------------------------------------------------------------------- benchmark scripts


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (what `from module import name` can take)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # `A, B = 1, 2` defines A and B as much as two lines do.
            flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
            names |= {t.id for t in flat if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_benchmarks_import_only_what_their_siblings_define() -> None:
    """The scripts import helpers from each other; a rename in one must not leave another unrunnable
    (they run for an hour on the real model, so a failed import would surface only there)."""
    scripts = {p.stem: p for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    missing = []
    for path in scripts.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in scripts:
                defined = top_level_names(scripts[node.module])
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name not in defined]
    assert not missing, "benchmark imports of names their sibling no longer defines:\n" + "\n".join(missing)
