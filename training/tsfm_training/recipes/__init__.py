"""Recipes: one module per training procedure, each with ``run(config: dict) -> dict``.

A config's ``recipe: NAME`` selects ``tsfm_training.recipes.NAME``; ``tsfm-train run`` calls its ``run``.
"""
