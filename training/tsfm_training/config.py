"""Run configurations: plain YAML mappings, optionally extending another file, with ``key.sub=value`` overrides.

A config names its recipe (``recipe: supervised``) and holds the recipe's sections (``data``, ``model``,
``objective``, ``loop``...). ``extends: other.yaml`` (relative to the file) starts from that file and
deep-merges this one over it, which is how each ``*_smoke.yaml`` shrinks a published recipe without
repeating it (``key!:`` replaces a mapping instead of merging into it). Relative paths stay relative to the working directory, so a run is reproducible from the
repository root.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_SCIENTIFIC = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or key."""


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: nested mappings merge, everything else (lists included) is replaced.

    A key written ``name!`` in ``update`` replaces ``name`` wholesale instead of merging into it.
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(key, str) and key.endswith("!"):
            merged[key[:-1]] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def settings(cls: type, values: dict[str, Any], what: str) -> Any:
    """The dataclass ``cls`` built from a config section, naming any key that is not one of its fields."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    return cls(**values)


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, else a file of that name (``.yaml`` optional) in the bundled ``configs/``."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(name)!r} not found (neither a file nor a name in {CONFIG_DIR})")


def load_config(name: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and the chain of files it ``extends``; the result has no ``extends`` key."""
    path = resolve_config_path(name).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} extends itself through {[str(p) for p in _seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
    return deep_merge(load_config(parent_path, _seen + (path,)), data)


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; ``value`` is parsed as YAML (``3``, ``1e-3``, ``[1, 2]``, ``null``)."""
    result = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {error}") from error
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a {type(child).__name__}, not a section")
            node = child
        node[parts[-1]] = value
    return result


def locate_shared_data(config: Any) -> Any:
    """A copy of ``config`` in which each path ``../shared/data/...`` that does not exist from the working
    directory points into the shared data folder as ``tsfm_backend.shared_data`` finds it (a checkout
    cloned away from ``../shared/data``, or $TSFM_SHARED_DATA). Other values are kept as they are."""
    if isinstance(config, dict):
        return {key: locate_shared_data(value) for key, value in config.items()}
    if isinstance(config, list):
        return [locate_shared_data(value) for value in config]
    if isinstance(config, str) and Path(config).parts[:3] == ("..", "shared", "data") and not Path(config).exists():
        from tsfm_backend.shared_data import shared_data_dir

        return str(shared_data_dir().joinpath(*Path(config).parts[3:]))
    return config


def recipe_module(config: dict[str, Any]):
    """The module ``tsfm_training.recipes.<config['recipe']>``, which defines ``run(config) -> dict``."""
    name = config.get("recipe")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"config needs 'recipe: NAME' naming a module in tsfm_training.recipes, got {name!r}")
    try:
        module = importlib.import_module(f"tsfm_training.recipes.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"tsfm_training.recipes.{name}":
            raise ConfigError(f"unknown recipe {name!r}: no module tsfm_training.recipes.{name}") from error
        raise
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"recipe module tsfm_training.recipes.{name} has no run(config) function")
    return module


def section(config: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    """``config[name]`` as a mapping, with an error naming the section when it is missing or malformed."""
    value = config.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    return value
