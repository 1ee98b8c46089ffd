"""Prepare to, prepare from and train from a real S3 server (moto) on 127.0.0.1."""

import logging
import os
import subprocess
import sys

import boto3
import numpy as np
import pytest

from pioneer.config import DataConfig
from pioneer.data import DataError
from pioneer.dataset import check_data, open_dataset
from pioneer.prepare import PrepareOptions, prepare
from pioneer.schedule import total_images
from pioneer.training import LocalSession, train
from tests.conftest import FACES, attribute_lines, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "pioneer-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port, reached through the standard AWS variables only."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    os.environ.clear()
    os.environ.update(saved)
    server.stop()


@pytest.fixture(scope="module")
def s3_shards(s3, face_dir):
    """The 48 faces prepared straight into S3."""
    uri = f"s3://{BUCKET}/faces"
    prepare(str(face_dir), uri, PrepareOptions((4, 8, 16), shard_size=12, workers=2))
    return uri


def test_prepare_writes_shards_and_manifest_to_s3_and_resumes(s3, s3_shards, face_dir, face_shards):
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="faces/")["Contents"])
    assert keys == ["faces/manifest.json"] + [f"faces/shard-0000{i}.parquet" for i in range(4)]
    remote = open_dataset(DataConfig(path=s3_shards, holdout=8), (4, 16))
    local = open_dataset(DataConfig(path=str(face_shards), holdout=8), (4, 16))
    np.testing.assert_array_equal(remote.gather(np.arange(48), 16), local.gather(np.arange(48), 16))
    again = prepare(str(face_dir), s3_shards, PrepareOptions((4, 8, 16), shard_size=12))
    assert again["reused_images"] == 48  # every shard verified in S3, none rewritten
    assert again["shards"] == remote.manifest["shards"]


def test_prepare_reads_an_s3_prefix_with_bad_files_and_attributes(s3, face_dir):
    names = [p.name for p in sorted(face_dir.iterdir())[:20]]
    for name in names:
        s3.upload_file(str(face_dir / name), BUCKET, f"raw/photos/{name}")
    s3.put_object(Bucket=BUCKET, Key="raw/photos/empty.jpg", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="raw/photos/broken.png", Body=b"\x89PNG garbage")
    s3.put_object(Bucket=BUCKET, Key="raw/attributes.txt", Body=attribute_lines(names).encode())
    options = PrepareOptions((4, 8), attributes=f"s3://{BUCKET}/raw/attributes.txt", workers=2)
    manifest = prepare(f"s3://{BUCKET}/raw/photos", f"s3://{BUCKET}/raw-prepared", options)
    counts = manifest["counts"]
    assert counts["written"] == 20 and counts["missing_attributes"] == 0
    assert counts["skipped"]["empty"] == 1 and counts["skipped"]["not_image"] == 1
    assert len(manifest["attributes"]) == 40


def test_training_reads_shards_from_s3(tmp_path, s3_shards):
    config = tiny_config(s3_shards)
    assert "48 images" in check_data(config.data, (4, 8, 16))
    outcome = train(config, LocalSession(tmp_path / "run"))
    assert outcome.summary["images_seen"] == total_images(config.schedule)


def test_s3_data_must_be_prepared_and_reachable(s3):
    s3.put_object(Bucket=BUCKET, Key="loose/000001.jpg", Body=FACES[0].read_bytes())
    with pytest.raises(DataError, match="remote data must be prepared first"):
        check_data(DataConfig(path=f"s3://{BUCKET}/loose"), (4,))
    with pytest.raises(ValueError, match="no .jpg"):
        prepare(f"s3://{BUCKET}/nothing-here", f"s3://{BUCKET}/out", PrepareOptions((4,)))


@pytest.mark.slow
def test_train_script_trains_from_s3(tmp_path, s3_shards):
    args = ["--preset", "smoke", "--data", s3_shards, "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "ray_jobs/train.py", *args, "--set", "data.holdout=8"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"data: prepared dataset {s3_shards} (48 images)" in done.stdout
    assert (tmp_path / "run" / "samples_final.png").exists()
