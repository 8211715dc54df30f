"""The MIS-FM Volume Fusion recipe feeds the network the intensities the released MIS-FM models were
trained with, the convention ``tsfm-backend import`` records in their cards."""

from __future__ import annotations

import pytest
import torch
from tsfm_backend.formats.pymic import CT_NORMALIZATION, RELEASES
from tsfm_backend.preprocessing import normalize
from tsfm_training.config import load_config
from tsfm_training.data.preprocess import Preprocessing
from tsfm_training.networks import card_from_config


@pytest.mark.parametrize("name", ["pctnet_volf_pretrain", "pctnet_volf_pretrain_smoke"])
def test_volume_fusion_recipe_normalises_as_the_imported_models(name):
    card = card_from_config(load_config(name)["model"])
    assert card.normalization == CT_NORMALIZATION == RELEASES[card.family]["normalization"]
    settings = Preprocessing.from_card(card)
    hu = torch.tensor([-1500.0, -1000.0, 0.0, 500.0, 1000.0])
    torch.testing.assert_close(normalize(hu, settings.normalization), torch.tensor([-1.0, -1.0, 0.0, 0.5, 1.0]))
