"""Sweeps: space files checked before any trial, 2-trial ASHA and PBT sweeps end to end."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pioneer.config import ConfigError, preset
from pioneer.ray_tune import SweepOptions
from pioneer.space import Param, check_mutable, clip, config_for, load_space

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
    # quniform samples floats (and numpy ones): integral values fit integer keys
    config = config_for(preset("celebahq256"), {"schedule.5.margin_after_images": np.float64(3e5)})
    assert config.schedule[5].margin_after_images == 300_000


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


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(scheduler="pbt", workers_per_trial=2), "single-worker trials"),
        (dict(scheduler="pbt", search="optuna"), "explores by itself"),
        (dict(scheduler="pbt", metric="eval_ms_swd", mode="min"), "not always measured"),
        (dict(scheduler="hyperband"), "unknown scheduler 'hyperband'"),
        (dict(search="grid"), "unknown search 'grid'"),
    ],
)  # fmt: skip
def test_sweep_options_refuse_what_cannot_run(options, message):
    with pytest.raises(ConfigError) as error:
        SweepOptions(run_dir="runs/x", **options).check()
    assert message in str(error.value)


def test_pbt_mutates_only_keys_that_can_change_mid_run(tmp_path):
    ok = space_file(
        tmp_path,
        "params:\n  schedule.*.lr: {loguniform: [0.001, 0.004]}\n"
        "  schedule.1-.margin: {uniform: [0.1, 0.6]}\n  loss.recon_weight: {choice: [5, 10]}\n"
        "  train.decoder_steps: {randint: [1, 3]}\n",
    )
    check_mutable(load_space(ok, preset("smoke")))
    bad = space_file(tmp_path, "params:\n  schedule.*.batch: {choice: [8, 16]}\n")
    with pytest.raises(ConfigError, match="'schedule.\\*.batch' cannot change during training"):
        check_mutable(load_space(bad, preset("smoke")))
    done = subprocess.run(
        [sys.executable, "ray_jobs/tune.py", "--preset", "smoke", "--space", str(bad),
         "--scheduler", "pbt"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "use --scheduler asha to search it" in done.stderr


def test_pbt_mutations_are_clipped_to_the_space():
    assert clip(Param("a", "uniform", (0.1, 0.6)), 0.72) == 0.6
    assert clip(Param("a", "loguniform", (0.001, 0.004)), 0.0008) == 0.001
    assert clip(Param("a", "uniform", (0.1, 0.6)), 0.3) == 0.3
    assert (
        clip(Param("a", "randint", (1, 3)), 2.4) == 2
        and clip(Param("a", "randint", (1, 3)), 3) == 2
    )
    assert clip(Param("a", "quniform", (0.0, 1.0, 0.25)), 0.3) == 0.25
    assert clip(Param("a", "choice", (None, 0.2)), None) is None


@pytest.mark.slow
def test_a_two_trial_pbt_sweep_exploits_the_better_trial(tmp_path, face_shards):
    run_dir = tmp_path / "pbt"
    command = [
        sys.executable, "ray_jobs/tune.py", "--preset", "smoke",
        "--space", "ray_jobs/spaces/smoke.yaml", "--trials", "2", "--scheduler", "pbt",
        "--perturbation-images", "128", "--data", str(face_shards), "--set", "data.holdout=8",
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len({row["trial"] for row in rows}) == 2 and all(row["status"] == "done" for row in rows)
    assert all(int(row["images_seen"]) == 384 for row in rows)  # the smoke schedule's total
    for row in rows:  # the trial's latest checkpoint, kept by Tune beside its state
        assert Path(row["checkpoint"]).parent == run_dir / "tune" / row["trial"]
        assert 0.001 <= float(row["param:schedule.*.lr"]) <= 0.004
        assert 0.1 <= float(row["param:schedule.2.margin"]) <= 0.6
    # Perturbations at 128 and 256 images (none at the end): each time the weaker of two
    # trials restarts from the better one's checkpoint with mutated values (pbt_global.txt:
    # one line per exploit).
    exploits = [json.loads(line) for line in (run_dir / "tune" / "pbt_global.txt").open()]
    assert len(exploits) == 2
    for target, clone, *_ in exploits:
        assert target != clone
    assert done.stdout.count("trial continues from") >= 2
    for row in rows:
        seen = [json.loads(line)["images_seen"] for line in (run_dir / "trials" / row["trial"] /
                "metrics.jsonl").open()]  # fmt: skip
        assert seen == sorted(seen) and seen[-1] == 384  # trimmed where it took a clone

    from pioneer.api import Pioneer

    model = Pioneer.from_checkpoint(run_dir / "best")
    assert model.generate(2).shape == (2, 3, 16, 16)


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
    ranks = [(-int(row["images_seen"]), -float(row["heldout_psnr_ema"])) for row in rows]
    assert ranks == sorted(ranks)  # furthest trained first (ASHA may stop one), then best
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
