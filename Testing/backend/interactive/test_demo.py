"""``tsfm-backend demo``: a real CT, one click, the default model, a mask, a picture and a Dice; then the
same tumour in the patient's MR and PET."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image
from tsfm_backend.cli import main
from tsfm_backend.image_io import read_volume


def test_demo_writes_mask_picture_and_dice(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TSFM_SHARED_DATA", str(shared_data))
    assert main(["demo", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    score = float(re.search(r"Dice vs reference: ([0-9.]+)", out).group(1))
    case = re.match(r"(STS_\d+):", out).group(1)
    assert "held out from training" in out
    mask = read_volume(tmp_path / f"{case}_mask.nii.gz")
    reference = read_volume(shared_data / "sts" / case / "mask.nii.gz")
    assert mask.array.shape == reference.array.shape and mask.array.max() == 1
    assert score > 0.6  # measured 0.74 on the default case
    others = dict(re.findall(r"STS_\d+ (MR|PET): one click, Dice ([0-9.]+)", out))
    assert set(others) == {"MR", "PET"} and all(float(v) > 0.4 for v in others.values())  # measured 0.60, 0.79
    picture = np.asarray(Image.open(tmp_path / f"{case}_overview.png").convert("RGB"))
    assert picture.shape[0] > 100 and picture.shape[1] > 300
    red = (picture[..., 0] > 200) & (picture[..., 1] < 80)
    green = (picture[..., 1] > 200) & (picture[..., 0] < 80)
    assert red.sum() > 50 and green.sum() > 50


def test_demo_without_data_names_the_missing_folder(tmp_path, capsys):
    code = main(["demo", "--output", str(tmp_path), "--data", str(tmp_path / "nowhere")])
    assert code == 2
    assert "demo data not found" in capsys.readouterr().err
