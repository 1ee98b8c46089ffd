"""Reading prepared shards and folders: epochs, worker parts, exact resume, clear errors."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from pioneer.config import DataConfig, preset
from pioneer.data import DataError
from pioneer.dataset import FolderDataset, Stream, check_data, open_dataset
from pioneer.prepare import PrepareOptions, prepare
from pioneer.training import LocalSession, train
from tests.conftest import tiny_config

COUNT, HOLDOUT = 40, 4


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """40 flat grey images (value 6 * index) in 5 shards: pixels name their row."""
    src = tmp_path_factory.mktemp("flat")
    for i in range(COUNT):
        Image.new("RGB", (8, 8), (6 * i,) * 3).save(src / f"{i:03d}.png")
    out = src.parent / f"{src.name}-prepared"
    prepare(str(src), str(out), PrepareOptions((4,), crop="none", shard_size=9, workers=1))
    return out


def _rows(x: torch.Tensor) -> list[int]:
    """Row ids of a batch of flat images in [-1, 1]."""
    values = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
    return (values // 6).tolist()


def _dataset(path, holdout=HOLDOUT):
    return open_dataset(DataConfig(path=str(path), holdout=holdout), (4,))


@pytest.mark.parametrize("window_mb", [512, 48 * 5 / 2**20])  # whole part; windows of 5 rows
def test_each_epoch_splits_the_training_rows_disjointly_across_workers(flat, window_mb):
    dataset = _dataset(flat)
    assert dataset.shard_rows == [9, 9, 9, 9, 4] and dataset.train_rows == 36
    streams = [Stream(dataset, 1, False, rank, 2, window_mb) for rank in range(2)]
    batch = 6  # 3 per worker; 18 images per worker per epoch
    epochs = []
    for epoch in range(2):
        parts = [[], []]
        for step in range(6):
            for rank, stream in enumerate(streams):
                parts[rank] += _rows(stream.get((epoch * 6 + step) * batch, batch, 4))
        assert len(set(parts[0])) == 18 and not set(parts[0]) & set(parts[1])
        assert set(parts[0]) | set(parts[1]) == set(range(36))  # held-out 36..39 never seen
        epochs.append(parts)
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_a_worker_reads_about_its_share_of_the_shards(flat):
    dataset = _dataset(flat)
    for epoch in range(3):
        shards = []
        for rank in range(3):  # 12 of the 36 training images each
            rows = Stream(dataset, epoch, False, rank, 3).order(epoch)
            shards.append(set(np.searchsorted(dataset.offsets, rows, side="right") - 1))
        assert all(len(s) <= 3 for s in shards)  # of 4 training shards: a third + shared edges
        assert set.union(*shards) == set(range(4))  # the 5th holds held-out rows only


def test_any_position_is_reproduced_by_a_fresh_stream(flat):
    dataset = _dataset(flat)
    running = Stream(dataset, 5, True, 1, 2, window_mb=48 * 5 / 2**20)
    batches = [running.get(step * 4, 4, 4) for step in range(30)]
    for step in (0, 7, 13, 29):  # mid-window, across epochs: as a resumed run would restart
        fresh = Stream(dataset, 5, True, 1, 2, window_mb=48 * 5 / 2**20)
        assert torch.equal(fresh.get(step * 4, 4, 4), batches[step])
    other = Stream(dataset, 6, True, 1, 2)
    assert _rows(other.get(0, 36, 4)) != _rows(Stream(dataset, 5, True, 1, 2).get(0, 36, 4))
    with pytest.raises(ValueError, match="not divisible by 2 workers"):
        running.get(0, 5, 4)


def test_holdout_and_mean_face_come_from_the_right_rows(flat):
    dataset = _dataset(flat)
    assert _rows(dataset.holdout(4).float().div(127.5).sub(1)) == [36, 37, 38, 39]
    expected = np.mean([6 * i for i in range(36)]) / 127.5 - 1
    torch.testing.assert_close(dataset.mean_face(4), torch.full((3, 4, 4), expected))


def test_a_folder_and_its_prepared_shards_give_the_same_pixels(face_dir, face_shards):
    folder = FolderDataset(str(face_dir), "face", (8, 16), holdout=8)
    shards = _dataset(face_shards, holdout=8)
    for size in (8, 16):
        assert torch.equal(folder.holdout(size), shards.holdout(size))
        np.testing.assert_array_equal(
            folder.gather(np.arange(40), size), shards.gather(np.arange(40), size)
        )


def test_training_reads_an_image_folder_too(tmp_path, face_dir):
    outcome = train(tiny_config(face_dir), LocalSession(tmp_path / "run"))
    assert outcome.summary["images_seen"] == 384 and outcome.summary["heldout_psnr_ema"] > 0


def test_unusable_data_is_refused_with_a_clear_reason(tmp_path, face_shards):
    config = DataConfig(path=str(face_shards), holdout=8)
    assert "48 images" in check_data(config, (4, 8, 16))
    with pytest.raises(
        DataError, match=r"needs \[32\]: re-run `pioneer prepare` with --resolutions 4,8,16,32"
    ):
        check_data(config, (4, 32))
    with pytest.raises(DataError, match="need more than data.holdout=48"):
        check_data(replace(config, holdout=48), (4,))
    with pytest.raises(DataError, match="does not exist"):
        check_data(DataConfig(path=str(tmp_path / "nope")), (4,))

    changed = tmp_path / "changed"
    shutil.copytree(face_shards, changed)
    shutil.copy(changed / "shard-00000.parquet", changed / "shard-00001.parquet")
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["shards"][1]["rows"] = 11
    (changed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="has 12 rows, the manifest says 11"):
        _dataset(changed, holdout=8).gather(np.array([13]), 4)
    (changed / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        check_data(DataConfig(path=str(changed)), (4,))
    (changed / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a pioneer prepare manifest"):
        check_data(DataConfig(path=str(changed)), (4,))


@pytest.mark.parametrize("name", ["default", "smoke", "celeba64"])
def test_presets_find_their_bundled_data(name):
    config = preset(name)
    check_data(config.data, tuple(p.resolution for p in config.schedule))


def test_the_paper_preset_asks_for_a_prepared_dataset():
    config = preset("celebahq256")
    with pytest.raises(DataError, match=r"needs \[64, 128, 256\]: re-run `pioneer prepare`"):
        check_data(config.data, tuple(p.resolution for p in config.schedule))
