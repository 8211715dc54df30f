"""The sliding window's card options: ``constant`` blending, the ``fixed_stride`` layout and ``replicate``
padding make our windows MONAI's ``sliding_window_inference``; the defaults stay nnU-Net's."""

from __future__ import annotations

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from tsfm_backend.inference.sliding_window import (
    gaussian_importance_map,
    importance_map,
    pad_to_patch,
    sliding_window_logits,
    total_windows,
    window_positions,
    window_starts,
)
from tsfm_backend.model_card import ModelCard, ModelCardError

PATCH = (16, 20, 24)
CLASSES = 3


def small_network(seed: int = 0) -> torch.nn.Module:
    """Two convolutions wide enough that a voxel's logits depend on its neighbours (so windows matter)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, CLASSES, 3, padding=1)).eval()


def ours(network: torch.nn.Module, image: torch.Tensor, step: float, padding: str, body=None) -> torch.Tensor:  # noqa: ANN001
    """Our logits (classes, Z, Y, X) on the (1, Z, Y, X) ``image`` with MONAI's window settings."""
    padded, before = pad_to_patch(image, PATCH, padding)
    with torch.no_grad():
        logits = sliding_window_logits(network, padded, PATCH, CLASSES, step=step, blend="constant",
                                       layout="fixed_stride", body=body)
    return logits[(slice(None), *(slice(b, b + n) for b, n in zip(before, image.shape[1:], strict=True)))]


@pytest.mark.parametrize(("shape", "overlap", "padding", "monai_padding"), [
    ((50, 41, 70), 0.25, "replicate", "replicate"),  # VISTA3D bundle-style overlap, strides that do not divide
    ((11, 47, 24), 0.25, "replicate", "replicate"),  # one axis below the patch, one equal to it
    ((11, 47, 61), 0.25, "zeros", "constant"),
    ((37, 33, 50), 0.6, "zeros", "constant"),  # a stride int(patch * 0.4) that rounds down on every axis
])
def test_constant_blending_is_monai_s_sliding_window_inference(shape, overlap, padding, monai_padding):
    network = small_network()
    generator = torch.Generator().manual_seed(3)
    image = torch.rand((1, *shape), generator=generator) * 2 - 0.5
    with torch.no_grad():
        expected = sliding_window_inference(image[None], PATCH, 1, network, overlap=overlap, mode="constant",
                                            padding_mode=monai_padding)[0]
    got = ours(network, image, 1 - overlap, padding)
    assert got.shape == expected.shape == (CLASSES, *shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The nnU-Net defaults (evenly spread windows, Gaussian weights, zero padding) give other logits.
    padded, before = pad_to_patch(image, PATCH)
    with torch.no_grad():
        default = sliding_window_logits(network, padded, PATCH, CLASSES, step=1 - overlap)
    default = default[(slice(None), *(slice(b, b + n) for b, n in zip(before, shape, strict=True)))]
    assert (default - expected).abs().max() > 1e-3


@pytest.mark.parametrize(("size", "patch", "step"), [(100, 32, 0.75), (128, 128, 0.75), (129, 128, 0.75),
                                                     (300, 128, 0.75), (61, 24, 0.4), (40, 7, 1e-9)])
def test_fixed_stride_starts_are_monai_s(size, patch, step):
    interval = _get_scan_interval((size,), (patch,), 1, (1 - step,))
    monai = [s[0].start for s in dense_patch_slices((size,), (patch,), interval)]
    assert window_starts(size, patch, step, "fixed_stride") == monai
    assert total_windows((size, size, size), (patch, patch, patch), step, "fixed_stride") == len(monai) ** 3


def test_the_even_default_is_unchanged_and_differs_from_fixed_stride():
    assert window_starts(100, 32, 0.75) == [0, 23, 45, 68]
    assert window_starts(100, 32, 0.75, "fixed_stride") == [0, 24, 48, 68]
    assert window_positions((40, 40, 40), (32, 32, 32), 0.75) == window_positions((40, 40, 40), (32, 32, 32), 0.75,
                                                                                  layout="even")
    torch.testing.assert_close(importance_map(PATCH), gaussian_importance_map(PATCH), rtol=0, atol=0)
    assert bool((importance_map(PATCH, "constant") == 1).all())


def test_replicate_padding_repeats_the_edges_and_zeros_stays_the_default():
    image = torch.arange(1.0, 4.0).reshape(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    zeros, before = pad_to_patch(image, (6, 2, 2))
    replicated, same_before = pad_to_patch(image, (6, 2, 2), "replicate")
    assert before == same_before == (1, 0, 0)
    assert zeros[0, :, 0, 0].tolist() == [0, 1, 2, 3, 0, 0]
    assert replicated[0, :, 0, 0].tolist() == [1, 1, 2, 3, 3, 3]


def test_skipped_windows_still_take_the_fill_with_constant_blending():
    network = small_network()
    image = torch.rand((1, 40, 20, 24), generator=torch.Generator().manual_seed(5))
    body = torch.zeros((40, 20, 24), dtype=torch.bool)
    body[:10] = True  # windows starting at 12 and 24 hold no body voxel
    got = ours(network, image, 0.75, "zeros", body=body)
    full = ours(network, image, 0.75, "zeros")
    torch.testing.assert_close(got[:, :12], full[:, :12], rtol=0, atol=1e-6)
    assert bool((got[:, 16:] == 0).all())


@pytest.mark.parametrize(("field", "value"), [("sliding_window_blend", "median"),
                                              ("sliding_window_layout", "random"),
                                              ("sliding_window_padding", "reflect")])
def test_a_card_with_an_unknown_window_option_is_refused_by_name(field, value):
    fields = {"id": "m", "family": "stunet", "architecture": {}}
    card = ModelCard(**fields)
    assert (card.sliding_window_blend, card.sliding_window_layout, card.sliding_window_padding) == (
        "gaussian", "even", "zeros")
    with pytest.raises(ModelCardError, match=field):
        ModelCard(**fields, **{field: value})
    with pytest.raises(ValueError, match="is not one of"):
        window_starts(40, 8, 0.5, "random")
