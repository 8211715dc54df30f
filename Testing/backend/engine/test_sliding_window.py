"""Sliding window: window layout, Gaussian map, slab-wise accumulation, batching, mirroring, cancel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tsfm_backend.inference.sliding_window import (
    InferenceCancelled,
    TooManyWindows,
    gaussian_importance_map,
    make_predictor,
    mirror_combinations,
    pad_to_patch,
    sliding_window,
    sliding_window_logits,
    total_windows,
    window_count,
    window_positions,
    window_starts,
    windows_in_body,
)


def small_net(in_channels: int = 1, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A position-independent network (padding keeps it local) with random weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Conv3d(4, classes, 3, padding=1),
    ).eval()


def naive_full_accumulation(net, image, patch, step, classes):
    """Reference: classes x whole-volume sums, every window, no slabs."""
    importance = gaussian_importance_map(patch)
    scores = torch.zeros((classes, *image.shape[1:]))
    weights = torch.zeros(image.shape[1:])
    for z, y, x in window_positions(image.shape[1:], patch, step):
        region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        logits = net(image[(slice(None), *region)][None])[0]
        scores[(slice(None), *region)] += logits * importance
        weights[region] += importance
    return scores / weights


@pytest.mark.parametrize(
    "size,patch,step", [(100, 32, 0.5), (32, 32, 0.5), (33, 32, 0.5), (200, 64, 0.25), (97, 13, 1.0)]
)
def test_window_starts_cover_the_axis_evenly(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert starts == sorted(set(starts))
    gaps = np.diff(starts)
    assert np.all(gaps <= patch * step + 1e-9), "neighbouring windows must overlap by at least 1 - step"
    assert len(starts) == int(np.ceil((size - patch) / (patch * step))) + 1
    if len(gaps):
        assert gaps.max() - gaps.min() <= 1, "windows are evenly spaced"


def test_window_starts_reject_bad_arguments():
    with pytest.raises(ValueError, match="step"):
        window_starts(100, 32, 0.0)
    with pytest.raises(ValueError, match="larger than the axis"):
        window_starts(16, 32, 0.5)


def test_window_positions_are_sorted_along_the_first_axis():
    positions = window_positions((70, 50, 40), (32, 32, 32), 0.5)
    assert positions == sorted(positions)
    assert len(positions) == len(window_starts(70, 32, 0.5)) * len(window_starts(50, 32, 0.5)) * 2


def test_gaussian_map_properties():
    patch = (16, 24, 32)
    weight = gaussian_importance_map(patch)
    assert weight.shape == patch and weight.dtype == torch.float32
    assert float(weight.max()) == pytest.approx(1.0)
    assert tuple(int(i) for i in np.unravel_index(int(weight.argmax()), patch)) == (8, 12, 16)
    assert float(weight.min()) > 0
    # sigma = patch / 8: one sigma from the centre along the last axis the weight is exp(-1/2).
    assert float(weight[8, 12, 16 + 4]) == pytest.approx(np.exp(-0.5), rel=1e-5)
    # Symmetric about the centre voxel.
    assert torch.allclose(weight[8, 12, 16 - 3], weight[8, 12, 16 + 3])


def test_equals_direct_forward_when_the_patch_covers_the_image():
    net = small_net()
    image = torch.randn(1, 16, 20, 24)
    with torch.no_grad():
        expected = net(image[None])[0]
        got = sliding_window_logits(make_predictor(net), image, (16, 20, 24), 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
@pytest.mark.parametrize("step", [0.5, 0.3])
def test_slab_wise_accumulation_equals_full_accumulation(batch_size, step):
    net = small_net()
    image = torch.randn(1, 41, 23, 27)
    patch = (12, 16, 16)
    slabs = []
    with torch.no_grad():
        expected = naive_full_accumulation(net, image, patch, step, 3)
        sliding_window(
            make_predictor(net),
            image,
            patch,
            3,
            lambda z0, s: slabs.append((z0, s.clone())),
            step=step,
            batch_size=batch_size,
        )
    # Slabs arrive in order, cover every row once, and never hold the whole depth at once.
    rows = [z0 + r for z0, s in slabs for r in range(s.shape[1])]
    assert rows == list(range(41))
    assert len(slabs) > 1 and max(s.shape[1] for _, s in slabs) < 41
    torch.testing.assert_close(torch.cat([s for _, s in slabs], dim=1), expected, rtol=1e-5, atol=1e-5)


def test_windows_outside_the_body_are_skipped_and_filled():
    calls = []
    net = small_net()

    def predict(batch):
        calls.append(batch.shape[0])
        return make_predictor(net)(batch)

    image = torch.randn(1, 48, 16, 16)
    body = torch.zeros(48, 16, 16, dtype=torch.bool)
    body[:10] = True  # only the first windows along z see body voxels
    fill = torch.tensor([5.0, -5.0, -5.0])
    with torch.no_grad():
        out = sliding_window_logits(predict, image, (16, 16, 16), 3, body=body, empty_logits=fill)
    positions = window_positions((48, 16, 16), (16, 16, 16), 0.5)
    assert len(windows_in_body(positions, (16, 16, 16), body)) == sum(calls) < len(positions)
    assert out.shape == (3, 48, 16, 16)
    torch.testing.assert_close(out[:, 40:], fill[:, None, None, None].expand(3, 8, 16, 16))


def test_windows_in_body_matches_a_direct_check():
    rng = np.random.default_rng(1)
    body = rng.random((30, 30, 30)) > 0.999
    positions = window_positions((30, 30, 30), (10, 10, 10), 0.5)
    expected = [p for p in positions if body[p[0] : p[0] + 10, p[1] : p[1] + 10, p[2] : p[2] + 10].any()]
    assert windows_in_body(positions, (10, 10, 10), body) == expected


def test_cancel_raises_within_one_batch_and_progress_is_reported():
    net = small_net()
    image = torch.randn(1, 64, 16, 16)
    seen, batches_run = [], []

    def predict(batch):
        batches_run.append(1)
        return make_predictor(net)(batch)

    with torch.no_grad(), pytest.raises(InferenceCancelled):
        sliding_window(
            predict,
            image,
            (16, 16, 16),
            3,
            lambda *_: None,
            progress=lambda f, m: seen.append(f),
            is_cancelled=lambda: len(seen) >= 2,
        )
    assert len(batches_run) == 2, "the cancel check runs before every batch"
    assert seen == sorted(seen) and 0 < seen[-1] < 1


def test_progress_reaches_one():
    seen = []
    with torch.no_grad():
        sliding_window_logits(
            make_predictor(small_net()),
            torch.randn(1, 40, 16, 16),
            (16, 16, 16),
            3,
            progress=lambda f, m: seen.append(f),
        )
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_mirroring_covers_every_flip_and_is_exact_for_a_flip_invariant_network():
    assert len(mirror_combinations((0, 1, 2))) == 8
    assert set(mirror_combinations((0, 1, 2))) == {
        c for r in range(4) for c in itertools.combinations((2, 3, 4), r)
    }

    class Pointwise(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, -x, x**2], dim=1)

    batch = torch.randn(2, 1, 8, 8, 8)
    torch.testing.assert_close(make_predictor(Pointwise(), (0, 1, 2))(batch), Pointwise()(batch))
    # A position-dependent network gives a different, symmetric answer under mirroring.
    net = small_net()
    with torch.no_grad():
        mirrored = make_predictor(net, (2,))(batch)
        torch.testing.assert_close(
            mirrored, torch.flip(make_predictor(net, (2,))(torch.flip(batch, (4,))), (4,))
        )
        assert not torch.allclose(mirrored, make_predictor(net)(batch))


def test_deep_supervision_outputs_use_the_full_resolution_head():
    class DeepSupervised(torch.nn.Module):
        def forward(self, x):
            return [x * 2, x[:, :, ::2, ::2, ::2]]

    batch = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(make_predictor(DeepSupervised())(batch), batch * 2)


def test_pad_to_patch_centres_the_image():
    image = torch.ones(1, 10, 32, 5)
    padded, before = pad_to_patch(image, (16, 16, 16))
    assert padded.shape == (1, 16, 32, 16)
    assert before == (3, 0, 5)
    assert float(padded.sum()) == image.numel()
    assert float(padded[0, 3:13, :, 5:10].sum()) == image.numel()


def test_small_slab_chunks_match_the_full_accumulation(monkeypatch):
    import tsfm_backend.inference.sliding_window as sw

    net = small_net()
    image = torch.randn(1, 30, 20, 20)
    patch = (12, 16, 16)
    monkeypatch.setattr(sw, "SLAB_ELEMENTS", 3 * 20 * 20)  # one row per slab
    slabs = []
    with torch.no_grad():
        expected = naive_full_accumulation(net, image, patch, 0.5, 3)
        sliding_window(make_predictor(net), image, patch, 3, lambda z0, s: slabs.append(s))
    assert all(s.shape[1] == 1 for s in slabs) and len(slabs) == 30
    torch.testing.assert_close(torch.cat(slabs, dim=1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,patch", [(100, 32), (32, 32), (33, 32), (200, 64), (97, 13), (5, 16)])
@pytest.mark.parametrize("step", [1.0, 0.5, 0.25, 0.1, 0.013])
def test_window_count_is_the_layout_length_without_building_it(size, patch, step):
    padded = max(size, patch)
    assert window_count(padded, patch, step) == len(window_starts(padded, patch, step))


@pytest.mark.parametrize("step", [1e-3, 1e-300, 5e-324])
def test_a_tiny_step_is_refused_before_its_layout_is_built(step):
    # 1e-300 of a patch would be ~1e900 windows: only the count is computed, as a float beyond 2**62.
    assert total_windows((64, 300, 300), (32, 64, 64), step) > 10**6
    with pytest.raises(TooManyWindows, match="at most 10,000 are allowed"):
        window_positions((64, 300, 300), (32, 64, 64), step, max_windows=10_000)
    assert len(window_positions((64, 300, 300), (32, 64, 64), 0.5, max_windows=10_000)) == 3 * 9 * 9


def test_cancel_is_honoured_while_windows_are_planned():
    calls = []

    def predict(batch):  # noqa: ANN001, ANN202 - never reached
        calls.append(batch.shape)
        return torch.zeros((batch.shape[0], 2, *batch.shape[2:]))

    with pytest.raises(InferenceCancelled, match="before the windows were planned"):
        sliding_window(predict, torch.zeros((1, 20, 20, 20)), (8, 8, 8), 2, lambda *_: None,
                       is_cancelled=lambda: True)
    positions = window_positions((40, 40, 40), (8, 8, 8), 0.5)
    with pytest.raises(InferenceCancelled, match="while planning windows"):
        windows_in_body(positions, (8, 8, 8), np.ones((40, 40, 40), bool), is_cancelled=lambda: True)
    assert calls == []
