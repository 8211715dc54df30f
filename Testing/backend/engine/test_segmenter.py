"""segment_volume end to end: labels on the input grid for any geometry, both output modes, cancel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.segmenter import (
    JobTooLarge,
    LimitNames,
    SegmentOptions,
    label_lookup,
    plan_segmentation,
    segment_volume,
)
from tsfm_backend.inference.sliding_window import InferenceCancelled
from tsfm_backend.label_io import write_labels
from tsfm_backend.model_card import ModelCard
from tsfm_backend.volume import Volume

ANGLE = np.deg2rad(25)
OBLIQUE_FLIPPED = np.array(
    [[np.cos(ANGLE), 0.0, -np.sin(ANGLE)], [0.0, -1.0, 0.0], [np.sin(ANGLE), 0.0, np.cos(ANGLE)]]
)


@dataclass
class Loaded:
    network: torch.nn.Module
    card: ModelCard


class Threshold(torch.nn.Module):
    """Class 1 where the input is positive, class 2 where it is above 2: a network with a known answer."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 10 * x, 100 * (x - 2)], dim=1)


def threshold_model(**overrides) -> Loaded:
    values = dict(
        id="threshold",
        family="stunet",
        architecture={},
        classes={1: "body", 2: "bright"},
        normalization={"scheme": "none"},
        patch_size=(16, 16, 16),
        spacing=(1.3, 1.7, 2.1),
    )
    values.update(overrides)
    return Loaded(Threshold(), ModelCard(**values))


def ellipsoid_volume(direction: np.ndarray) -> Volume:
    """Values 3 in a small core, 1 in an ellipsoid around it, -1 outside; anisotropic spacing."""
    k, j, i = np.meshgrid(np.arange(20), np.arange(30), np.arange(26), indexing="ij")
    radius = ((k - 10) / 7.0) ** 2 + ((j - 14) / 11.0) ** 2 + ((i - 12) / 9.0) ** 2
    array = np.where(radius < 1, 1.0, -1.0).astype(np.float32)
    array[radius < 0.2] = 3.0
    return Volume(array, (1.1, 0.9, 2.5), (-40.0, 12.0, 7.5), tuple(direction.ravel()))


def expected_labels(volume: Volume) -> np.ndarray:
    return (volume.array > 0).astype(np.uint8) + (volume.array > 2).astype(np.uint8)


@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE_FLIPPED], ids=["identity", "oblique_flipped"])
@pytest.mark.parametrize("axis_order", ["kji", "ras"])
@pytest.mark.parametrize("fast", [False, True])
def test_labels_come_back_on_the_input_grid(tmp_path, direction, axis_order, fast):
    volume = ellipsoid_volume(direction)
    result = segment_volume(threshold_model(axis_order=axis_order), volume, SegmentOptions(fast=fast))
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert result.names == {1: "body", 2: "bright"}
    agreement = (result.labels == expected_labels(volume)).mean()
    assert agreement > (0.95 if fast else 0.97), f"agreement {agreement:.4f} after resampling there and back"
    # Written next to the image, the label map has the image's geometry exactly.
    written = write_labels(result.labels, volume, result.names, tmp_path / "labels.nii.gz")
    back = read_volume(written[0])
    assert back.shape == volume.shape
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


@pytest.mark.parametrize("axis_order", ["kji", "ras"])
def test_inverse_is_exact_without_resampling(axis_order):
    volume = ellipsoid_volume(OBLIQUE_FLIPPED)
    model = threshold_model(axis_order=axis_order, spacing=None)
    for crop, fast in ((False, False), (True, True)):
        options = SegmentOptions(crop_to_body=crop, fast=fast, skip_outside_body=False)
        result = segment_volume(model, volume, options)
        np.testing.assert_array_equal(result.labels, expected_labels(volume))


def test_sigmoid_models_label_the_strongest_class_above_half():
    model = threshold_model(output="sigmoid", classes={4: "body", 9: "bright"}, spacing=None)

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return torch.cat([10 * x, 100 * (x - 2)], dim=1)

    model.network = TwoHeads()
    volume = ellipsoid_volume(np.eye(3))
    labels = segment_volume(model, volume, SegmentOptions(skip_outside_body=False)).labels
    expected = np.where(volume.array > 2, 9, np.where(volume.array > 0, 4, 0))
    np.testing.assert_array_equal(labels, expected)


def test_many_classes_give_uint16_labels():
    card = ModelCard(id="big", family="stunet", architecture={}, classes={i: f"c{i}" for i in range(1, 300)})
    lookup, dtype = label_lookup(card)
    assert dtype == np.uint16 and len(lookup) == 300 and lookup[-1] == 299


def test_cancel_and_progress_through_segment_volume():
    volume = Volume(np.random.default_rng(0).normal(size=(64, 20, 20)).astype(np.float32))
    model = threshold_model(spacing=None)
    seen = []
    with pytest.raises(InferenceCancelled):
        segment_volume(
            model, volume, progress=lambda f, m: seen.append(f), is_cancelled=lambda: len(seen) >= 1
        )
    assert len(seen) == 1


def test_promptable_models_are_refused():
    volume = ellipsoid_volume(np.eye(3))
    with pytest.raises(ValueError, match="promptable"):
        segment_volume(threshold_model(kind="promptable"), volume)


def test_air_outside_the_body_is_background_and_skipped(shared_data):
    ct = read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    padded = np.pad(ct.array, ((0, 0), (0, 0), (0, 64)), constant_values=-1024)
    volume = Volume(padded, ct.spacing, ct.origin, ct.direction)
    calls = []

    class Everywhere(torch.nn.Module):
        """Says "class 1" everywhere, so any skipped window shows as background."""

        def forward(self, x):
            calls.append(x.shape[0])
            return torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)

    model = Loaded(
        Everywhere(),
        ModelCard(
            id="everywhere",
            family="stunet",
            architecture={},
            classes={1: "x"},
            patch_size=(16, 32, 32),
            spacing=None,
            normalization={"scheme": "zscore"},
        ),
    )
    skipped = segment_volume(model, volume, SegmentOptions(skip_outside_body=True)).labels
    skipped_calls, calls[:] = sum(calls), []
    full = segment_volume(model, volume, SegmentOptions(skip_outside_body=False)).labels
    assert skipped_calls < sum(calls)
    assert full.min() == 1
    assert skipped[:, :, -20:].max() == 0, "air far from the body is background"
    assert skipped[volume.array > -500].min() == 1, "every body voxel is still segmented"


def test_real_tiny_stunet_on_real_ct_with_postprocessing(tmp_path, shared_data):
    from support.tiny_models import save_tiny_model
    from tsfm_backend.checkpoints import load_model

    folder = save_tiny_model(
        tmp_path / "m", classes={1: "a", 2: "b"}, patch_size=(32, 64, 64), spacing=(3.0, 3.0, 3.0)
    )
    loaded = load_model(folder)
    volume = read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    plain = segment_volume(loaded, volume, SegmentOptions(step=0.5, batch_size=2))
    cleaned = segment_volume(loaded, volume, SegmentOptions(step=0.5, batch_size=2, largest_component=True))
    assert plain.labels.shape == volume.shape
    assert set(np.unique(cleaned.labels)) <= set(np.unique(plain.labels)) <= {0, 1, 2}
    assert np.all((cleaned.labels == plain.labels) | (cleaned.labels == 0)), "clean-up only removes voxels"


def test_autocast_choice():
    from tsfm_backend.device import amp_dtype, cpu_has_native_bf16

    assert amp_dtype(torch.device("cpu"), False) is None
    assert amp_dtype(torch.device("cpu"), True) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert amp_dtype(torch.device("meta"), True) is None


def test_the_plan_counts_the_windows_segment_volume_runs():
    volume = ellipsoid_volume(np.eye(3))
    model = threshold_model(spacing=None, patch_size=(8, 8, 8))
    options = SegmentOptions(step=0.3, skip_outside_body=False)
    plan = plan_segmentation(model.card, volume, options)
    seen = []
    segment_volume(model, volume, options, progress=lambda f, m: seen.append(m))
    assert plan.grid == volume.shape and plan.windows == int(seen[-1].split()[-1])


def test_the_card_s_window_step_applies_unless_the_job_gives_one(monkeypatch):
    import tsfm_backend.inference.segmenter as segmenter

    used = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append(kwargs["step"])
        return real(*args, **kwargs)

    real = segmenter.sliding_window
    monkeypatch.setattr(segmenter, "sliding_window", recording)
    volume = ellipsoid_volume(np.eye(3))
    model = threshold_model(spacing=None, patch_size=(8, 8, 8), sliding_window_step=0.25)  # MONAI overlap 0.75
    default = SegmentOptions(skip_outside_body=False)
    assert default.step is None
    quarter = segment_volume(model, volume, default).labels
    half = segment_volume(model, volume, SegmentOptions(step=0.5, skip_outside_body=False)).labels
    assert used == [0.25, 0.5]
    # 20 x 30 x 26 voxels, patch 8: strides of at most 2 voxels, or of at most 4 at the default step 0.5.
    assert plan_segmentation(model.card, volume, default).windows_per_axis == (7, 12, 10)
    assert plan_segmentation(threshold_model(spacing=None, patch_size=(8, 8, 8)).card, volume,
                             default).windows_per_axis == (4, 7, 6)
    np.testing.assert_array_equal(quarter, half)  # a pointwise network: the overlap changes nothing here


@pytest.mark.parametrize("step", [1e-3, 1e-300, 5e-324])
def test_a_job_asking_for_too_many_windows_is_refused_before_anything_is_allocated(monkeypatch, step):
    import tsfm_backend.inference.segmenter as segmenter

    def no_preprocessing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("preprocessing ran although the job was over its limit")

    monkeypatch.setattr(segmenter, "prepare", no_preprocessing)
    volume = Volume(np.zeros((40, 60, 60), np.float32))
    with pytest.raises(JobTooLarge, match=r"options\.step .* windows .* at most 1,000 are allowed \(settings\.max_windows\)"):
        segment_volume(threshold_model(spacing=None), volume, SegmentOptions(step=step), max_windows=1000)


def test_a_job_whose_grid_would_not_fit_in_memory_is_refused_with_the_limit_named():
    # A 3 mm image read by a model trained at 0.01 mm would be resampled 300x along every axis.
    volume = Volume(np.zeros((20, 20, 20), np.float32), spacing=(3.0, 3.0, 3.0))
    names = LimitNames(step="--step", max_windows="--max-windows", max_bytes="--max-job-gb")
    with pytest.raises(JobTooLarge, match=r"GiB of working memory .* is allowed \(--max-job-gb\)") as refused:
        segment_volume(threshold_model(spacing=(0.01, 0.01, 0.01)), volume, max_windows=10**30,
                       max_bytes=16 << 30, limit_names=names)
    assert refused.value.limit == "--max-job-gb"
