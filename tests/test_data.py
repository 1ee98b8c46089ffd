import pytest

from pioneer.data import load_image, seed_of
from pioneer.transform import crop_box


def test_load_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nonsense")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad, "face", 8)
    with pytest.raises(ValueError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg", "face", 8)


def test_face_crop_is_the_celeba_square():
    assert crop_box(178, 218, "face") == (19, 39, 159, 179)  # the usual 140x140 crop
    assert crop_box(89, 109, "center") == (0, 10, 89, 99)
    assert crop_box(89, 109, "none") == (0, 0, 89, 109)


def test_seeds_are_stable_and_distinct():
    assert seed_of(1, "a") == seed_of(1, "a") != seed_of(1, "b")
    assert 0 <= seed_of("x", 2**70) < 2**63
