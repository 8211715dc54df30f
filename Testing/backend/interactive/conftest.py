"""Fixtures for the interactive tests (helpers live in ``support.interactive_models``)."""

from __future__ import annotations

import pytest
from support.interactive_models import PromptEcho, ellipsoid_volume, standin_card
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.volume import Volume


@pytest.fixture
def echo_model() -> LoadedModel:
    return LoadedModel(PromptEcho(), standin_card())


@pytest.fixture
def bright_model() -> LoadedModel:
    return LoadedModel(PromptEcho(bright=True), standin_card())


@pytest.fixture
def soft_tissue() -> Volume:
    return ellipsoid_volume()[0]
