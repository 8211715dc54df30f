"""Which of the backend's models the module offers for automatic jobs and which for interactive editing.

A model info is one entry of ``GET /v1/models``. Automatic models run jobs; interactive sessions take
every model whose info says ``serves_clicks`` (all promptable models, and automatic ones whose weights
also take clicks, such as VISTA3D), so such a model is offered in both lists. Servers older than the
``serves_clicks`` field take clicks with promptable models only, which is what a missing field means.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AUTOMATIC", "INTERACTIVE", "USES", "model_choices", "runs_jobs", "takes_clicks"]

AUTOMATIC, INTERACTIVE = "automatic", "interactive"
USES = (AUTOMATIC, INTERACTIVE)


def runs_jobs(model: dict[str, Any]) -> bool:
    """Whether ``POST /v1/jobs`` takes the model (its kind is automatic)."""
    return model.get("kind") == "automatic"


def takes_clicks(model: dict[str, Any]) -> bool:
    """Whether ``POST /v1/sessions`` takes the model: its ``serves_clicks``, else (older servers) promptable."""
    serves = model.get("serves_clicks")
    return bool(serves) if serves is not None else model.get("kind") == "promptable"


def model_choices(models: list[dict[str, Any]], use: str) -> list[dict[str, Any]]:
    """The models of ``models`` (``GET /v1/models``, in its order) that serve ``use``: automatic or interactive."""
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, not {use!r}")
    offered = runs_jobs if use == AUTOMATIC else takes_clicks
    return [model for model in models if offered(model)]
