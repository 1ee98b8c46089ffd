"""A real Ray cluster on 127.0.0.1: `ray job submit`, a worker killed mid-run, a lost driver.

The head node runs with token auth on (RAY_AUTH_MODE=token): `ray start` in that mode needs a
token and never creates one, so the test writes its own and points the head and every
client at it (RAY_AUTH_TOKEN_PATH), leaving ~/.ray/auth_token alone.
"""

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
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
    """`ray start --head --block` on free ports, in its own process group and temp dir.

    Stopped by signalling that group, not with `ray stop` (which stops every Ray process on
    the machine, a user's other runs included); the private temp dir keeps plain
    `ray.init()` calls elsewhere on the machine from attaching to it, and free ports keep
    its job agent from colliding with a local Ray instance's.
    """
    port, dashboard, agent, client = free_port(), free_port(), free_port(), free_port()
    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths are capped
    log = tmp_path_factory.mktemp("head") / "head.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [BIN / "ray", "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
             "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true",
             # not the fixed defaults (52365, 10001): a local ray.init() holds those
             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
             f"--temp-dir={temp}", "--block"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs(url, env, process, log)
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": url, "env": env}
    finally:
        _stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_jobs(url: str, env: dict, process: subprocess.Popen, log: Path) -> None:
    """Until a trivial job runs: the head answers before its job agent is ready ("No
    available agent to submit job, please try again later")."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        done = subprocess.run(
            [BIN / "ray", "job", "submit", "--address", url, "--", "python", "-c", "pass"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, (done.stdout + done.stderr)[-3000:]
        time.sleep(2)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Ray's workers start their own sessions, so the
    head's process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (`ray start --block` then stops what it started),
    SIGKILL to whatever is left of it and of the processes below it."""
    tree = _descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


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
