"""Starting from Segment Anything's 2D image encoder: what is copied, what is seeded, what stays fresh."""

from __future__ import annotations

import pytest
import torch
from tsfm_backend.checkpoints import CheckpointError
from tsfm_backend.models.sam3d import PRESETS, Sam3D, init_from_sam, sam_shared_keys


def _sam_checkpoint(source: Sam3D) -> dict[str, torch.Tensor]:
    """A whole-SAM state_dict in the released layout, holding ``source``'s 2D encoder weights."""
    encoder = source.image_encoder.state_dict()
    width, out = encoder["pos_embed"].shape[-1], 16
    checkpoint = {f"image_encoder.{k}": encoder[k].clone() for k in sam_shared_keys(source)}
    checkpoint.update(
        {
            "image_encoder.neck.0.weight": torch.randn(out, width, 1, 1),
            "image_encoder.neck.1.weight": torch.ones(out),
            "prompt_encoder.point_embeddings.0.weight": torch.randn(1, out),
            "mask_decoder.iou_token.weight": torch.randn(1, out),
        }
    )
    return checkpoint


def test_vit_b_takes_all_of_sams_encoder_but_the_neck():
    with torch.device("meta"):
        network = Sam3D(**PRESETS["vit_b"])
    keys = sam_shared_keys(network)
    assert len(keys) == 3 + 12 * 14
    encoder = network.image_encoder.state_dict()
    neck_2d = 768 * 256 + 256 * 256 * 9 + 2 * 2 * 256
    assert sum(encoder[k].numel() for k in keys) == 89_670_912 - neck_2d  # SAM ViT-B image encoder
    assert not any(
        "adapter" in k or "rel_pos_d" in k or k.startswith(("neck_3d", "slice_embed")) for k in keys
    )


def test_weights_are_copied_and_depth_tables_seeded(tiny_network):
    torch.manual_seed(5)
    fresh = Sam3D(**PRESETS["tiny"])
    adapter_before = fresh.image_encoder.blocks[0].adapter.linear1.weight.clone()
    copied = init_from_sam(fresh, _sam_checkpoint(tiny_network))
    encoder, source = fresh.image_encoder.state_dict(), tiny_network.image_encoder.state_dict()
    for key in copied:
        assert torch.equal(encoder[key], source[key]), key
    for block in fresh.image_encoder.blocks:
        assert torch.allclose(block.attn.rel_pos_d, 0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))
    assert torch.equal(fresh.image_encoder.blocks[0].adapter.linear1.weight, adapter_before)
    assert not torch.equal(encoder["depth_embed"], source["depth_embed"])


def test_an_encoder_only_state_dict_is_accepted(tiny_network):
    encoder_only = {
        k[len("image_encoder.") :]: v
        for k, v in _sam_checkpoint(tiny_network).items()
        if k.startswith("image_encoder.")
    }
    assert init_from_sam(Sam3D(**PRESETS["tiny"]), encoder_only)


def test_a_sam_that_does_not_fit_is_refused(tiny_network):
    checkpoint = _sam_checkpoint(tiny_network)
    del checkpoint["image_encoder.blocks.3.mlp.lin2.bias"]
    checkpoint["image_encoder.pos_embed"] = torch.zeros(1, 64, 64, 32)
    network = Sam3D(**PRESETS["tiny"])
    before = network.image_encoder.patch_embed.proj.weight.clone()
    with pytest.raises(
        CheckpointError, match=r"missing: blocks.3.mlp.lin2.bias; wrong shape: pos_embed \(1, 64, 64, 32\)"
    ):
        init_from_sam(network, checkpoint)
    assert torch.equal(network.image_encoder.patch_embed.proj.weight, before)  # nothing copied
