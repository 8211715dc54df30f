"""The ``vista3d`` family: MONAI's network under the released names, the class table as data, presets."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import vista3d132
from tsfm_backend.models import FAMILIES, family_module, vista3d


def test_the_family_is_registered_and_declares_its_keys():
    module = family_module("vista3d")
    assert FAMILIES["vista3d"] == "tsfm_backend.models.vista3d" and module is vista3d
    names = list(vista3d.build(preset="tiny").state_dict())
    assert all(name.startswith(vista3d.ENCODER_KEYS) for name in names if "image_encoder" in name)
    assert any(name.startswith(vista3d.STEM_KEYS) for name in names)


def test_the_released_preset_is_monai_s_vista3d132_name_for_name():
    with torch.device("meta"):
        ours, monai = vista3d.build(preset="vista3d132").state_dict(), vista3d132().state_dict()
    assert list(ours) == list(monai)
    assert all(ours[name].shape == monai[name].shape for name in monai)
    assert sum(value.numel() for value in monai.values()) == 217_965_054


def test_the_class_table_is_the_bundle_s():
    names = vista3d.class_names()
    assert len(names) == 132 and names[1] == "liver" and names[62] == "colon" and names[132] == "airway"
    everything = vista3d.everything_classes()
    assert len(everything) == 117 and everything == tuple(sorted(everything))
    assert not set(everything) & ({2, 20, 21, 23, 24, 25, 26, 27, 128} | vista3d.unsupported_classes())
    assert vista3d.unsupported_classes() == {16, 18, 129, 130, 131}
    assert 127 - len(everything) == 10  # the tumours, vessels and parent classes a prompt may still ask for


def test_the_automatic_call_returns_one_channel_per_prompt_in_id_order():
    torch.manual_seed(0)
    network = vista3d.build(preset="tiny", class_prompts=[62, 1, 3]).eval()
    image = torch.rand(2, 1, 16, 16, 24)
    with torch.no_grad():
        logits = network(image)
        single = network(image[:1], class_vector=torch.tensor([[3]]), transpose=True)
    assert logits.shape == (2, 3, 16, 16, 24) and network.class_prompts.tolist() == [1, 3, 62]
    torch.testing.assert_close(logits[:1, 1:2], single, rtol=0, atol=1e-5)
    assert network.divisor == (4, 4, 4) and "class_prompts" not in network.state_dict()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "huge"}, "unknown VISTA3D preset"),
    ({"class_prompts": [0, 1]}, "class ids from 1 to 511"),
    ({"class_prompts": [600]}, "class ids from 1 to 511"),
    ({"encoder_embed_dim": 12}, "multiple of 8"),
])
def test_wrong_arguments_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vista3d.build(**kwargs)
