from pathlib import Path

import pytest
import torch

from pioneer import checkpoint
from pioneer.checkpoint import CheckpointError
from pioneer.training import build
from tests.conftest import tiny_config


def _nets(face_dir, seed):
    config = tiny_config(face_dir, seed=seed)
    return config, build(config, torch.device("cpu"))


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_state_equal(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_round_trip_is_exact(tmp_path, face_dir):
    config, nets = _nets(face_dir, seed=1)
    # Give the optimizers some state and the EMA its own weights.
    z = torch.nn.functional.normalize(torch.randn(4, config.model.latent_size), dim=1)
    nets.decoder(z, 2, 0.5).mean().backward()
    nets.optimizer_decoder.step()
    nets.images_seen, nets.ema_synced_phase = 1234, 2
    path = checkpoint.save(
        tmp_path / "checkpoint_x", config, {"images_seen": 1234}, nets.state_dict()
    )
    loaded = checkpoint.load(path)
    assert loaded.config == config
    assert loaded.progress["images_seen"] == 1234
    _assert_state_equal(nets.state_dict(), loaded.state)
    _, fresh = _nets(face_dir, seed=2)
    fresh.load_state_dict(loaded.state)
    _assert_state_equal(nets.state_dict(), fresh.state_dict())
    for net in (nets.decoder, fresh.decoder):
        net.eval()
    assert torch.equal(nets.decoder(z, 2, 0.5), fresh.decoder(z, 2, 0.5))


def test_a_failed_write_leaves_the_previous_checkpoint_loadable(tmp_path, face_dir, monkeypatch):
    config, nets = _nets(face_dir, seed=0)
    target = tmp_path / "checkpoint_0000000001"
    checkpoint.save(target, config, {"images_seen": 1}, nets.state_dict())

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(target, config, {"images_seen": 2}, nets.state_dict())
    assert checkpoint.load(target).progress["images_seen"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0000000001"]


def test_run_dir_resolves_to_the_checkpoint_with_most_images(tmp_path, face_dir):
    config, nets = _nets(face_dir, seed=0)
    for seen in (5, 700, 60):
        checkpoint.save(
            tmp_path / checkpoint.checkpoint_name(seen),
            config,
            {"images_seen": seen},
            nets.state_dict(),
        )
    (tmp_path / "checkpoint_half_written").mkdir()  # no files: never picked
    assert Path(checkpoint.resolve(tmp_path)).name == checkpoint.checkpoint_name(700)
    checkpoint.prune(tmp_path, keep=1)
    assert [Path(p).name for p in checkpoint.list_checkpoints(tmp_path)] == [
        checkpoint.checkpoint_name(700)
    ]


def test_pruning_keeps_the_latest_and_the_best_at_the_current_resolution(tmp_path, face_dir):
    config, nets = _nets(face_dir, seed=0)
    scores = [(100, 8, 30.0), (200, 16, 18.0), (300, 16, 19.5), (400, 16, 17.0), (500, 16, 16.0)]
    for seen, resolution, psnr in scores:
        progress = {"images_seen": seen, "resolution": resolution, "metrics": {"psnr": psnr}}
        checkpoint.save(tmp_path / checkpoint.checkpoint_name(seen), config, progress, {})
    champion = Path(checkpoint.best(tmp_path, "psnr"))
    assert champion.name == checkpoint.checkpoint_name(300)  # the 8 px ones are not compared
    assert Path(checkpoint.best(tmp_path, "psnr", "min")).name == checkpoint.checkpoint_name(500)
    checkpoint.prune(tmp_path, keep=2, best_metric="psnr")
    assert [Path(p).name for p in checkpoint.list_checkpoints(tmp_path)] == [
        checkpoint.checkpoint_name(n) for n in (300, 400, 500)
    ]
    assert checkpoint.best(tmp_path, "nope") is None


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        checkpoint.load(tmp_path)
    broken = tmp_path / "checkpoint_1"
    broken.mkdir()
    for name in ("config.json", "progress.json", "state.pt"):
        (broken / name).write_text("{}" if name != "state.pt" else "garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(broken)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        checkpoint.load(tmp_path / "file.txt")


WRITER = """
import sys, torch
from pioneer import checkpoint
from pioneer.config import preset
run, config = sys.argv[1], preset("smoke")
state = {"weights": torch.randn(4_000_000)}  # 16 MB: each write takes a while
for i in range(1, 10_000):
    state["images_seen"] = i
    checkpoint.save(f"{run}/{checkpoint.checkpoint_name(i)}", config, {"images_seen": i}, state)
    print(i, flush=True)
"""


def test_a_process_killed_while_writing_leaves_the_last_checkpoint_loadable(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "1"  # one complete checkpoint first
    time.sleep(random.Random().uniform(0.05, 0.6))  # then die at some point of a later write
    process.send_signal(signal.SIGKILL)
    process.wait()
    loaded = checkpoint.load(tmp_path)
    assert loaded.state["images_seen"] == loaded.progress["images_seen"] >= 1
    assert loaded.path.name == checkpoint.checkpoint_name(loaded.progress["images_seen"])
    for found in checkpoint.list_checkpoints(tmp_path):  # every listed one is whole
        assert checkpoint.load(found).state["weights"].numel() == 4_000_000
