"""The service's two entry points, `serve run serve/config.yaml` and `python -m serve`,
each started as a user would, plus the config file checked against Serve's schema."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from serve.app import MODEL_ACTOR_OPTIONS
from serve.options import ServeOptions
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "serve" / "config.yaml"


def test_the_config_file_is_a_valid_serve_config_with_valid_options():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "serve.app:build"
    ServeOptions.from_args(app["args"])
    assert {d["name"] for d in app["deployments"]} == {"Service", "Encoder", "Decoder"}
    for deployment in app["deployments"]:  # the file's actor options replace the code's
        if deployment["name"] != "Service":
            assert deployment["ray_actor_options"] == MODEL_ACTOR_OPTIONS


def test_bad_service_options_fail_before_starting_ray(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "serve", "--checkpoint", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "does not exist" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "serve", "--checkpoint", "x", "--set", "max_n=0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "max_n must be an integer >= 1" in done.stderr


def _wait_until_up(base: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or the app still deploying
            pass
        time.sleep(1)
    raise AssertionError(f"{base} did not come up in {seconds} s")


def _stop(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.mark.slow
def test_python_m_serve_serves_a_checkpoint_until_terminated(trained_run):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serve", "--checkpoint", str(trained_run), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        info = requests.get(f"{base}/v1/info", timeout=10).json()
        assert info["checkpoint"].startswith(str(trained_run))
        sample = requests.post(f"{base}/v1/sample", json={"n": 4}, timeout=60)
        assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    finally:
        code = _stop(process, signal.SIGTERM)
    assert code == 0, process.stdout.read()[-3000:]


@pytest.mark.slow
def test_serve_run_with_the_config_file(tmp_path, trained_run):
    config = yaml.safe_load(CONFIG.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["checkpoint"] = str(trained_run)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("serve")), "run", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        face = (ROOT / "data" / "celeba" / "images" / "000001.jpg").read_bytes()
        answer = requests.post(f"{base}/v1/reconstruct", files={"image": ("a", face)}, timeout=60)
        assert answer.status_code == 200 and answer.content[:4] == b"\x89PNG"
    finally:
        _stop(process, signal.SIGINT)
