import shutil

import pytest
import torch
from PIL import Image

from pioneer.config import DataConfig
from pioneer.data import Batches, DataError, FaceImages, crop_box, load_image, seed_of


def test_corrupt_and_odd_files_are_skipped_and_counted(tmp_path, face_dir):
    for path in sorted(face_dir.iterdir())[:12]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    good = (tmp_path / "000001.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("L", (50, 60), 128).save(tmp_path / "gray.png")  # converted, not skipped
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    faces = FaceImages.load(DataConfig(path=str(tmp_path), holdout=2), size=16)
    reasons = " ".join(faces.skipped)
    assert len(faces.skipped) == 3, faces.skipped
    assert "zero.jpg" in reasons and "text.png" in reasons and "truncated.jpg" in reasons
    assert faces.train.shape[1:] == (3, 16, 16) and faces.train.dtype == torch.uint8
    assert len(faces.train) + len(faces.holdout) == 12 + 2  # the faces, gray and rgba


def test_missing_empty_or_too_small_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FaceImages.load(DataConfig(path=str(tmp_path / "nope")), 8)
    with pytest.raises(DataError, match="no .jpg"):
        FaceImages.load(DataConfig(path=str(tmp_path)), 8)
    Image.new("RGB", (20, 20)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="need more than data.holdout"):
        FaceImages.load(DataConfig(path=str(tmp_path), holdout=4), 8)


def test_load_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nonsense")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad, "face", 8)


def test_face_crop_is_the_celeba_square():
    assert crop_box(178, 218, "face") == (19, 39, 159, 179)  # the usual 140x140 crop
    assert crop_box(89, 109, "center") == (0, 10, 89, 99)
    assert crop_box(89, 109, "none") == (0, 0, 89, 109)


def test_batches_are_deterministic_and_disjoint_across_ranks():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 4, 4).contiguous()
    ranks = [Batches(images, seed=3, flip=True, rank=r, world_size=2) for r in range(2)]
    seen = []
    for step in range(5):  # 5 x 8 = one epoch
        parts = [b.get(step * 8, 8, 4) for b in ranks]
        assert all(p.shape == (4, 3, 4, 4) for p in parts)
        seen += [int(round((v.item() + 1) * 127.5)) for p in parts for v in p[:, 0, 0, 0]]
    assert sorted(seen) == list(range(40))  # every image exactly once per epoch
    again = Batches(images, seed=3, flip=True, rank=1, world_size=2).get(16, 8, 4)
    assert torch.equal(again, ranks[1].get(16, 8, 4))
    assert not torch.equal(
        Batches(images, seed=4, flip=True, rank=0, world_size=1).global_indices(0, 40),
        ranks[0].global_indices(0, 40),
    )
    assert seed_of(1, "a") == seed_of(1, "a") != seed_of(1, "b")


def test_batch_must_split_evenly_across_workers():
    batches = Batches(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), 0, False, 0, 3)
    with pytest.raises(ValueError, match="not divisible by 3 workers"):
        batches.get(0, 8, 4)
