"""Sessions with a 3DSAM-adapter model delegate to ``Sam3DPredictor``: a fixed cube at the card spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.interactive_models import ellipsoid_volume
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.inference.interactive import Interaction, InteractiveSession, PromptError
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import build_network
from tsfm_backend.models.sam3d.presets import PRESETS


@pytest.fixture(scope="module")
def tiny_sam3d() -> LoadedModel:
    torch.manual_seed(0)
    card = ModelCard(id="sam3d-tiny", family="sam3d", architecture=dict(PRESETS["tiny"]), kind="promptable",
                     classes={1: "object"}, in_channels=3, spacing=(1.0, 1.0, 1.0),
                     normalization={"scheme": "ct_clip_zscore", "lower": -100.0, "upper": 300.0,
                                    "mean": 50.0, "std": 60.0},
                     patch_size=(32, 32, 32), output="softmax")
    return LoadedModel(build_network(card), card)


def test_click_runs_one_cube_centred_on_the_click(tiny_sam3d, monkeypatch):
    volume, _ = ellipsoid_volume(shape=(30, 60, 60), centre=(15, 30, 30), spacing_kji=(2.0, 1.0, 1.0))
    session = InteractiveSession(tiny_sam3d, volume, procedure="cached")
    seen = []
    original = session._sam3d.predict

    def spy(crop, points, crop_key=None):
        seen.append((tuple(crop.shape), points.clone(), crop_key))
        return original(crop, points, crop_key=crop_key)

    monkeypatch.setattr(session._sam3d, "predict", spy)
    update = session.interact(Interaction("point", True, point=(15, 30, 30)))
    crop_shape, points, key = seen[0]
    assert crop_shape == (1, 3, 32, 32, 32)
    # 32 mm cube: 16 slices of 2 mm and 32 rows/columns of 1 mm, the click in its middle.
    assert session.objects[1].roi.size == (16, 32, 32)
    assert torch.all((points[0] - 16).abs() <= 2)  # within one image voxel of the middle
    assert update.mask.dtype == np.uint8
    session.interact(Interaction("point", True, point=(15, 31, 30)))
    assert seen[1][2] == key  # same cube: the cached image embedding is reused


def test_negative_clicks_and_boxes_are_refused(tiny_sam3d):
    volume, _ = ellipsoid_volume(shape=(30, 60, 60), centre=(15, 30, 30))
    session = InteractiveSession(tiny_sam3d, volume)
    with pytest.raises(PromptError, match="positive clicks only"):
        session.interact(Interaction("point", False, point=(15, 30, 30)))
    with pytest.raises(PromptError, match="not boxes"):
        session.interact(Interaction("box", True, box=((10, 20, 20), (20, 40, 40))))
