"""``tsfm-backend predict`` end to end with a tiny STU-Net on real CT, folders of cases, torchrun sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tsfm_backend.cli import main
from tsfm_backend.commands.predict import distributed_rank, find_cases, shard
from tsfm_backend.image_io import read_volume, write_volume
from tsfm_backend.volume import Volume


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from support.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_tiny_model(
        folder, classes={1: "liver", 2: "spleen"}, patch_size=(32, 64, 64), spacing=(3.0, 3.0, 3.0)
    )


def test_predict_one_nifti_end_to_end(tmp_path, shared_data, tiny_model, capsys):
    image = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    output = tmp_path / "labels.nii.gz"
    code = main(
        [
            "predict",
            "--model",
            str(tiny_model),
            "-i",
            str(image),
            "-o",
            str(output),
            "--device",
            "cpu",
            "--batch",
            "2",
            "--fast",
        ]
    )
    assert code == 0
    labels, source = read_volume(output), read_volume(image)
    assert labels.shape == source.shape and labels.array.dtype == np.uint8
    assert (labels.spacing, labels.origin, labels.direction) == (
        source.spacing,
        source.origin,
        source.direction,
    )
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert json.loads((tmp_path / "labels.json").read_text()) == {"labels": {"1": "liver", "2": "spleen"}}
    assert "100%" in capsys.readouterr().err, "a progress bar runs to completion"


def test_predict_a_folder_of_cases_to_seg_nrrd(tmp_path, shared_data, tiny_model):
    cases = tmp_path / "cases"
    ct = read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    crop = Volume(ct.array[:16, 20:84, 30:94], ct.spacing, ct.origin, ct.direction)
    write_volume(crop, cases / "a.nii.gz")
    write_volume(crop, cases / "b.nii.gz")
    (cases / "notes.txt").write_text("ignored")
    code = main(
        [
            "predict",
            "-m",
            str(tiny_model),
            "-i",
            str(cases),
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--fast",
            "--format",
            "seg.nrrd",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.seg.nrrd", "b.seg.nrrd"]


def test_bad_input_exits_2_with_the_file_named(tmp_path, tiny_model, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    code = main(
        [
            "predict",
            "-m",
            str(tiny_model),
            "-i",
            str(bad),
            "-o",
            str(tmp_path / "o.nii.gz"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "-m",
                str(tiny_model),
                "-i",
                str(tmp_path),
                "-o",
                str(tmp_path / "o"),
                "--device",
                "cpu",
                "--batch",
                "0",
            ]
        )
        == 2
    )


def test_find_cases(tmp_path, shared_data):
    dicom = shared_data / "totalseg" / "example_ct_dicom"
    assert find_cases(dicom) == [dicom], "a DICOM folder is one case"
    (tmp_path / "x.nii.gz").write_bytes(b"")
    (tmp_path / "series").symlink_to(dicom)
    (tmp_path / "other").mkdir()
    assert find_cases(tmp_path) == [tmp_path / "x.nii.gz", tmp_path / "series"]
    with pytest.raises(ValueError, match="no image files"):
        find_cases(tmp_path / "other")


@pytest.mark.parametrize("cases,world", [(1, 1), (7, 3), (10, 4), (3, 8), (64, 5)])
def test_sharding_assigns_every_case_exactly_once(cases, world):
    names = [Path(f"case_{i:03d}.nii.gz") for i in range(cases)][::-1]
    shards = [shard(names, rank, world) for rank in range(world)]
    done = [case for part in shards for case in part]
    assert sorted(done) == sorted(names) and len(done) == len(set(done))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1, "the work is balanced"
    with pytest.raises(ValueError, match="rank"):
        shard(names, world, world)


def test_distributed_rank_reads_the_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_rank() == (0, 1, 0)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_rank() == (5, 8, 1)


def test_a_tiny_step_ends_with_one_clear_line_before_any_work(tmp_path, shared_data, tiny_model, capsys):
    image = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    output = tmp_path / "labels.nii.gz"
    code = main(["predict", "--model", str(tiny_model), "-i", str(image), "-o", str(output), "--device", "cpu",
                 "--step", "0.001"])
    err = capsys.readouterr().err
    assert code == 2 and not output.exists()
    assert "tsfm-backend predict: error:" in err and "--step 0.001 asks for" in err
    assert "at most 10,000 are allowed (--max-windows)" in err
    assert "Traceback" not in err and "MemoryError" not in err
