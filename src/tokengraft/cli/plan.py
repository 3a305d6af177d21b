"""`tokengraft plan RECIPE`: the per-device memory budget of a recipe, printed or as JSON.

The planning is ``tokengraft.planner``'s; this module only loads the recipe, reads
``--budget`` and prints. The exit code says whether the plan fits, so a script or CI
job can gate a training run on it.
"""

from __future__ import annotations

import json

from tokengraft.config import load_recipe
from tokengraft.planner import parse_size, plan, table


def run_plan(config: str, overrides: list[str], *, budget: str | None, as_json: bool, new_tokens: int | None,
             device: str | None, seq_len: int | None, supervised_tokens: int | None, devices: int = 1,
             sharding: str | None = None) -> int:
    """The CLI handler: exit 0 when it fits (or no budget), 1 when it does not."""
    recipe = load_recipe(config, overrides, validate=False)
    result = plan(recipe, new_tokens=new_tokens, budget=parse_size(budget) if budget else None, device=device,
                  seq_len=seq_len, supervised_tokens=supervised_tokens, devices=devices, sharding=sharding)
    print(json.dumps(result.to_dict(), indent=2) if as_json else table(result))
    return 1 if result.fits is False else 0
