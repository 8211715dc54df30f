"""Instance norms swapped for group norms: the same function, the same state dict, channels-last weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from tsfm_backend.inference.channels_last import group_norm_like, prepare_channels_last
from tsfm_backend.models.click_unet import build


def test_the_click_network_computes_the_same_after_the_swap():
    torch.manual_seed(0)
    network = build("tiny").eval()
    for parameter in network.parameters():  # non-trivial affine parameters in every norm
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(2, 5, 32, 64, 64)  # two divisors per axis: the deepest stage has 2 x 2 x 2 voxels
    names = list(network.state_dict())
    with torch.no_grad():
        expected = network(x)
        prepared = prepare_channels_last(network)
        assert prepared is network
        assert not any(isinstance(m, nn.InstanceNorm3d) for m in network.modules())
        assert any(isinstance(m, nn.GroupNorm) for m in network.modules())
        assert list(network.state_dict()) == names
        torch.testing.assert_close(network(x), expected, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(network(x.contiguous(memory_format=torch.channels_last_3d)), expected,
                                   atol=2e-3, rtol=1e-3)
        # One sample at a time the norms run as batch norm with batch statistics: still the same function.
        for sample in range(2):
            torch.testing.assert_close(network(x[sample:sample + 1]), expected[sample:sample + 1],
                                       atol=2e-3, rtol=1e-3)
    convolution = next(m for m in network.modules() if isinstance(m, nn.Conv3d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last_3d)
    groups = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
    assert prepare_channels_last(network) is network
    assert [m for m in network.modules() if isinstance(m, nn.GroupNorm)] == groups  # nothing swapped twice


def test_parameters_are_shared_and_running_statistics_refused():
    norm = nn.InstanceNorm3d(4, affine=True)
    group = group_norm_like(norm)
    assert group.weight is norm.weight and group.bias is norm.bias and group.num_groups == 4
    assert group_norm_like(nn.InstanceNorm3d(3)).weight is None
    with pytest.raises(ValueError, match="running statistics"):
        group_norm_like(nn.InstanceNorm3d(4, track_running_stats=True))
