"""Prepare to, prepare from and train from a real S3 server (moto) on 127.0.0.1."""

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from pioneer import checkpoint, storage
from pioneer.api import Pioneer
from pioneer.checkpoint import CheckpointError
from pioneer.cli import main
from pioneer.config import DataConfig
from pioneer.data import DataError
from pioneer.dataset import check_data, open_dataset
from pioneer.prepare import PrepareOptions, prepare
from pioneer.rundir import RunDir
from pioneer.schedule import total_images
from pioneer.training import LocalSession, train
from tests.conftest import FACES, attribute_lines, tiny_config
from tests.test_training import CrashAfterCheckpoints, Interrupted

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


def _keys(s3, prefix):
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in listed)


def _metrics(uri):
    text = storage.read_bytes(storage.join(uri, "metrics.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines()]


def test_an_s3_run_dir_holds_the_run_and_resumes_exactly_on_another_machine(
    s3, tmp_path, face_shards, monkeypatch
):
    monkeypatch.setenv("PIONEER_CACHE", str(tmp_path / "cache"))
    config = tiny_config(face_shards)
    straight = train(config, LocalSession(tmp_path / "straight"))
    uri = f"s3://{BUCKET}/runs/resumed"
    with pytest.raises(Interrupted):
        train(config, CrashAfterCheckpoints(uri, crash_after=2))
    assert 0 < checkpoint.load(uri).progress["images_seen"] < total_images(config.schedule)
    shutil.rmtree(tmp_path / "cache")  # resume where no local copy of the run exists
    resumed = train(config, LocalSession(uri))

    a, b = straight.networks.state_dict(), resumed.networks.state_dict()
    for net in ("encoder", "decoder", "decoder_ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
    local_lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    local = [json.loads(line) for line in local_lines]
    drop = ("images_per_s",)  # wall-clock figures differ
    assert [{k: v for k, v in m.items() if k not in drop} for m in _metrics(uri)] == [
        {k: v for k, v in m.items() if k not in drop} for m in local
    ]
    keys = _keys(s3, "runs/resumed/")
    for name in ("metrics.jsonl", "summary.json", "samples_final.png", "samples_phase0_4px.png"):
        assert name in keys
    assert any(key.startswith("tensorboard/events.out.tfevents") for key in keys)
    saved = {key.split("/")[0] for key in keys if key.startswith("checkpoint_")}
    assert saved == {Path(p).name for p in checkpoint.list_checkpoints(tmp_path / "straight")}
    summary = json.loads(storage.read_bytes(storage.join(uri, "summary.json")))
    assert summary["best_checkpoint"] in saved

    model = Pioneer.from_checkpoint(uri)
    assert model.checkpoint_dir == checkpoint.list_checkpoints(uri)[-1]
    expected = Pioneer.from_checkpoint(tmp_path / "straight").generate(4, seed=1)
    torch.testing.assert_close(model.generate(4, seed=1), expected)


def test_the_cli_reads_and_writes_beside_an_s3_checkpoint(
    s3, tmp_path, trained_run, face_shards, monkeypatch
):
    monkeypatch.setenv("PIONEER_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{BUCKET}/runs/copied"
    storage.copy_tree(trained_run, uri)
    data = ["--data", str(face_shards), "--per-set", "4"]
    assert main(["attributes", uri, *data]) == 0
    assert storage.exists(storage.join(checkpoint.resolve(uri), "attributes.pt"))
    out = tmp_path / "edit.png"
    assert main(["edit", uri, str(FACES[0]), "--attribute", "Smiling", "--out", str(out)]) == 0
    assert main(["sample", uri, "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["plot", uri, "--out", str(tmp_path / "plot.png")]) == 0
    for name in ("edit.png", "s.png", "plot.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 0


def test_unreachable_s3_run_dirs_and_checkpoints_fail_clearly(s3):
    with pytest.raises(OSError, match="cannot write the run dir s3://no-such-bucket/run"):
        RunDir.at("s3://no-such-bucket/run").check_writable()
    with pytest.raises(CheckpointError, match="does not exist"):
        Pioneer.from_checkpoint(f"s3://{BUCKET}/runs/never-trained")


@pytest.mark.slow
def test_train_script_trains_from_and_into_s3(tmp_path, s3, s3_shards):
    """ray_jobs/train.py with data and run dir on S3: Ray stores the checkpoints there."""
    uri = f"s3://{BUCKET}/runs/ray-smoke"
    args = ["--preset", "smoke", "--data", s3_shards, "--run-dir", uri, "--set", "data.holdout=8"]
    env = {**os.environ, "PIONEER_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "ray_jobs/train.py", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"data: prepared dataset {s3_shards} (48 images)" in done.stdout
    assert f"run dir: {uri}" in done.stdout
    keys = _keys(s3, "runs/ray-smoke/")
    assert "samples_final.png" in keys and "summary.json" in keys
    model = Pioneer.from_checkpoint(uri)
    assert model.images_seen == json.loads(storage.read_bytes(f"{uri}/summary.json"))["images_seen"]


@pytest.mark.slow
def test_an_optuna_sweep_runs_into_an_s3_run_dir(tmp_path, s3, s3_shards):
    """ray_jobs/tune.py with --search optuna and the sweep's run dir on S3: the table, the
    trials' checkpoints and RUN_DIR/best all land there, and best loads from there."""
    uri = f"s3://{BUCKET}/sweeps/optuna"
    args = [
        "--preset", "smoke", "--space", "ray_jobs/spaces/smoke.yaml", "--trials", "1",
        "--scheduler", "none", "--search", "optuna", "--data", s3_shards,
        "--set", "data.holdout=8", "--run-dir", uri,
    ]  # fmt: skip
    env = {**os.environ, "PIONEER_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "ray_jobs/tune.py", *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = storage.read_bytes(f"{uri}/results.csv").decode()
    (row,) = csv.DictReader(io.StringIO(table))
    assert {"param:schedule.*.lr", "param:schedule.2.margin"} <= set(row)
    assert row["status"] == "done" and row["checkpoint"].startswith(f"{uri}/trials/")
    assert checkpoint.is_checkpoint(row["checkpoint"])
    assert f"best checkpoint: {uri}/best" in done.stdout
    model = Pioneer.from_checkpoint(f"{uri}/best")
    assert model.generate(2).shape == (2, 3, 16, 16)
