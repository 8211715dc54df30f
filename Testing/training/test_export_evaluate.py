"""Export through the backend's writer (round trip through tsfm-backend import + predict) and evaluation."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from support.tiny_models import tiny_card
from tsfm_backend.checkpoints import load_model
from tsfm_training.evaluate import case_metrics, evaluate_folders
from tsfm_training.export import export_checkpoint, export_model
from tsfm_training.networks import training_network

REPO = Path(__file__).resolve().parents[2]


def backend(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TSFM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "tsfm_backend.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_exported_model_imports_and_predicts_with_the_backend(tmp_path, shared_data, isolated_model_store):
    card = tiny_card(model_id="sts-roundtrip", classes={1: "tumour"}, patch_size=(16, 32, 32),
                     spacing=(6.0, 4.0, 4.0))
    torch.manual_seed(0)
    network = training_network(card, deep_supervision=True)  # as trained: deep supervision on
    folder = export_model(network, card, tmp_path / "export")
    loaded = load_model(folder)
    assert "deep_supervision" not in loaded.card.architecture
    for name, value in network.state_dict().items():
        assert torch.equal(value, loaded.network.state_dict()[name]), name

    imported = backend("import", str(folder), "--id", "sts-roundtrip", home=isolated_model_store)
    assert imported.returncode == 0, imported.stderr
    ct = shared_data / "sts" / "STS_002" / "ct.nii.gz"
    output = tmp_path / "pred.nii.gz"
    predicted = backend("predict", "-m", "sts-roundtrip", "-i", str(ct), "-o", str(output), "--device", "cpu",
                        home=isolated_model_store)
    assert predicted.returncode == 0, predicted.stderr
    labels, image = sitk.ReadImage(str(output)), sitk.ReadImage(str(ct))
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == pytest.approx(image.GetSpacing())
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1}


def test_export_from_a_training_checkpoint(tmp_path):
    card = tiny_card(model_id="from-last-pt", patch_size=(16, 32, 32))
    network = training_network(card)
    torch.save({"step": 3, "model": network.state_dict()}, tmp_path / "last.pt")
    card.write(tmp_path / "card.json")
    folder = export_checkpoint(tmp_path / "last.pt", tmp_path / "card.json", tmp_path / "out", model_id="renamed")
    loaded = load_model(folder)
    assert loaded.card.id == "renamed" and loaded.card.provenance["training_checkpoint"].endswith("last.pt")
    assert torch.equal(loaded.network.seg_outputs[-1].weight, network.seg_outputs[-1].weight)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit the architecture"):
        export_checkpoint(tmp_path / "wrong.pt", tmp_path / "card.json", tmp_path / "out2")


def test_case_metrics_dice_and_surface_dice():
    reference = np.zeros((10, 20, 20), np.uint8)
    reference[2:8, 5:15, 5:15] = 1
    shifted = np.zeros_like(reference)
    shifted[2:8, 6:16, 5:15] = 1
    rows = case_metrics(shifted, reference, {1: "tumour", 2: "absent"}, (3.0, 1.0, 1.0), tolerance_mm=2.0,
                        case_id="c1")
    tumour, absent = rows
    assert tumour["dice"] == pytest.approx(2 * 540 / 1200)  # 9 of 10 rows overlap
    assert tumour["nsd"] > 0.9 and tumour["reference_voxels"] == 600
    assert absent["dice"] == 1.0 and absent["empty"]
    far = case_metrics(shifted, reference, {1: "tumour"}, (3.0, 1.0, 1.0), tolerance_mm=0.5)[0]
    assert far["nsd"] < tumour["nsd"]
    assert case_metrics(np.zeros_like(reference), reference, {1: "t"}, (1, 1, 1))[0]["dice"] == 0.0


def test_evaluate_folders_writes_csv_and_summary(tmp_path, shared_data):
    mask = sitk.ReadImage(str(shared_data / "sts" / "STS_001" / "mask.nii.gz"))
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(mask, str(tmp_path / "ref" / "STS_001.nii.gz"))
    eroded = sitk.BinaryErode(mask, [2, 2, 1])
    sitk.WriteImage(eroded, str(tmp_path / "pred" / "STS_001.nii.gz"))
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval", {1: "tumour"}, 2.0)
    assert 0.6 < summary["mean_dice"] < 1.0 and summary["cases"] == 1
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    assert rows[0]["case"] == "STS_001" and rows[0]["name"] == "tumour"
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["classes"]["tumour"]["cases"] == 1
    (tmp_path / "pred" / "STS_001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no prediction for cases \['STS_001'\]"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval")
