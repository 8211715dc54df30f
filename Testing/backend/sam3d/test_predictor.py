"""Interactive SAM-3D inference: probabilities on the crop, the cached image embedding, input checks."""

from __future__ import annotations

import pytest
import torch
from tsfm_backend.inference.sam3d_predictor import Sam3DPredictor


class EncoderCalls:
    """Counts forward passes of the image encoder (the expensive, click-independent part)."""

    def __init__(self, network) -> None:
        self.count = 0
        network.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1


@pytest.fixture
def crop() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(1, 3, 32, 32, 32)


def test_prediction_is_a_probability_on_the_crop(tiny_network, crop):
    predictor = Sam3DPredictor(tiny_network, slice_chunk=16, window_chunk=2)
    probability = predictor.predict(crop, torch.tensor([[4, 17, 30]]))
    assert probability.shape == (32, 32, 32) and probability.dtype == torch.float32
    assert probability.device.type == "cpu"
    assert float(probability.min()) >= 0.0 and float(probability.max()) <= 1.0
    with torch.no_grad():  # the full forward pass (whole crop embedded at once) gives the same numbers
        expected = torch.softmax(tiny_network(crop, torch.tensor([[[4, 17, 30]]])), dim=1)[0, 1]
    assert torch.allclose(probability, expected, atol=1e-5)


def test_second_click_in_the_same_crop_skips_the_encoder(tiny_network, crop):
    calls = EncoderCalls(tiny_network)
    predictor = Sam3DPredictor(tiny_network)
    first = predictor.predict(crop, torch.tensor([[10, 10, 10]]), crop_key=(0, 0, 0))
    second = predictor.predict(crop, torch.tensor([[10, 10, 10], [20, 25, 5]]), crop_key=(0, 0, 0))
    assert calls.count == 1 and predictor.is_cached((0, 0, 0))
    uncached = Sam3DPredictor(tiny_network).predict(crop, torch.tensor([[10, 10, 10], [20, 25, 5]]))
    assert calls.count == 2
    assert torch.allclose(second, uncached, atol=1e-6)
    assert not torch.allclose(first, second)


def test_a_moved_crop_under_the_same_key_is_encoded_again(tiny_network, crop):
    calls = EncoderCalls(tiny_network)
    predictor = Sam3DPredictor(tiny_network)
    predictor.predict(crop, torch.tensor([[1, 2, 3]]), crop_key="object-1")
    moved = torch.roll(crop, shifts=4, dims=2)
    result = predictor.predict(moved, torch.tensor([[1, 2, 3]]), crop_key="object-1")
    assert calls.count == 2
    assert torch.allclose(
        result, Sam3DPredictor(tiny_network).predict(moved, torch.tensor([[1, 2, 3]])), atol=1e-6
    )


def test_cache_keeps_the_most_recent_crops(tiny_network, crop):
    calls = EncoderCalls(tiny_network)
    predictor = Sam3DPredictor(tiny_network, cache_size=2)
    click = torch.tensor([[5, 5, 5]])
    for key in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        predictor.predict(crop + ord(key), click, crop_key=key)
    assert calls.count == 3
    assert predictor.is_cached("a") and predictor.is_cached("c") and not predictor.is_cached("b")
    predictor.predict(crop + ord("a"), click, crop_key=None)
    assert calls.count == 4  # no key: never cached
    predictor.clear()
    assert not predictor.is_cached("a")


@pytest.mark.parametrize(
    ("crop_shape", "points", "message"),
    [
        ((1, 3, 32, 32, 16), torch.tensor([[1, 1, 1]]), r"crop must have shape \(1, 3, 32, 32, 32\)"),
        ((1, 1, 32, 32, 32), torch.tensor([[1, 1, 1]]), "crop must have shape"),
        ((1, 3, 32, 32, 32), torch.tensor([[1, 1, 32]]), r"click \[1, 1, 32\] lies outside the 32\^3 crop"),
        ((1, 3, 32, 32, 32), torch.tensor([[-1, 0, 0]]), "outside"),
        ((1, 3, 32, 32, 32), torch.tensor([[1, 1]]), r"points_kji must be \(N>=1, 3\)"),
        ((1, 3, 32, 32, 32), torch.zeros(0, 3, dtype=torch.long), r"points_kji must be \(N>=1, 3\)"),
    ],
)
def test_bad_inputs_name_the_problem(tiny_network, crop_shape, points, message):
    predictor = Sam3DPredictor(tiny_network)
    with pytest.raises(ValueError, match=message):
        predictor.predict(torch.zeros(crop_shape), points)


def test_float_clicks_and_wrong_networks_are_refused(tiny_network, crop):
    with pytest.raises(ValueError, match="integer voxel indices"):
        Sam3DPredictor(tiny_network).predict(crop, torch.tensor([[1.5, 2.0, 3.0]]))
    with pytest.raises(TypeError, match="needs a sam3d network"):
        Sam3DPredictor(torch.nn.Conv3d(1, 2, 1))
    with pytest.raises(ValueError, match="multiple of 8"):
        Sam3DPredictor(tiny_network, slice_chunk=6).predict(crop, torch.tensor([[1, 2, 3]]))


@pytest.mark.gpu
def test_vit_b_on_the_gpu_reuses_the_embedding():
    from tsfm_backend.models.sam3d import PRESETS, Sam3D

    torch.manual_seed(0)
    network = Sam3D(**PRESETS["vit_b"])
    calls = EncoderCalls(network)
    predictor = Sam3DPredictor(network, device="cuda")
    crop = torch.randn(1, 3, 128, 128, 128)
    first = predictor.predict(crop, torch.tensor([[64, 64, 64]]), crop_key=0)
    second = predictor.predict(crop, torch.tensor([[64, 64, 64]]), crop_key=0)
    assert calls.count == 1 and first.shape == (128, 128, 128)
    assert torch.allclose(first, second)


def test_running_on_the_cpu_is_announced(tiny_network, caplog):
    with caplog.at_level("INFO", logger="tsfm_backend.inference.sam3d_predictor"):
        Sam3DPredictor(tiny_network, device="cpu")
    assert "runs on the CPU" in caplog.text
