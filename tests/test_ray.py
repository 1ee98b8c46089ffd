"""Ray Train end to end: the entry script, resume, and 2-worker data parallelism."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pioneer import checkpoint
from pioneer.schedule import total_images
from tests.conftest import tiny_config
from tests.test_training import diverging_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_script(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "ray_jobs" / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_train_script_runs_the_smoke_preset_and_resumes(tmp_path, face_shards):
    run_dir = tmp_path / "smoke"
    args = [
        "--preset",
        "smoke",
        "--data",
        str(face_shards),
        "--run-dir",
        str(run_dir),
        "--set",
        "data.holdout=8",
    ]
    first = run_script(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    total = total_images(tiny_config(face_shards).schedule)
    assert checkpoint.load(run_dir).progress["images_seen"] == total
    assert (run_dir / "samples_final.png").exists() and (run_dir / "metrics.jsonl").exists()
    assert "held-out PSNR ema" in first.stdout + first.stderr
    # Same command, same run dir: Ray restores the latest checkpoint, nothing is redone.
    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming at {total:,} images" in again.stdout + again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "loss.nope=1"], "unknown key 'loss.nope'"),
        (["--set", "schedule.0.batch=zero"], "schedule.0.batch must be an integer"),
        (["--data", "/no/such/folder"], "does not exist"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--eval-every", "1", "--set", 'train.eval_metrics=["nope"]'], "unknown metric(s)"),
    ],
)
def test_train_script_rejects_bad_input_before_starting_ray(args, message):
    done = run_script("--preset", "smoke", *args, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _loop_checking_ranks(loop_config):
    """The library loop, then every rank's weights and spectral-norm u/v compared."""
    import torch.distributed as dist

    from pioneer.config import from_dict
    from pioneer.ray_train import RaySession
    from pioneer.training import train

    session = RaySession(Path(loop_config["run_dir"]))
    outcome = train(from_dict(loop_config["config"]), session)
    nets = outcome.networks
    mine = {
        name: _digest(getattr(nets, name).state_dict())
        for name in ("encoder", "decoder", "decoder_ema")
    }
    sn_buffers = [k for k in nets.decoder.state_dict() if k.endswith("_u")]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(
        everyone, {"digests": mine, "sn_buffers": len(sn_buffers), "seen": nets.images_seen}
    )
    if session.rank == 0:
        (Path(loop_config["run_dir"]) / "ranks.json").write_text(json.dumps(everyone))


def test_two_workers_stay_identical_through_a_collapse_guard_rollback(tmp_path, face_shards):
    """2 ranks: weights and spectral-norm u/v equal bit for bit, also after both ranks agree
    to roll back (a huge learning rate forces the KL gap past the guard's bound)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pioneer.config import to_dict
    from pioneer.ray_train import WORKER_ENV

    config = diverging_config(face_shards, guard_lr_factor=1e-4)
    run_dir = tmp_path / "ddp"
    env = {
        **WORKER_ENV,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    ray.init(num_cpus=2, runtime_env={"env_vars": env})
    try:
        trainer = TorchTrainer(
            _loop_checking_ranks,
            train_loop_config={"config": to_dict(config), "run_dir": str(run_dir)},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="ddp", storage_path=str(tmp_path)),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    ranks = json.loads((run_dir / "ranks.json").read_text())
    assert len(ranks) == 2
    assert ranks[0]["sn_buffers"] > 0
    assert ranks[0]["digests"] == ranks[1]["digests"]  # weights, u/v and EMA, bit for bit
    assert ranks[0]["seen"] == ranks[1]["seen"] == total_images(config.schedule)
    assert checkpoint.load(run_dir).progress["images_seen"] == total_images(config.schedule)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    events = [m for m in lines if m.get("event") == "collapse_rollback"]
    assert len(events) == 1 and "KL gap" in events[0]["cause"]
    assert checkpoint.load(run_dir).state["guard"]["lr_scale"] == pytest.approx(1e-4)


def test_a_worker_error_ends_in_one_line_naming_the_cause(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(3):
        (faces / f"bad{i}.jpg").write_text("not a jpeg")
    done = run_script(
        "--preset", "smoke", "--data", str(faces), "--run-dir", str(tmp_path / "r"),
        "--set", "data.holdout=1",
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed:") and "0 readable images" in last
