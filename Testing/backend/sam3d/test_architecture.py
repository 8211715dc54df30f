"""The SAM-3D network: the published ViT-B sizes and key names, and the building blocks' exact behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tsfm_backend.models import FAMILIES, family_module
from tsfm_backend.models.sam3d import PRESETS, Sam3D, build, is_trainable, mark_trainable
from tsfm_backend.models.sam3d.attention import (
    SHIFT_MASK_VALUE,
    rel_pos_lookup,
    shifted_window_mask,
    window_partition,
    window_unpartition,
)
from tsfm_backend.models.sam3d.image_encoder import upsampled_slices
from tsfm_backend.models.sam3d.official import official_shapes


@pytest.fixture(scope="module")
def vit_b() -> Sam3D:
    with torch.device("meta"):
        return build(**PRESETS["vit_b"])


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def test_family_is_registered():
    assert FAMILIES["sam3d"] == "tsfm_backend.models.sam3d"
    module = family_module("sam3d")
    for name in (
        "build",
        "PRESETS",
        "ENCODER_KEYS",
        "STEM_KEYS",
        "TRAINABLE_PATTERNS",
        "from_official_checkpoint",
    ):
        assert hasattr(module, name), name


def test_vit_b_parameter_counts(vit_b):
    assert _count(vit_b.image_encoder.parameters()) == 104_056_588  # 104.06M
    trainable = [p for k, p in vit_b.named_parameters() if k.startswith("image_encoder.") and is_trainable(k)]
    assert _count(trainable) == 15_209_984  # 15.21M
    assert _count(vit_b.prompt_encoder.parameters()) == 3_164_160  # 3.16M
    assert _count(vit_b.mask_decoder.parameters()) == 7_088_256  # 7.09M


def test_vit_b_official_key_names_and_shapes(vit_b):
    shapes = official_shapes(PRESETS["vit_b"])
    encoder, decoder, prompt = shapes["encoder_dict"], shapes["decoder_dict"], shapes["feature_dict"]
    expected_encoder = {
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "slice_embed.weight": (768, 1, 1, 1, 16),
        "slice_embed.bias": (768,),
        "pos_embed": (1, 64, 64, 768),
        "depth_embed": (1, 32, 768),
        "blocks.0.attn.qkv.weight": (2304, 768),
        "blocks.0.attn.rel_pos_h": (27, 64),
        "blocks.0.attn.rel_pos_d": (27, 64),
        "blocks.2.attn.rel_pos_w": (127, 64),
        "blocks.11.attn.rel_pos_d": (127, 64),
        "blocks.0.attn.lr": (),
        "blocks.0.adapter.linear1.weight": (384, 768),
        "blocks.0.adapter.conv.weight": (384, 1, 3, 3, 3),
        "blocks.0.adapter.linear2.weight": (768, 384),
        "blocks.5.mlp.lin1.weight": (3072, 768),
        "blocks.5.norm2.bias": (768,),
        "blocks.0.attn_mask": (64, 512, 512),
        "blocks.10.attn_mask": (64, 512, 512),
        "neck_3d.0.0.weight": (256, 768, 1, 1, 1),
        "neck_3d.0.1.weight": (256,),
        "neck_3d.3.2.weight": (256, 256, 3, 3, 3),
        "neck_3d.3.3.bias": (256,),
    }
    for key, shape in expected_encoder.items():
        assert encoder[key] == shape, key
    assert "blocks.1.attn_mask" not in encoder and not any(k.startswith("neck.") for k in encoder)
    assert sum(k.endswith("attn_mask") for k in encoder) == 6
    assert decoder == {
        **{f"mlahead.head{i}.0.weight": (128, 256, 3, 3, 3) for i in range(2, 6)},
        **{f"mlahead.head{i}.3.weight": (128, 128, 3, 3, 3) for i in range(2, 6)},
        "cls.0.weight": (128, 513, 3, 3, 3),
        "cls.3.weight": (2, 128, 3, 3, 3),
    }
    assert prompt["positional_encoding_gaussian_matrix"] == (3, 128)
    assert prompt["transformer.layers.0.global_query"] == (1, 10, 256)
    assert prompt["transformer.layers.1.cross_attn_image_to_token.q_proj.weight"] == (128, 256)
    assert prompt["transformer.layers.0.cross_attn_token_to_image.out_proj.weight"] == (256, 128)
    assert prompt["transformer.layers.1.mlp.lin1.weight"] == (2048, 256)
    assert prompt["transformer.layers.1.norm4.weight"] == (256,)
    assert not any(k.startswith("transformer.layers.2") for k in prompt)
    # Our network holds the same names under its three prefixes; the masks are derived, not stored.
    ours = set(vit_b.state_dict())
    assert ours == {f"image_encoder.{k}" for k in encoder if not k.endswith("attn_mask")} | {
        f"mask_decoder.{k}" for k in decoder
    } | {f"prompt_encoder.{k}" for k in prompt}


def test_mark_trainable_freezes_sam_weights():
    network = build(**PRESETS["tiny"])
    count = mark_trainable(network)
    names = {k for k, p in network.named_parameters() if p.requires_grad}
    assert count == _count(p for p in network.parameters() if p.requires_grad)
    assert "image_encoder.blocks.0.attn.rel_pos_d" in names and "image_encoder.depth_embed" in names
    frozen = {
        "image_encoder.patch_embed.proj.weight",
        "image_encoder.pos_embed",
        "image_encoder.blocks.0.attn.qkv.weight",
        "image_encoder.blocks.0.attn.rel_pos_h",
        "image_encoder.blocks.0.attn.lr",
        "image_encoder.blocks.1.mlp.lin1.weight",
    }
    assert not names & frozen
    assert all(
        k in names
        for k, _ in network.named_parameters()
        if k.startswith(("prompt_encoder.", "mask_decoder."))
    )


def test_window_partition_round_trip_and_order():
    grid = torch.arange(2 * 8 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 8, 3)
    windows = window_partition(grid, 4)
    assert windows.shape == (16, 4, 4, 4, 3)
    assert torch.equal(windows[1], grid[0, 0:4, 0:4, 4:8])  # last axis varies fastest
    assert torch.equal(windows[8], grid[1, 0:4, 0:4, 0:4])  # batch item first
    assert torch.equal(window_unpartition(windows, 4, (8, 8, 8)), grid)
    with pytest.raises(ValueError, match="multiple of the window"):
        window_partition(torch.zeros(1, 6, 8, 8, 1), 4)


def test_shifted_window_mask_separates_wrapped_regions():
    mask = shifted_window_mask(grid=8, window=4, shift=2)
    assert mask.shape == (8, 64, 64)
    assert torch.all(mask[0] == 0)  # an interior window holds one region only
    last = mask[-1]  # the corner window mixes 2 regions per axis: 8 blocks of 8 tokens
    assert set(last.unique().tolist()) == {0.0, SHIFT_MASK_VALUE}
    assert int((last == 0).sum()) == 8 * 8 * 8
    assert torch.equal(last, last.t())


def test_rel_pos_lookup_resamples_and_indexes_offsets():
    table = torch.arange(27, dtype=torch.float32)[:, None].repeat(1, 2)
    looked = rel_pos_lookup(table, 8)  # 27 rows resampled to 15, indexed by q - k + 7
    assert looked.shape == (8, 8, 2)
    assert torch.equal(looked[3, 3], looked[0, 0]) and torch.equal(
        looked[3, 1], looked[7, 5]
    )  # depends on q - k only
    assert looked[7, 0, 0] > looked[0, 0, 0] > looked[0, 7, 0]


def test_chunked_upsampling_equals_trilinear_interpolation():
    torch.manual_seed(1)
    crop = torch.randn(3, 6, 5, 7)
    full = F.interpolate(crop[None], scale_factor=4, mode="trilinear")[0].transpose(0, 1)
    parts = torch.cat([upsampled_slices(crop, s, min(s + 5, 24), 4) for s in range(0, 24, 5)])
    assert parts.shape == (24, 3, 20, 28)
    assert torch.allclose(parts, full, atol=1e-5)


def test_tiny_forward_shapes_and_chunk_independence(tiny_network):
    crop = torch.randn(1, 3, 32, 32, 32)
    points = torch.tensor([[[3, 20, 30], [16, 0, 8]]])
    with torch.no_grad():
        logits = tiny_network(crop, points)
        chunked = tiny_network.decode(tiny_network.encode(crop, slice_chunk=8, window_chunk=3), points)
    assert logits.shape == (1, 2, 32, 32, 32)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, chunked, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_network.encode(crop, slice_chunk=12)
    with pytest.raises(ValueError, match=r"\(B, C, 32, 32, 32\)"):
        tiny_network.encode(torch.randn(1, 3, 16, 32, 32))


def test_clicks_change_the_prediction_where_they_are(tiny_network):
    """A click reads the features at its own voxel: two far-apart clicks give different logits."""
    crop = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        embedding = tiny_network.encode(crop)
        a = tiny_network.decode(embedding, torch.tensor([[[2, 2, 2]]]))
        b = tiny_network.decode(embedding, torch.tensor([[[29, 29, 29]]]))
    assert not torch.allclose(a, b)


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match="same token count"):
        Sam3D(**{**PRESETS["tiny"], "num_slice": 4})
    with pytest.raises(ValueError, match="multiple of 4"):
        Sam3D(**{**PRESETS["tiny"], "depth": 3})
    with pytest.raises(ValueError, match="divisible"):
        Sam3D(**{**PRESETS["tiny"], "num_heads": 3})


@pytest.mark.parametrize("level", [3, 1])
def test_split_decoder_equals_the_published_decoder(tiny_network, level):
    decoder = tiny_network.mask_decoder
    features = [torch.randn(1, 16, 8, 8, 8) for _ in range(4)]
    image_small = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        full = decoder(features, image_small, 32)
        partial = decoder.static_partial(features, level, image_small)
        split = decoder.classify_prompted(partial, features[level], level, 32)
    assert full.shape == (1, 2, 32, 32, 32)
    assert torch.allclose(split, full, atol=1e-5)


def test_meta_built_network_is_complete_after_assigning_weights(tiny_network):
    """Shift masks are derived, not loaded: a meta-device build plus assign-loading leaves nothing on meta."""
    with torch.device("meta"):
        network = Sam3D(**PRESETS["tiny"])
    network.load_state_dict(tiny_network.state_dict(), strict=True, assign=True)
    assert not any(t.is_meta for t in [*network.parameters(), *network.buffers()])
    crop, points = torch.randn(1, 3, 32, 32, 32), torch.tensor([[[1, 2, 3]]])
    with torch.no_grad():
        assert torch.allclose(network.eval()(crop, points), tiny_network(crop, points))
