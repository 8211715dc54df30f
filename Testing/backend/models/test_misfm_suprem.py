"""PCT-Net, FMUNet (MIS-FM) and the SuPreM backbones: official key names, shapes, counts, semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tsfm_backend.models import fmunet, pctnet, suprem, swin3d


def _meta(module, *args, **kwargs):
    with torch.device("meta"):
        return module.build(*args, **kwargs)


def test_pctnet_ct10k_has_the_released_keys_shapes_and_size():
    network = _meta(pctnet, 1, 5, "ct10k")
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert len(shapes) == 684
    assert sum(p.numel() for p in network.parameters()) == 45_289_554
    block = "pyramid_ct.convtrans_e2.trans.blocks.0.attn."
    assert shapes["embeddings.1.proj.weight"] == (24, 1, 1, 3, 3)
    assert shapes["embeddings.1.conv0.conv_conv.2.weight"] == (24, 24, 1, 3, 3)
    assert shapes[block + "relative_position_bias_table"] == (1331, 4)
    assert shapes[block + "relative_position_index"] == (216, 216)
    assert shapes[block + "qkv.weight"] == (384, 128)
    assert shapes["pyramid_ct.convtrans_e2.trans.blocks.0.mlp.fc1.weight"] == (512, 128)
    assert shapes["pyramid_ct.up4.up.2.weight"] == (512, 256, 2, 2, 2)
    assert shapes["pred_heads.1.out_conv0.conv.2.weight"] == (5, 24, 1, 1, 1)
    assert shapes["pyramid_ct.convtrans_e2.norm_layer.weight"] == (128,)
    assert shapes["embeddings.0.conv0.conv_conv.1.weight"] == (1,)  # PReLU
    assert "embeddings.0.conv0.conv_conv.0.running_mean" in shapes


def test_relative_position_index_keeps_the_released_multipliers():
    w = 6
    expected = torch.empty(w**3, w**3, dtype=torch.long)
    coords = [(a, b, c) for a in range(w) for b in range(w) for c in range(w)]
    for i, p in enumerate(coords):
        for j, q in enumerate(coords):
            d = [p[k] - q[k] + w - 1 for k in range(3)]
            expected[i, j] = d[0] * (3 * w - 1) + d[1] * (2 * w - 1) + d[2]
    assert torch.equal(swin3d.relative_position_index(w), expected)


def test_swin_block_on_a_grid_smaller_than_the_window_is_plain_attention_with_the_bias():
    torch.manual_seed(0)
    block = swin3d.SwinBlock(8, (2, 2, 2), num_heads=2, window=6, shift=3).eval()
    assert (block.window, block.shift) == (2, 0)
    x = torch.randn(1, 8, 8)
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(x)).reshape(1, 8, 3, 2, 4).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias_table[attn.relative_position_index.reshape(-1)].reshape(8, 8, 2).permute(2, 0, 1)
    weights = ((q * 4**-0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    y = x + attn.proj((weights @ v).transpose(1, 2).reshape(1, 8, 8))
    y = y + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(y))))
    with torch.no_grad():
        torch.testing.assert_close(block(x, None), y)


def test_window_partition_round_trip_and_shift_mask_blocks_wrapped_regions():
    x = torch.randn(2, 4, 6, 8, 3)
    assert torch.equal(swin3d.window_reverse(swin3d.window_partition(x, 2), 2, 4, 6, 8), x)
    mask = swin3d.shift_mask((6, 6, 6), 6, 3, torch.device("cpu"))
    assert mask.shape == (1, 216, 216)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert torch.equal(mask[0].diagonal(), torch.zeros(216))


def test_pctnet_tiny_runs_only_at_its_input_size_and_orders_multiscale_outputs():
    torch.manual_seed(0)
    network = pctnet.build(1, 3, "tiny").eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        single = network(x)
        network.deep_supervision = True
        outputs = network(x)
        with pytest.raises(ValueError, match=r"built for \(16, 32, 32\) patches"):
            network(torch.randn(1, 1, 16, 32, 64))
    assert single.shape == (1, 3, 16, 32, 32)
    torch.testing.assert_close(outputs[0], single)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]


def test_fmunet_abk1k_has_the_released_keys_and_size():
    network = _meta(fmunet, 1, 5, "abk1k")
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert len(shapes) == 146
    assert sum(p.numel() for p in network.parameters()) == 47_371_572
    assert shapes["encoder.en_conv0.conv_list.0.3.weight"] == (32, 32, 3, 3, 3)
    assert shapes["decoder.upcat3.up.2.weight"] == (256, 512, 1, 1, 1)
    assert shapes["out_layers.0.2.weight"] == (5, 32, 3, 3, 3)


@pytest.mark.parametrize(("res_mode", "size"), [(0, (16, 32, 32)), (2, (4, 32, 32))])
def test_fmunet_forward_keeps_the_input_grid(res_mode, size):
    torch.manual_seed(0)
    network = fmunet.build(1, 3, "tiny", res_mode=res_mode).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 1, *size)).shape == (1, 3, *size)
        network.deep_supervision = True
        assert len(network(torch.randn(1, 1, *size))) == 4


def test_suprem_backbone_parameter_counts():
    unet = _meta(suprem, "unet", 1, 2)
    assert sum(p.numel() for k, p in unet.named_parameters() if not k.startswith("out_tr.")) == 19_073_600
    segresnet = suprem.build("segresnet", 1, 25)
    assert sum(p.numel() for p in segresnet.parameters()) == 4_701_305
    assert "down_tr64.ops.0.bn1.running_mean" in unet.state_dict()


def test_suprem_unet_normalises_with_batch_statistics_in_eval_without_touching_running_stats():
    torch.manual_seed(0)
    network = suprem.build("unet", 1, 2).eval()
    bn = network.down_tr64.ops[0].bn1
    before = bn.running_mean.clone()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        y = network(x)
        # Scaling the input is undone by the first batch norm (zero padding keeps the conv linear).
        torch.testing.assert_close(network(x * 3), y, atol=1e-4, rtol=1e-3)
    assert torch.equal(bn.running_mean, before)


def _published_universal_logits(network, x):
    """The Universal Model head written out as SuPreM's paper and code define it, one sample at a time:
    all classes' generated 1x1x1 convs run as one grouped conv over the repeated 8-channel features."""
    bottleneck, decoded = suprem.unet_features(network, x)
    task = F.relu(network.text_to_vision(network.organ_embedding))[:, :, None, None, None]
    pooled = network.GAP(bottleneck)
    n = task.shape[0]
    per_sample = []
    for i in range(x.shape[0]):
        params = network.controller(torch.cat([pooled[i : i + 1].repeat(n, 1, 1, 1, 1), task], 1)).flatten(1)
        features = network.precls_conv(decoded[i : i + 1]).repeat(n, 1, 1, 1, 1)
        depth, height, width = features.shape[2:]
        y = features.reshape(1, n * 8, depth, height, width)
        chunks = torch.split(params, [64, 64, 8, 8, 8, 1], dim=1)
        layers = [(chunks[0].reshape(n * 8, 8, 1, 1, 1), chunks[3].reshape(n * 8)),
                  (chunks[1].reshape(n * 8, 8, 1, 1, 1), chunks[4].reshape(n * 8)),
                  (chunks[2].reshape(n, 8, 1, 1, 1), chunks[5].reshape(n))]
        for index, (weight, bias) in enumerate(layers):
            y = F.conv3d(y, weight, bias, groups=n)
            y = F.relu(y) if index < 2 else y
        per_sample.append(y.reshape(1, n, depth, height, width))
    return torch.cat(per_sample)


def test_suprem_universal_head_has_the_released_keys_and_computes_the_published_head():
    torch.manual_seed(0)
    network = suprem.build("unet", 1, 11, head="universal").eval()  # 11 > CLASS_CHUNK: heads run in chunks
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert list(shapes)[0] == "organ_embedding" and shapes["organ_embedding"] == (11, 512)
    assert shapes["controller.weight"] == (153, 512, 1, 1, 1) and shapes["text_to_vision.weight"] == (256, 512)
    assert shapes["precls_conv.2.weight"] == (8, 64, 1, 1, 1) and shapes["GAP.3.weight"] == (256, 512, 1, 1, 1)
    assert "out_tr.final_conv.weight" not in shapes and "down_tr64.ops.0.conv1.weight" in shapes
    with torch.no_grad():
        network.organ_embedding.normal_()
        x = torch.randn(2, 1, 16, 16, 16)
        torch.testing.assert_close(network(x), _published_universal_logits(network, x))


def test_swin_features_are_monai_swinunetr_without_its_output_conv():
    torch.manual_seed(0)
    network = suprem.build("swinunetr", 1, 3, preset="tiny-swinunetr").eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        bottleneck, decoded = suprem.swin_features(network, x)
        torch.testing.assert_close(network.out(decoded), network(x))
    assert bottleneck.shape == (1, 192, 1, 1, 2) and decoded.shape == (1, 12, 32, 32, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        suprem.swin_features(network, torch.randn(1, 1, 32, 32, 48))
