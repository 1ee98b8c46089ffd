import json
import math
from dataclasses import dataclass, replace

import pytest
import torch

from pioneer import checkpoint
from pioneer.schedule import total_images
from pioneer.training import LocalSession, train
from tests.conftest import tiny_config


class Interrupted(Exception):
    pass


@dataclass
class CrashAfterCheckpoints(LocalSession):
    """Dies right after its n-th checkpoint, like a killed worker."""

    crash_after: int = 1

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None:
            self.crash_after -= 1
            if self.crash_after == 0:
                raise Interrupted


def _losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(m["images_seen"], m["loss_encoder"], m["loss_decoder"], m["kl_gap"]) for m in lines]


def test_smoke_run_writes_checkpoints_grids_and_metrics(trained_run, face_shards):
    config = tiny_config(face_shards)
    found = checkpoint.list_checkpoints(trained_run)
    assert found and len(found) <= config.train.keep_checkpoints
    latest = checkpoint.load(trained_run)
    assert latest.progress["images_seen"] == total_images(config.schedule)
    assert latest.progress["phase"] == len(config.schedule) - 1
    for name in ("samples_final.png", "reconstructions_final.png", "samples_phase0_4px.png"):
        assert (trained_run / name).stat().st_size > 0
    summary = json.loads((trained_run / "summary.json").read_text())
    for key in ("heldout_psnr_ema", "heldout_psnr_live", "heldout_psnr_mean_face"):
        assert summary[key] > 0
    metrics = _losses(trained_run)
    assert metrics[-1][0] == total_images(config.schedule)


def test_interrupted_run_resumes_exactly(tmp_path, face_shards):
    config = tiny_config(face_shards)
    straight = train(config, LocalSession(tmp_path / "straight"))

    with pytest.raises(Interrupted):
        train(config, CrashAfterCheckpoints(tmp_path / "resumed", crash_after=2))
    resumed_at = checkpoint.load(tmp_path / "resumed").progress["images_seen"]
    assert 0 < resumed_at < total_images(config.schedule)
    resumed = train(config, LocalSession(tmp_path / "resumed"))

    assert (
        resumed.networks.images_seen
        == straight.networks.images_seen
        == total_images(config.schedule)
    )
    a, b = straight.networks.state_dict(), resumed.networks.state_dict()
    for net in ("encoder", "decoder", "decoder_ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_rerunning_a_finished_run_does_no_more_training(trained_run, face_shards):
    before = checkpoint.load(trained_run).progress["images_seen"]
    session = LocalSession(trained_run)
    outcome = train(tiny_config(face_shards), session)
    assert outcome.networks.images_seen == before
    assert session.history == []


def test_bf16_channels_last_path_trains(tmp_path, face_shards):
    config = tiny_config(face_shards, precision="bf16", channels_last=True)
    outcome = train(config, LocalSession(tmp_path))
    assert outcome.networks.images_seen == total_images(config.schedule)
    assert all(math.isfinite(v) for k, v in outcome.summary.items() if k != "best_checkpoint")


def test_baseline_pioneer_mode_trains(tmp_path, face_shards):
    config = tiny_config(face_shards)
    config = replace(config, model=replace(config.model, mode="baseline"))
    outcome = train(config, LocalSession(tmp_path))
    assert outcome.networks.images_seen == total_images(config.schedule)
    assert all(math.isfinite(v) for k, v in outcome.summary.items() if k != "best_checkpoint")


def test_periodic_evaluation_reports_the_chosen_metrics(tmp_path, face_shards):
    config = tiny_config(
        face_shards, eval_every_images=128, eval_metrics=("psnr", "ms_swd", "probe"), eval_images=16
    )
    reported = []

    @dataclass
    class Recording(LocalSession):
        def report(self, metrics, checkpoint_dir):
            reported.append(metrics)
            super().report(metrics, checkpoint_dir)

    train(config, Recording(tmp_path / "run"))
    evaluated = [m for m in reported if "eval_psnr" in m]
    assert [m["images_seen"] for m in evaluated] == [128, 256, 384]
    for m in evaluated:
        assert math.isfinite(m["eval_ms_swd"]) and m["eval_ms_swd_real"] > 0
        assert 0 <= m["eval_probe_accuracy"] <= 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert lines.count("eval_psnr") == 3


def test_periodic_metrics_needing_missing_weights_fail_before_training(
    tmp_path, face_shards, monkeypatch
):
    from pioneer.features import WeightsMissing

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("PIONEER_INCEPTION_WEIGHTS", raising=False)
    config = tiny_config(face_shards, eval_every_images=128, eval_metrics=("fid",))
    with pytest.raises(WeightsMissing, match="weights-inception"):
        train(config, LocalSession(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def diverging_config(face_shards, lr=50.0, **guard):
    """The smoke run with a learning rate that blows the KL gap up within 64 images."""
    config = tiny_config(face_shards, guard_gap=3.0, guard_images=64, **guard)
    return replace(config, schedule=tuple(replace(p, lr=lr) for p in config.schedule))


def test_the_collapse_guard_rolls_back_and_applies_the_remedy(tmp_path, face_shards):
    config = diverging_config(face_shards, guard_lr_factor=1e-4)
    outcome = train(config, LocalSession(tmp_path / "guarded"))
    lines = [json.loads(line) for line in (tmp_path / "guarded" / "metrics.jsonl").open()]
    events = [m for m in lines if m.get("event") == "collapse_rollback"]
    assert len(events) == 1 and events[0]["images_seen"] == 0 and events[0]["collapsed_at"] == 64
    assert "KL gap" in events[0]["cause"] and events[0]["remedy"] == "learning rates x0.0001"
    latest = checkpoint.load(tmp_path / "guarded")
    assert latest.state["guard"]["lr_scale"] == pytest.approx(1e-4)
    assert latest.path.name == "checkpoint_0000000384-r1"  # retaken after the rollback
    # Rolled back to the start with lr x1e-4: exactly a fresh run at lr 0.005.
    fresh = train(diverging_config(face_shards, lr=0.005), LocalSession(tmp_path / "fresh"))
    figures = lambda summary: {k: v for k, v in summary.items() if k != "best_checkpoint"}  # noqa: E731
    assert figures(outcome.summary) == figures(fresh.summary)


def test_the_collapse_guard_gives_up_with_a_clear_message(tmp_path, face_shards):
    from pioneer.training import CollapseError

    with pytest.raises(CollapseError, match=r"collapsed at 64 images .* after 0 rollback\(s\)"):
        train(diverging_config(face_shards, guard_rollbacks=0), LocalSession(tmp_path / "a"))
    config = diverging_config(face_shards, guard_remedy="margin", guard_rollbacks=1)
    with pytest.raises(CollapseError, match="after 1 rollback"):
        train(config, LocalSession(tmp_path / "b"))
    text = (tmp_path / "b" / "metrics.jsonl").read_text()
    assert '"remedy": "margin +0.2"' in text


def _scalars(folder):
    """(tag, step, value) of every scalar in a folder's TensorBoard event files."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its CRC, the record, its CRC
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_reports_go_to_tensorboard_too(trained_run):
    scalars = _scalars(trained_run / "tensorboard")
    tags = {tag for tag, _, _ in scalars}
    assert {"kl/kl_real", "kl/kl_fake", "loss/loss_encoder", "heldout/heldout_psnr_ema"} <= tags
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()]
    kl = {step: value for tag, step, value in scalars if tag == "kl/kl_real"}
    assert kl == pytest.approx({m["images_seen"]: m["kl_real"] for m in lines})


def _one_step(config, share: bool, z: dict, compiled: bool = False):
    from pioneer.schedule import progress_at
    from pioneer.training import build, compile_networks, train_step

    config = replace(config, train=replace(config.train, share_fake=share))
    nets = build(config, torch.device("cpu"))
    if compiled:
        compile_networks(nets)
    now = progress_at(config.schedule, total_images(config.schedule) - 1)
    x = torch.rand(4, 3, now.resolution, now.resolution, generator=torch.Generator().manual_seed(1))
    terms = train_step(
        nets, nets.encoder, nets.decoder, x * 2 - 1, now, config, lambda tag, n: z[tag],
        torch.autocast("cpu", enabled=False),
    )  # fmt: skip
    return nets, terms


def test_sharing_the_fake_batch_changes_nothing_but_one_decoder_pass(face_shards):
    """With the same z drawn for both, a step that reuses the encoder step's theta(z) in its
    first decoder update ends with bit-identical weights and losses, and counts exactly one
    decoder forward fewer. (Baseline mode: its decoder has no power iteration, whose extra
    update in the unshared step's extra forward would otherwise differ.)"""
    from torch.utils.flop_counter import FlopCounterMode

    from pioneer.sampling import sample_latents

    config = tiny_config(face_shards, precision="fp32", channels_last=False)
    config = replace(config, model=replace(config.model, mode="baseline"))
    g = torch.Generator().manual_seed(0)
    same, other = (sample_latents(4, config.model.latent_size, g) for _ in range(2))
    z = {"z_encoder": same, "z_decoder0": same, "z_decoder1": other}
    (shared, a), (unshared, b) = _one_step(config, True, z), _one_step(config, False, z)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for one, other in ((shared.encoder, unshared.encoder), (shared.decoder, unshared.decoder)):
        for p, q in zip(one.state_dict().values(), other.state_dict().values(), strict=True):
            assert torch.equal(p, q)

    counts = {}
    for share in (True, False):
        with FlopCounterMode(display=False) as counter:
            nets, _ = _one_step(config, share, z)
        counts[share] = counter.get_total_flops()
    phase = len(config.schedule) - 1
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        nets.decoder(same, phase, 1.0)
    assert counts[False] - counts[True] == counter.get_total_flops() > 0


@pytest.mark.slow
def test_compiled_networks_train_like_eager_ones(face_shards):
    """train.compile: one step of the compiled nets gives the eager step's losses and
    weights to float tolerance, and the state-dict keys stay those of the plain modules."""
    from pioneer.sampling import sample_latents

    config = tiny_config(face_shards, precision="fp32")
    g = torch.Generator().manual_seed(0)
    z = {tag: sample_latents(4, 32, g) for tag in ("z_encoder", "z_decoder0", "z_decoder1")}
    (eager, a), (compiled, b) = _one_step(config, True, z), _one_step(config, True, z, True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert list(compiled.state_dict()["encoder"]) == list(eager.state_dict()["encoder"])
    for p, q in zip(eager.decoder.parameters(), compiled.decoder.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
