"""Errors raised while finding, reading or loading model weights."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file or folder that cannot be read or does not fit its architecture."""


class UnknownModelError(CheckpointError):
    """A model id that is neither installed nor bundled nor an existing path."""


class UnsafePickleError(CheckpointError):
    """A pickle that asks for a global outside the allowlist; nothing from it was executed."""
