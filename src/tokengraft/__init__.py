"""tokengraft: teach pretrained causal language models new tokens."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public API, imported lazily so `import tokengraft` (and the CLI's --help) stays fast.
_EXPORTS = {
    "load_model": "models",
    "BUILTIN_ALIAS": "constants",
    "describe": "core.arch",
    "ArchInfo": "core.arch",
    "add_tokens": "core.vocab",
    "graft": "core.graft",
    "TokenSettings": "core.graft",
    "save_graft": "rundir",
    "load_recipe": "config",
    "train": "api",
    "load": "api",
    "evaluate": "api",
    "TokengraftError": "errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokengraft' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"tokengraft.{module}"), name)


__all__ = sorted(_EXPORTS)
