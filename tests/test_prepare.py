"""`pioneer prepare`: bad inputs counted by reason, exact contents, attributes, resume."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pioneer.cli import main
from pioneer.config import BUNDLED_CELEBA, BUNDLED_FACES
from pioneer.prepare import PrepareError, PrepareOptions, prepare, read_attributes
from pioneer.transform import crop_box
from tests.conftest import FACES, attribute_lines

ROOT = BUNDLED_CELEBA.parent.parent
RESOLUTIONS = (4, 8, 16)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """12 good faces, one face in a subfolder, and one file of every bad kind."""
    src = tmp_path_factory.mktemp("messy")
    for path in FACES[:12]:
        shutil.copy(path, src / path.name)
    (src / "nested").mkdir()
    shutil.copy(FACES[100], src / "nested" / FACES[100].name)
    face = Image.open(FACES[0]).convert("RGB")
    (src / "zero.jpg").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    good = FACES[1].read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    Image.new("L", (60, 70), 128).save(src / "gray.png")
    Image.new("RGBA", (60, 70), (10, 20, 30, 0)).save(src / "rgba.png")  # fully transparent
    face.convert("CMYK").save(src / "cmyk.jpg")
    deep = (np.arange(60 * 70, dtype=np.uint32).reshape(70, 60) * 15).astype(np.uint16)
    Image.fromarray(deep).save(src / "deep.png")  # 16-bit grey
    face.quantize(64).save(src / "palette.png")
    Image.new("RGB", (10, 10), (200, 0, 0)).save(src / "tiny.png")
    Image.new("RGB", (300, 40)).save(src / "wide.jpg")
    shutil.copy(FACES[0], src / "000001.png")  # same id as 000001.jpg
    (src / "notes.txt").write_text("ignored")
    attributes = src.parent / f"{src.name}-attributes.txt"
    attributes.write_text(attribute_lines([p.name for p in FACES[:12]] + [FACES[100].name]))
    return src, attributes


def _rows(out):
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pq.read_table(out / s["path"]) for s in manifest["shards"]]
    return manifest, [row for t in tables for row in t.to_pylist()]


def test_bad_inputs_are_counted_by_reason_and_never_stop_the_job(tmp_path, messy):
    src, attributes = messy
    options = PrepareOptions(RESOLUTIONS, attributes=str(attributes), shard_size=5, workers=2)
    manifest = prepare(str(src), str(tmp_path / "out"), options)
    counts = manifest["counts"]
    assert counts["files"] == 25 and counts["ignored_not_image_suffix"] == 1
    assert counts["read"] == 24 and counts["written"] == 18
    assert counts["skipped"] == {
        "empty": 1,
        "not_image": 1,
        "corrupt": 1,
        "too_small": 1,
        "aspect_ratio": 1,
        "duplicate_id": 1,
    }
    assert counts["converted"] == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}
    assert counts["upscaled"] == 0 and counts["missing_attributes"] == 5
    by_reason = {s["reason"]: s["source"] for s in manifest["skipped"]}
    assert by_reason == {
        "empty": "zero.jpg",
        "not_image": "text.png",
        "corrupt": "truncated.jpg",
        "too_small": "tiny.png",
        "aspect_ratio": "wide.jpg",
        "duplicate_id": "000001.png",
    }
    assert sum(s["rows"] for s in manifest["shards"]) == 18 == manifest["rows"]
    _, rows = _rows(tmp_path / "out")
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == 18 and "nested/000101" in ids and "000001" in ids
    rgba = next(r for r in rows if r["id"] == "rgba")
    assert set(rgba["image_8"]) == {255}  # transparent pixels flattened onto white
    deep = np.frombuffer(next(r for r in rows if r["id"] == "deep")["image_16"], np.uint8)
    assert deep.max() > 50  # 16-bit range rescaled, not clipped to black/white
    again = prepare(str(src), str(tmp_path / "up"), PrepareOptions(RESOLUTIONS, upscale=True))
    assert again["counts"]["upscaled"] == 1 and again["counts"]["written"] == 19


def test_shards_match_a_direct_resize_of_the_source_and_the_attribute_file(tmp_path, messy):
    src, attributes = messy
    options = PrepareOptions(RESOLUTIONS, attributes=str(attributes), shard_size=4, workers=1)
    manifest = prepare(str(src), str(tmp_path / "out"), options)
    names, table = read_attributes(str(attributes))
    assert manifest["attributes"] == names and len(names) == 40
    _, rows = _rows(tmp_path / "out")
    checked = 0
    for row in rows:
        if not row["source"].endswith(".jpg") or row["id"] == "cmyk":
            continue
        image = Image.open(src / row["source"]).convert("RGB")
        square = image.crop(crop_box(*image.size, "face"))
        for size in RESOLUTIONS:
            expected = np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))
            got = np.frombuffer(row[f"image_{size}"], np.uint8).reshape(size, size, 3)
            np.testing.assert_array_equal(got, expected)
        values = table[row["source"].split("/")[-1]]
        assert [row[f"attr_{n}"] for n in names] == list(values)
        checked += 1
    assert checked == 13
    gray = next(r for r in rows if r["id"] == "gray")
    assert all(gray[f"attr_{n}"] is None for n in names)


def test_an_interrupted_prepare_resumes_to_the_bundled_dataset(tmp_path):
    """Kill a real prepare after its first shard, resume it, and get the committed shards."""
    committed = json.loads((BUNDLED_FACES / "manifest.json").read_text())
    out = tmp_path / "celeba"
    args = ["--resolutions", ",".join(map(str, committed["resolutions"]))]
    args += ["--attributes", str(BUNDLED_CELEBA / "list_attr_celeba.txt"), "--shard-size", "1000"]
    command = [sys.executable, "-m", "pioneer.cli", "prepare", str(BUNDLED_CELEBA / "images")]
    process = subprocess.Popen([*command, str(out), *args, "--workers", "1"], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()  # readers refuse the unfinished dataset
    done_before = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert 1 <= len(done_before) < 4
    stamps = {name: (out / name).stat().st_mtime_ns for name in done_before}
    (out / "shard-00003.parquet").write_bytes(b"PAR1 half a shard")  # a foreign/partial file
    (out / "shard-00002.parquet.tmp-dead").write_bytes(b"left by a killed writer")

    assert main(["prepare", str(BUNDLED_CELEBA / "images"), str(out), *args]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reused_images"] == 1000 * len(done_before)
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamps.items())  # not redone
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        *(s["path"] for s in committed["shards"]),
    ]
    assert manifest["counts"] == committed["counts"]
    # Same rows as the committed dataset; pixels may differ by a unit where a newer Pillow
    # decodes JPEG differently, nothing more.
    for entry in manifest["shards"]:
        ours, theirs = (
            pq.read_table(out / entry["path"]),
            pq.read_table(BUNDLED_FACES / entry["path"]),
        )
        assert ours.column_names == theirs.column_names
        for name in ours.column_names:
            if not name.startswith("image_"):
                assert ours.column(name).equals(theirs.column(name)), name
                continue
            a, b = (
                np.frombuffer(b"".join(t.column(name).to_pylist()), np.uint8)
                for t in (ours, theirs)
            )
            difference = np.abs(a.astype(int) - b.astype(int))
            assert difference.max() <= 3 and difference.mean() < 0.1, name


def test_a_rerun_with_another_shard_size_replaces_the_old_shards(tmp_path, face_dir):
    out = tmp_path / "out"
    first = prepare(str(face_dir), str(out), PrepareOptions((4,), shard_size=10, workers=1))
    assert len(first["shards"]) == 5
    second = prepare(str(face_dir), str(out), PrepareOptions((4,), shard_size=16, workers=1))
    assert len(second["shards"]) == 3 and second["reused_images"] == 0
    assert sorted(p.name for p in out.glob("shard-*")) == [s["path"] for s in second["shards"]]


@pytest.mark.parametrize(
    "options, message",
    [
        (PrepareOptions((4, 12)), "not a power of two"),
        (PrepareOptions((4,), crop="round"), "--crop must be"),
        (PrepareOptions((4,), max_aspect=0.5), "--max-aspect"),
    ],
)
def test_bad_options_are_refused(tmp_path, face_dir, options, message):
    with pytest.raises(PrepareError, match=message):
        prepare(str(face_dir), str(tmp_path / "out"), options)


def test_bad_sources_and_attribute_files_are_clear_errors(tmp_path, face_dir, capsys):
    with pytest.raises(PrepareError, match="not a folder"):
        prepare(str(tmp_path / "nope"), str(tmp_path / "out"), PrepareOptions((4,)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no .jpg"):
        prepare(str(tmp_path / "empty"), str(tmp_path / "out"), PrepareOptions((4,)))
    bad = tmp_path / "attrs.txt"
    bad.write_text("2\nSmiling Young\n000001.jpg 1 -1\n000002.jpg 1 0\n")
    with pytest.raises(PrepareError, match="line 4: expected 2 values of 1 or -1"):
        prepare(str(face_dir), str(tmp_path / "out"), PrepareOptions((4,), attributes=str(bad)))
    bad.write_text("3\nSmiling\n000001.jpg 1\n")
    with pytest.raises(PrepareError, match="count line says 3, found 1"):
        read_attributes(str(bad))
    assert main(["prepare", str(face_dir), str(tmp_path / "o"), "--resolutions", "4,x"]) == 1
    assert "--resolutions must be comma-separated integers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for a job that could not start


def test_a_damaged_shard_is_redone_on_resume_and_refused_by_readers(tmp_path, face_dir):
    from pioneer.config import DataConfig
    from pioneer.data import DataError
    from pioneer.dataset import open_dataset

    out = tmp_path / "out"
    options = PrepareOptions((4, 8), shard_size=24, workers=1)
    first = prepare(str(face_dir), str(out), options)
    shard = out / first["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the pixel pages, footer intact
    shard.write_bytes(bytes(data))
    dataset = open_dataset(DataConfig(path=str(out), holdout=8), (4, 8))
    with pytest.raises(DataError, match="cannot read shard"):
        dataset.read(0, 8)
    again = prepare(str(face_dir), str(out), options)
    assert again["reused_images"] == 24  # the intact shard only
    assert again["shards"] == first["shards"]  # the damaged one rewritten, byte for byte
