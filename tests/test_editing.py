"""Attribute editing (Eq. 6): vectors, edits, the checkpoint binding, and the two commands."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pioneer import Pioneer, checkpoint
from pioneer.cli import main
from pioneer.editing import AttributeVectors, attribute_vectors, edit_codes
from tests.conftest import FACES


@pytest.fixture
def run(trained_run, tmp_path):
    """A private copy of the finished smoke run (the commands write beside its checkpoint)."""
    return shutil.copytree(trained_run, tmp_path / "run")


def test_the_vector_of_identical_sets_is_zero():
    labels = np.array([[1, -1], [-1, 1], [1, 1], [-1, -1]], dtype=np.int8)
    same = lambda ids: torch.zeros(len(ids), 3, 4, 4)  # noqa: E731  every row: one image
    encode = lambda x: torch.nn.functional.normalize(torch.ones(len(x), 8), dim=1)  # noqa: E731
    used, vectors, counts, skipped = attribute_vectors(encode, same, labels, ["a", "b"], per_set=2)
    assert torch.equal(vectors, torch.zeros(2, 8)) and counts.tolist() == [[2, 2], [2, 2]]
    assert used == ["a", "b"] and skipped == []
    only_with = np.concatenate([labels[:, :1].clip(1), labels[:, 1:]], axis=1)
    used, _, _, skipped = attribute_vectors(encode, same, only_with, ["a", "b"], per_set=2)
    assert used == ["b"] and skipped == ["a"]  # a rare attribute is left out, not fatal
    with pytest.raises(ValueError, match="every attribute needs images with and without"):
        attribute_vectors(encode, same, labels[:, :1].clip(1), ["a"], per_set=2)


def test_edit_codes_adds_scaled_vectors_and_checks_strengths():
    vectors = AttributeVectors(["a", "b"], torch.eye(2, 4), torch.ones(2, 2), "id")
    z = torch.zeros(3, 4)
    torch.testing.assert_close(edit_codes(z, "a", 1.5, vectors)[:, 0], torch.full((3,), 1.5))
    both = edit_codes(z, {"a": 1.0, "b": -2.0}, 0.0, vectors)
    assert both[0].tolist() == [1.0, -2.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"strength must be in \[-2, 2\]"):
        edit_codes(z, "a", 2.5, vectors)
    with pytest.raises(ValueError, match="unknown attribute 'Smiling'"):
        edit_codes(z, "Smiling", 1.0, vectors)


def test_attributes_then_edit_from_the_command_line(run, face_shards, tmp_path, capsys):
    assert main(["attributes", str(run), "--data", str(face_shards), "--per-set", "8"]) == 0
    latest = Path(checkpoint.resolve(run))
    assert (latest / "attributes.pt").exists()
    out = tmp_path / "edit.png"
    args = ["edit", str(run), str(FACES[0]), "--out", str(out)]
    assert main([*args, "--attribute", "Smiling=1.5", "--attribute", "Male"]) == 0
    with Image.open(out) as image:  # input, reconstruction, 2 edits, both: 5 tiles of 64 + pads
        assert image.size == (5 * 64 + 6 * 2, 64 + 2 * 2)
    assert main([*args, "--attribute", "Smiling=3"]) == 1
    assert "strength must be in [-2, 2]" in capsys.readouterr().err

    model = Pioneer.from_checkpoint(run)
    x = model.load_images(FACES[:2])
    torch.testing.assert_close(model.edit(x, "Smiling", 0.0), model.reconstruct(x))
    assert not torch.equal(model.edit(x, "Smiling", 1.0), model.reconstruct(x))


def test_vectors_of_another_checkpoint_are_refused(run, face_shards):
    assert main(["attributes", str(run), "--data", str(face_shards), "--per-set", "4"]) == 0
    older, latest = map(Path, checkpoint.list_checkpoints(run)[-2:])
    model = Pioneer.from_checkpoint(older)
    with pytest.raises(ValueError, match="no attribute vectors beside the checkpoint"):
        model.edit(model.load_images(FACES[:1]), "Smiling", 1.0)
    with pytest.raises(ValueError, match="computed with another checkpoint"):
        model.load_attributes(latest / "attributes.pt")


def test_attributes_needs_labels(run, face_dir, capsys):
    assert main(["attributes", str(run), "--data", str(face_dir)]) == 1
    assert "has no attribute columns: pass --attributes FILE" in capsys.readouterr().err


def test_figures_writes_every_figure_as_a_png_of_the_expected_size(run, face_shards, tmp_path):
    from pioneer.config import DataConfig
    from pioneer.dataset import open_dataset
    from pioneer.figures import write_figures

    model = Pioneer.from_checkpoint(run)
    dataset = open_dataset(DataConfig(path=str(face_shards), holdout=8), (16,))
    written = write_figures(model, dataset, tmp_path / "figures")
    chosen = written.pop("attribute_names").split(",")
    tile = 64 + 2  # 16 px tiles are shown at 64 px, with 2 px of padding
    expected = {
        "samples": (8, 4),
        "reconstructions": (8, 2),
        "interpolation": (8, 8),
        "attributes": (2 + len(chosen), 4),
        "attribute_sweep": (10, 1),
    }
    assert set(written) == set(expected) | {"kl_traces"}
    for name, (columns, rows) in expected.items():
        with Image.open(written[name]) as image:
            image.verify()
        with Image.open(written[name]) as image:
            assert image.format == "PNG" and image.size == (columns * tile + 2, rows * tile + 2)
    with Image.open(written["kl_traces"]) as image:
        assert image.format == "PNG" and image.size == (840, 420)
    assert (
        main(["figures", str(run), "--data", str(face_shards), "--out", str(tmp_path / "f")]) == 0
    )
