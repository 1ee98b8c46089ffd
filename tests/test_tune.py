"""Sweeps: space files checked before any trial, and a 2-trial ASHA sweep end to end."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pioneer.config import ConfigError, preset
from pioneer.space import config_for, load_space

ROOT = Path(__file__).resolve().parent.parent


def space_file(tmp_path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_the_shipped_spaces_fit_their_presets():
    paper = load_space(ROOT / "ray_jobs" / "spaces" / "paper.yaml", preset("celebahq256"))
    assert {p.key for p in paper.params} >= {"schedule.*.lr", "schedule.5.margin"}
    smoke = load_space(ROOT / "ray_jobs" / "spaces" / "smoke.yaml", preset("smoke"))
    config = config_for(preset("smoke"), {"schedule.*.lr": 0.003, "schedule.2.margin": 0.5})
    assert [p.lr for p in config.schedule] == [0.003] * 3 and config.schedule[2].margin == 0.5
    assert smoke.metric == "heldout_psnr_ema" and smoke.mode == "max"


@pytest.mark.parametrize(
    "params, message",
    [
        ("loss.nope: {uniform: [0, 1]}", "'loss.nope': 'nope' is not one of"),
        ("schedule.7.lr: {uniform: [0.001, 0.002]}", "index '7' out of range"),
        ("schedule.*.lr: {uniform: [0.002, 0.001]}", "uniform range needs low < high"),
        ("schedule.*.lr: {loguniform: [0, 0.001]}", "loguniform needs low > 0"),
        ("schedule.*.lr: {normal: [0, 1]}", "unknown kind 'normal'"),
        ("schedule.2.margin: {uniform: [-1, 0.5]}", "= -1: schedule.2.margin must be >= 0"),
        ("train.decoder_steps: {randint: [0, 2]}", "train.decoder_steps must be >= 1"),
        ("schedule.*.batch: {choice: [8, 'x']}", "schedule.0.batch must be an integer"),
    ],
)  # fmt: skip
def test_bad_space_files_fail_naming_the_key(tmp_path, params, message):
    path = space_file(tmp_path, f"params:\n  {params}\n")
    with pytest.raises(ConfigError) as error:
        load_space(path, preset("smoke"))
    assert message in str(error.value)


def test_the_sweep_script_refuses_a_bad_space_before_starting_ray(tmp_path):
    path = space_file(tmp_path, "params:\n  loss.recon_wieght: {uniform: [1, 2]}\n")
    done = subprocess.run(
        [sys.executable, "ray_jobs/tune.py", "--preset", "smoke", "--space", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "'loss.recon_wieght'" in done.stderr
    assert "ray" not in done.stdout.lower()


@pytest.mark.slow
def test_a_two_trial_asha_sweep_finishes_writes_its_table_and_resumes(tmp_path, face_shards):
    run_dir = tmp_path / "sweep"
    command = [
        sys.executable, "ray_jobs/tune.py", "--preset", "smoke",
        "--space", "ray_jobs/spaces/smoke.yaml", "--trials", "2", "--scheduler", "asha",
        "--data", str(face_shards), "--set", "data.holdout=8", "--run-dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(rows) == 2 and all(row["status"] == "done" for row in rows)
    assert {"param:schedule.*.lr", "param:schedule.2.margin"} <= set(rows[0])
    scores = [float(row["heldout_psnr_ema"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert len(list((run_dir / "trials").iterdir())) == 2
    assert "best checkpoint:" in done.stdout

    from pioneer.api import Pioneer

    model = Pioneer.from_checkpoint(run_dir / "best")
    assert model.generate(2).shape == (2, 3, 16, 16)
    sample = subprocess.run(
        [sys.executable, "-m", "pioneer.cli", "sample", str(run_dir / "best"), "--n", "4",
         "--out", str(tmp_path / "best.png")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr

    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list((run_dir / "trials").iterdir())) == 2  # finished trials are not redone
    assert list(csv.DictReader((run_dir / "results.csv").open())) == rows
