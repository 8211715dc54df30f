"""SAM-3D inside an interactive session on real CT: the session's cube reaches the predictor and its cache."""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.models.sam3d import PRESETS, sam3d_card


@pytest.fixture
def sarcoma(shared_data):
    """A real soft-tissue-sarcoma CT (HU) and the voxel (k, j, i) deepest inside its clinician contour."""
    case = shared_data / "sts" / "STS_001"
    volume = read_volume(case / "ct.nii.gz")
    mask = read_volume(case / "mask.nii.gz").array > 0
    centre = tuple(int(c) for c in np.round(np.argwhere(mask).mean(0)))
    assert mask[centre]
    return volume, centre


def test_clicks_in_one_cube_encode_the_image_once(tiny_network, sarcoma):
    volume, centre = sarcoma
    card = sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")
    calls = []
    tiny_network.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    session = InteractiveSession(LoadedModel(tiny_network, card), volume, procedure="cached")

    update = session.interact(Interaction("point", point=centre))
    assert update.mask.dtype == np.uint8
    cube_voxels = [round(32 * 1.0 / s) for s in volume.spacing_kji]  # 32 mm at the model's 1 mm grid
    assert all(n <= c for n, c in zip(update.mask.shape, cube_voxels, strict=True))
    assert len(calls) == 1

    session.interact(Interaction("point", point=centre))  # same cube: prompt encoder and decoder only
    assert len(calls) == 1

    far = tuple(min(c + 20, n - 1) for c, n in zip(centre, volume.array.shape, strict=True))
    session.interact(Interaction("point", point=far, object_id=2))  # another cube is encoded afresh
    assert len(calls) == 2
    assert session.mask(1).shape == volume.array.shape
