"""VISTA3D's two procedures on a real CT, with small random weights: automatic jobs by class prompt, and
clicks as the MONAI bundle runs them (``point_based_window_inferer``, MONAI's own code, is the reference).

The CT is the soft-tissue sarcoma STS_002 (48 x 143 x 161 voxels at 3.27 x 0.98 x 0.98 mm, thigh), whole
for clicks and cropped around the tumour for jobs (2 x 2 x 2 windows); the model is the ``tiny`` preset with
three class prompts on a 32^3 patch at 3 mm, so every run takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.apps.vista3d.inferer import point_based_window_inferer
from monai.inferers import SlidingWindowInfererAdapt
from scipy import ndimage
from support.live_server import TEST_TOKEN, ThreadedServer, backend_app, module_on_path, read_ct
from tsfm_backend.checkpoints import LoadedModel, load_model, save_model
from tsfm_backend.formats import vista3d as vista3d_format
from tsfm_backend.inference.interactive import Interaction, InteractiveSession, PromptError
from tsfm_backend.inference.segmenter import SegmentOptions, segment_volume
from tsfm_backend.inference.sliding_window import pad_to_patch
from tsfm_backend.inference.vista3d_clicks import (
    MAX_CLICKS,
    TooManyClicks,
    Vista3DClicks,
    image_to_network,
    summed_window_logits,
)
from tsfm_backend.models import vista3d
from tsfm_backend.preprocessing import labels_to_source, prepare, source_to_input
from tsfm_backend.volume import Volume

CLASS_PROMPTS = [1, 3, 62]  # liver, spleen, colon
PATCH = (32, 32, 32)
SPACING = (3.0, 3.0, 3.0)
TUMOUR_CENTRE = (24, 71, 81)  # (k, j, i) of the clinician's contour's centre


def tiny_network(seed: int = 0) -> vista3d.Vista3DNetwork:
    torch.manual_seed(seed)
    return vista3d.build(preset="tiny", class_prompts=CLASS_PROMPTS).eval()


def tiny_card(model_id: str = "tiny-vista3d"):  # noqa: ANN201 - ModelCard
    card = vista3d_format.card_for(model_id, {"preset": "tiny", "class_prompts": CLASS_PROMPTS}, "random weights")
    card.patch_size, card.spacing = PATCH, SPACING
    card.validate()
    return card


@pytest.fixture(scope="module")
def sts_ct(shared_data: Path) -> Volume:
    array, spacing, origin, direction = read_ct(shared_data / "sts" / "STS_002" / "ct.nii.gz")
    return Volume(array.astype(np.float32), spacing, origin, direction)


@pytest.fixture(scope="module")
def sts_crop(sts_ct: Volume) -> Volume:
    """36 x 110 x 110 voxels (118 x 107 x 107 mm) around the tumour: 39 x 36 x 36 voxels at 3 mm."""
    k, j, i = TUMOUR_CENTRE
    start = np.array([k - 18, j - 55, i - 55])
    origin = sts_ct.ijk_to_lps() @ np.array([*start[::-1], 1.0])
    array = np.ascontiguousarray(sts_ct.array[start[0]:k + 18, start[1]:j + 55, start[2]:i + 55])
    return Volume(array, sts_ct.spacing, tuple(origin[:3]), sts_ct.direction)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_network(), tiny_card(), tmp_path_factory.mktemp("models") / "tiny-vista3d")


def _monai_clicks(network, image: torch.Tensor, clicks: np.ndarray, labels: list[int]) -> np.ndarray:
    """MONAI's ``point_based_window_inferer`` on a (1, 1, X, Y, Z) image: NaN where no window ran."""
    with torch.no_grad():
        output = point_based_window_inferer(
            inputs=image, roi_size=PATCH, predictor=network, transpose=True,
            point_coords=torch.tensor(clicks, dtype=torch.float64)[None], point_labels=torch.tensor([labels]))
    return output.as_tensor()[0, 0].numpy()


@pytest.mark.parametrize("shape", [(48, 40, 56), (20, 40, 36)])
def test_summed_windows_are_monai_s_point_window_inferer(shape):
    """Same windows, same in-window clicks, logits summed where windows overlap (a window asked for by two
    clicks counts twice), nothing outside; an axis below the patch is zero-padded half before."""
    network = tiny_network()
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((1, 1, *shape), generator=generator)
    clicks = np.array([[3.0, 5.0, 30.0], [3.4, 5.2, 30.6], [17.5, 33.0, 9.0], [15.0, 20.0, 20.0]])
    clicks = np.minimum(clicks, np.asarray(shape) - 1)
    labels = [1, 1, 0, 1]
    expected = _monai_clicks(network, image, clicks, labels)

    padded, before = pad_to_patch(image[0], PATCH)
    total, covered, low = summed_window_logits(network, padded[None], clicks + np.asarray(before), labels, PATCH)
    ours = np.full(padded.shape[1:], np.nan, dtype=np.float32)
    box = tuple(slice(int(lo), int(lo) + n) for lo, n in zip(low, total.shape, strict=True))
    ours[box] = np.where(covered.numpy(), total.numpy(), np.nan)
    ours = ours[tuple(slice(b, b + n) for b, n in zip(before, shape, strict=True))]
    assert np.array_equal(np.isnan(ours), np.isnan(expected)) and np.isnan(expected).any()
    np.testing.assert_allclose(ours[~np.isnan(ours)], expected[~np.isnan(expected)], rtol=0, atol=1e-4)


def _bundle_clicks(loaded: LoadedModel, volume: Volume, previous: np.ndarray, positive, negative) -> np.ndarray:
    """The bundle's click procedure written out with MONAI's inferer: windows, components of logits > 0
    holding a positive click (26-connected), nearest neighbour back; uncomputed voxels keep ``previous``."""
    prepared = prepare(volume, loaded.card, with_body=False)
    clicks = image_to_network(list(positive) + list(negative), prepared.grid)
    logits = _monai_clicks(loaded.network, prepared.image[None], clicks, [1] * len(positive) + [0] * len(negative))
    components, _ = ndimage.label(np.nan_to_num(logits, nan=-1.0) > 0, structure=np.ones((3, 3, 3)))
    kept = {components[tuple(int(round(c)) for c in click)] for click in clicks[: len(positive)]} - {0}
    codes = np.where(np.isnan(logits), 0, np.where(np.isin(components, sorted(kept)), 2, 1)).astype(np.uint8)
    back = source_to_input(labels_to_source(codes, prepared.grid), prepared.grid)
    return np.where(back == 0, previous, back == 2).astype(np.uint8)


def test_clicks_on_a_real_ct_follow_the_bundle_and_keep_the_mask_outside_their_windows(sts_ct):
    loaded = LoadedModel(tiny_network(), tiny_card())
    session = InteractiveSession(loaded, sts_ct, amp=False)
    everything = np.ones(sts_ct.shape, dtype=np.uint8)
    session.set_mask(1, everything)
    k, j, i = TUMOUR_CENTRE
    clicks = [((k, j, i), True), ((k, j + 20, i - 15), False), ((k - 10, j - 25, i + 20), True)]
    for count, (point, positive) in enumerate(clicks, start=1):
        session.interact(Interaction("point", positive=positive, point=point))
        shown = clicks[:count]
        expected = _bundle_clicks(loaded, sts_ct, everything, [p for p, s in shown if s], [p for p, s in shown if not s])
        np.testing.assert_array_equal(session.mask(1), expected)
    mask = session.mask(1)
    # 32 voxels of 3 mm around each click: the far corners of the 157 x 140 x 157 mm image stay as they were.
    assert mask[0, 0, 0] == 1 and mask[-1, -1, -1] == 1 and mask[-1, 0, -1] == 1
    assert 0 < (mask == 0).sum() < mask.size
    session.undo(1)
    np.testing.assert_array_equal(session.mask(1), _bundle_clicks(
        loaded, sts_ct, everything, [clicks[0][0]], [clicks[1][0]]))


def test_boxes_are_refused_and_jobs_are_automatic(sts_ct):
    loaded = LoadedModel(tiny_network(), tiny_card())
    session = InteractiveSession(loaded, sts_ct, amp=False)
    with pytest.raises(PromptError, match="VISTA3D.*clicks only"):
        session.interact(Interaction("box", box=((20, 60, 70), (28, 80, 90))))
    assert not session.objects


def test_a_job_segments_its_class_prompts_on_a_real_ct(sts_crop, model_folder):
    loaded = load_model(model_folder)
    segmentation = segment_volume(loaded, sts_crop, SegmentOptions(amp=False))
    assert segmentation.labels.shape == sts_crop.shape
    assert segmentation.names == {1: "liver", 3: "spleen", 62: "colon"}
    present = set(np.unique(segmentation.labels).tolist())
    assert present <= {0, 1, 3, 62} and len(present) > 1
    # The bundle's windows (its ``Vista3dInferer`` without clicks: ``SlidingWindowInfererAdapt`` with MONAI's
    # defaults), then one sigmoid per class: a voxel is the class of its largest logit when above 0, else 0.
    fast = segment_volume(loaded, sts_crop, SegmentOptions(amp=False, fast=True, skip_outside_body=False))
    prepared = prepare(sts_crop, loaded.card, with_body=False)
    with torch.no_grad():
        logits = SlidingWindowInfererAdapt(roi_size=PATCH, sw_batch_size=1)(prepared.image[None], loaded.network)[0]
    best, index = logits.max(dim=0)
    network_labels = np.where(best.numpy() > 0, np.array(CLASS_PROMPTS)[index.numpy()], 0).astype(np.uint8)
    expected = source_to_input(labels_to_source(network_labels, prepared.grid), prepared.grid)
    np.testing.assert_array_equal(fast.labels, expected)


@pytest.mark.slow
def test_the_server_runs_jobs_and_sessions_of_one_vista3d_model(sts_ct, sts_crop, model_folder):
    app, _ = backend_app([model_folder], token=TEST_TOKEN)
    module_on_path()
    from TSFMSegmentationLib.client import BackendClient

    with ThreadedServer(app) as server:
        client = BackendClient(server.url, token=TEST_TOKEN)
        try:
            crop_id = client.upload_image(sts_crop.array, sts_crop.spacing, sts_crop.origin, sts_crop.direction)
            job_id = client.start_job(crop_id, "tiny-vista3d", {"amp": False})
            assert client.wait_for_job(job_id, poll_s=0.2, timeout_s=300)["state"] == "done"
            labels, names = client.job_result(job_id)
            assert labels.shape == sts_crop.shape and set(names) == {1, 3, 62}
            image_id = client.upload_image(sts_ct.array, sts_ct.spacing, sts_ct.origin, sts_ct.direction)
            session_id = client.create_session(image_id, "tiny-vista3d")
            # Seeded with a mask of the whole image, the click's windows replace it near the click only.
            origin, crop = client.interact(session_id, {"kind": "point", "point": list(TUMOUR_CENTRE),
                                                        "positive": True, "object_id": 1},
                                           mask=np.ones(sts_ct.shape, dtype=np.uint8))
            assert crop.size > 0 and not crop.all()
            # 96 mm windows in a 140 x 157 mm plane: the change is narrower than the image across it.
            assert crop.shape[1] < sts_ct.shape[1] and crop.shape[2] < sts_ct.shape[2]
        finally:
            client.close()


def test_an_object_holds_a_bounded_number_of_clicks(sts_crop):
    clicks = Vista3DClicks(tiny_network(), sts_crop, tiny_card(), torch.device("cpu"))
    previous = np.zeros(sts_crop.shape, dtype=np.uint8)
    positive = [(18, 55, 55)] * (MAX_CLICKS - 3)
    with pytest.raises(TooManyClicks, match="undo, reset the object"):
        clicks.predict(previous, positive, [(10, 10, 10)] * 4)
    assert clicks._prepared is None  # refused before the image was even prepared
