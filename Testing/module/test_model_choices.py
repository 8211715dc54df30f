"""Which models the module offers for jobs and for clicks: a model whose info says ``serves_clicks`` (VISTA3D,
automatic weights that also take clicks) is in both lists, and a click with it edits a segment on real MRML;
an older server's infos without the field keep today's split by kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_slicer
from support.live_server import TEST_TOKEN, ThreadedServer, backend_app, module_on_path, save_click_model
from support.tiny_models import save_tiny_model

VISTA3D_ID = "tiny-vista3d"
CLICK = (15, 50, 60)  # (k, j, i) inside the small CT's abdomen


def save_tiny_vista3d(folder: Path) -> Path:
    """A random ``tiny`` VISTA3D with the importer's card (automatic, three class prompts) on 32^3 windows at 3 mm."""
    import torch
    from tsfm_backend.checkpoints import save_model
    from tsfm_backend.formats import vista3d as vista3d_format
    from tsfm_backend.models import vista3d

    card = vista3d_format.card_for(VISTA3D_ID, {"preset": "tiny", "class_prompts": [1, 3, 62]}, "random weights")
    card.patch_size, card.spacing = (32, 32, 32), (3.0, 3.0, 3.0)
    card.validate()
    torch.manual_seed(0)
    return save_model(vista3d.build(preset="tiny", class_prompts=[1, 3, 62]).eval(), card, folder)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - ThreadedServer
    root = tmp_path_factory.mktemp("choice_models")
    models = [save_tiny_model(root / "tiny-organs", model_id="tiny-organs", classes={1: "liver"}, spacing=(3.0, 3.0, 3.0)),
              save_click_model(root / "tiny-click"), save_tiny_vista3d(root / VISTA3D_ID)]
    app, _ = backend_app(models, token=TEST_TOKEN)
    with ThreadedServer(app) as server:
        yield server


@pytest.fixture
def choosing(mini, served):  # noqa: ANN001, ANN201
    """The module's Logic on a fresh MRML scene, connected to ``served``."""
    from TSFMSegmentation import TSFMSegmentationLogic

    logic = TSFMSegmentationLogic()
    logic.connectRemote(served.url, TEST_TOKEN)
    yield logic
    logic.closeInteractive()
    logic.connection.client.close()


@pytest.mark.slicer
@pytest.mark.slow
def test_a_model_serving_clicks_is_offered_in_both_lists_and_edits_a_segment(choosing, small_ct_path: Path):
    from TSFMSegmentationLib.model_choices import AUTOMATIC, INTERACTIVE
    from TSFMSegmentationLib.volumes import image_geometry

    logic = choosing
    kinds = {model["id"]: (model["kind"], model["serves_clicks"]) for model in logic.models()}
    assert kinds[VISTA3D_ID] == ("automatic", True)
    assert [m["id"] for m in logic.modelChoices(INTERACTIVE)] == ["tiny-click", VISTA3D_ID]
    assert [m["id"] for m in logic.modelChoices(AUTOMATIC)] == ["tiny-organs", VISTA3D_ID]

    import slicer

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    editor = logic.startInteractive(volume, VISTA3D_ID)
    k, j, i = CLICK
    logic.addPoint(image_geometry(volume).ijk_to_world_points([[i, j, k]])[0], positive=True)
    voxels = slicer.util.arrayFromSegmentBinaryLabelmap(editor.segmentation_node, editor.segment_id, volume)
    assert voxels.shape == (30, 101, 122) and 0 < int(np.count_nonzero(voxels)) < voxels.size


def test_infos_without_serves_clicks_split_by_kind_as_older_servers_do():
    module_on_path()
    from TSFMSegmentationLib.model_choices import AUTOMATIC, INTERACTIVE, model_choices

    infos = [{"id": "old-auto", "kind": "automatic"}, {"id": "old-click", "kind": "promptable"},
             {"id": "new-auto", "kind": "automatic", "serves_clicks": False},
             {"id": "new-both", "kind": "automatic", "serves_clicks": True},
             {"id": "new-click", "kind": "promptable", "serves_clicks": True}]
    assert [m["id"] for m in model_choices(infos, INTERACTIVE)] == ["old-click", "new-both", "new-click"]
    assert [m["id"] for m in model_choices(infos, AUTOMATIC)] == ["old-auto", "new-auto", "new-both"]
    with pytest.raises(ValueError, match="automatic"):
        model_choices(infos, "promptable")
