"""A real Ray cluster on 127.0.0.1: `ray job submit`, a worker killed mid-run, a lost driver.

The head node runs with token auth on (RAY_AUTH_MODE=token): `ray start` in that mode needs a
token and never creates one, so the test writes its own and points the head and every
client at it (RAY_AUTH_TOKEN_PATH), leaving ~/.ray/auth_token alone.
"""

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pioneer import checkpoint
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head` on free ports; stopped (with every Ray process) at the end."""
    port, dashboard = free_port(), free_port()
    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(
        [BIN / "ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
         "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr[-2000:]
    yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    subprocess.run([BIN / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def _long_smoke(run_dir: Path) -> list[str]:
    """The smoke preset with a long 16 px phase: ~10 s of training, a checkpoint each 256."""
    return [
        "--preset", "smoke", "--run-dir", str(run_dir), "--max-failures", "2",
        "--set", "schedule.2.stable_images=1600", "--set", "data.holdout=16",
    ]  # fmt: skip


def _images_seen(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return 0
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["images_seen"] if lines else 0


def _wait_for(run_dir: Path, images: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _images_seen(run_dir) < images:
        assert process.poll() is None, "training ended before the kill"
        assert time.monotonic() < deadline, "training did not progress"
        time.sleep(0.2)


def _worker_pids(head) -> list[int]:
    """Live Ray Train workers' pids, from Ray's state API (in a client with the auth mode set)."""
    query = (
        "import json; from ray.util.state import list_actors; "
        f"print(json.dumps([a.pid for a in list_actors(address={head['dashboard']!r}, "
        "filters=[('class_name', '=', 'RayTrainWorker'), ('state', '=', 'ALIVE')])]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", query], env=head["env"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ray_job_submit_runs_the_smoke_preset(head, tmp_path):
    run_dir = tmp_path / "job"
    done = subprocess.run(
        [BIN / "ray", "job", "submit", "--address", head["dashboard"], "--working-dir", ".",
         "--", "python", "ray_jobs/train.py", "--preset", "smoke", "--run-dir", str(run_dir)],
        env=head["env"], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    assert checkpoint.load(run_dir).progress["images_seen"] == 384


def test_a_killed_worker_is_replaced_and_the_run_finishes(head, tmp_path):
    run_dir = tmp_path / "killed"
    env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
    process = subprocess.Popen(
        [sys.executable, "ray_jobs/train.py", *_long_smoke(run_dir)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(run_dir, random.Random().randint(500, 1100), process)
    pids = _worker_pids(head)
    assert len(pids) == 1
    killed_at = _images_seen(run_dir)
    os.kill(pids[0], signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    total = 128 + 128 + 64 + 1600
    assert checkpoint.load(run_dir).progress["images_seen"] == total
    assert "resuming at" in output  # the new worker started from the last checkpoint
    seen = [json.loads(line)["images_seen"] for line in (run_dir / "metrics.jsonl").open()]
    assert seen == sorted(seen) and seen[-1] == total and killed_at < total  # no duplicates


def test_a_new_submission_resumes_after_the_driver_died(head, tmp_path):
    run_dir = tmp_path / "driver"
    env = {**head["env"], "RAY_ADDRESS": head["gcs"]}
    command = [sys.executable, "ray_jobs/train.py", *_long_smoke(run_dir)]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _wait_for(run_dir, 700, process)
    process.send_signal(signal.SIGKILL)  # the driver, and with it the Train controller
    process.wait()
    saved = checkpoint.load(run_dir).progress["images_seen"]
    assert 0 < saved < 1920
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = re.search(r"resuming at ([\d,]+) images", again.stdout + again.stderr)
    assert resumed, again.stdout[-3000:]
    # Ray restores the latest checkpoint it registered: the last one on disk, or the one
    # before if the driver died while handing the newest over.
    assert 256 <= int(resumed.group(1).replace(",", "")) <= saved
    assert checkpoint.load(run_dir).progress["images_seen"] == 1920
