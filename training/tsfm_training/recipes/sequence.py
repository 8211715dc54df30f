"""Several runs in order, one summary: pretraining then fine-tuning, or arms of a comparison.

``stages`` lists ``{name, config, set: [key=value, ...]}``; each stage's config (a path or bundled name)
is loaded, overridden and run through its own recipe. The top-level ``set`` list is applied to every
stage (e.g. ``threads=1``). ``output_dir/summary.json`` collects each stage's result, and the mean Dice /
NSD of every stage that evaluated, side by side.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tsfm_training.config import ConfigError, apply_overrides, load_config, recipe_module

log = logging.getLogger(__name__)


def run(config: dict[str, Any]) -> dict[str, Any]:
    stages = config.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError("recipe 'sequence' needs 'stages': a list of {name, config, set}")
    common = list(config.get("set", []))
    only = set(config.get("only", []))
    results: dict[str, Any] = {}
    for stage in stages:
        if not isinstance(stage, dict) or "name" not in stage or "config" not in stage:
            raise ConfigError(f"each stage needs 'name' and 'config', got {stage!r}")
        if only and stage["name"] not in only:
            continue
        stage_config = apply_overrides(load_config(stage["config"]), common + list(stage.get("set", [])))
        log.info("stage %s: recipe %s", stage["name"], stage_config.get("recipe"))
        results[stage["name"]] = recipe_module(stage_config).run(stage_config)
    comparison = {name: {"mean_dice": r["evaluation"]["mean_dice"], "mean_nsd": r["evaluation"]["mean_nsd"],
                         "cases": r["evaluation"]["cases"]}
                  for name, r in results.items() if isinstance(r, dict) and r.get("evaluation")}
    summary = {"stages": results, "comparison": comparison}
    output_dir = Path(config.get("output_dir", "out/training/sequence"))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
