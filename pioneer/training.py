"""The Balanced PIONEER training loop, free of Ray.

`train(config, session)` runs on every worker. The session says who this worker is, where
to resume from, and what to do with reports and checkpoints: `LocalSession` here for a
plain process, `pioneer.ray_train.RaySession` under Ray Train. When torch.distributed is
initialised (Ray Train does it), each network is wrapped in DDP for its own update and
called unwrapped while frozen, so no gradients are reduced for a network that is not
being trained.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pioneer import checkpoint, storage
from pioneer.config import Config
from pioneer.data import seed_of, to_unit_range
from pioneer.dataset import Dataset, Stream, open_dataset
from pioneer.ema import copy_block, ema_beta, update_ema
from pioneer.images import atomic_write_text, grid_image, save_png
from pioneer.losses import decoder_loss, encoder_loss, kl_n01, latent_cosine, reconstruction_l1
from pioneer.model import Decoder, Encoder, build_networks, power_iterate
from pioneer.precision import autocast as precision_autocast
from pioneer.precision import resolve as resolve_precision
from pioneer.quality import psnr
from pioneer.rundir import RunDir
from pioneer.sampling import sample_latents
from pioneer.schedule import Progress, progress_at, total_images


class Session(Protocol):
    rank: int  # this worker's global rank
    world_size: int  # number of workers
    local_world_size: int  # workers on this machine (they share its cores)
    run_dir: str | Path  # the run's home: a local folder or s3://bucket/prefix/name

    def restore(self) -> str | Path | None:
        """A checkpoint directory to resume from, if any."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Called by every rank the same number of times; rank 0 may pass a checkpoint."""


@dataclass
class LocalSession:
    """One plain process: checkpoints go straight into the run dir (renamed, or uploaded)."""

    run_dir: str | Path
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)

    def restore(self) -> str | None:
        found = checkpoint.list_checkpoints(self.run_dir)
        return found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.history.append(metrics)
        if checkpoint_dir is None:
            return
        target = storage.join(self.run_dir, checkpoint_dir.name)
        if storage.is_remote(target):
            storage.delete_tree(target)
            storage.copy_tree(checkpoint_dir, target)  # S3 shows each file only once whole
            shutil.rmtree(checkpoint_dir)
        else:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(checkpoint_dir, target)


@dataclass
class Networks:
    """Everything that a checkpoint holds besides the config."""

    encoder: Encoder
    decoder: Decoder
    decoder_ema: Decoder
    optimizer_encoder: torch.optim.Adam
    optimizer_decoder: torch.optim.Adam
    images_seen: int = 0  # training images consumed so far, all workers together
    ema_synced_phase: int = 0  # newest phase whose new block was copied into the EMA
    # Collapse-guard remedies in force (they survive rollbacks and resumes).
    guard: dict[str, float] = field(
        default_factory=lambda: {"rollbacks": 0, "lr_scale": 1.0, "margin_add": 0.0, "reseed": 0}
    )

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "decoder": self.decoder.state_dict(),
            "decoder_ema": self.decoder_ema.state_dict(),
            "optimizer_encoder": self.optimizer_encoder.state_dict(),
            "optimizer_decoder": self.optimizer_decoder.state_dict(),
            "images_seen": self.images_seen,
            "ema_synced_phase": self.ema_synced_phase,
            "guard": dict(self.guard),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        self.decoder_ema.load_state_dict(state["decoder_ema"])
        self.optimizer_encoder.load_state_dict(state["optimizer_encoder"])
        self.optimizer_decoder.load_state_dict(state["optimizer_decoder"])
        self.images_seen = int(state["images_seen"])
        self.ema_synced_phase = int(state["ema_synced_phase"])
        self.guard = dict(state.get("guard", self.guard))


def build(config: Config, device: torch.device) -> Networks:
    torch.manual_seed(seed_of(config.train.seed, "init"))  # identical weights on every rank
    encoder, decoder = build_networks(config.model)
    decoder_ema = Decoder(config.model)
    decoder_ema.load_state_dict(decoder.state_dict())
    decoder_ema.requires_grad_(False).eval()
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    for net in (encoder, decoder, decoder_ema):
        net.to(device=device, memory_format=memory_format)
    adam = dict(betas=config.train.adam_betas, eps=config.train.adam_eps, lr=config.schedule[0].lr)
    return Networks(
        encoder=encoder,
        decoder=decoder,
        decoder_ema=decoder_ema,
        optimizer_encoder=torch.optim.Adam(encoder.parameters(), **adam),
        optimizer_decoder=torch.optim.Adam(decoder.parameters(), **adam),
    )


def pick_device(config: Config) -> torch.device:
    if config.train.device == "cuda" or (
        config.train.device == "auto" and torch.cuda.is_available()
    ):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def blend_real(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """During a fade-in, real images blend the same way: alpha * x + (1 - alpha) * up(down(x))."""
    if alpha >= 1.0:
        return x
    coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    return alpha * x + (1.0 - alpha) * coarse


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def compile_networks(nets: Networks) -> None:
    """torch.compile both networks in place (state-dict keys unchanged). Each phase, fade
    or stable, and trainable or frozen call is its own graph: room for all of them."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    nets.encoder.compile()
    nets.decoder.compile()


def _ddp(module: nn.Module, device: torch.device) -> nn.Module:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return module
    # Unused parameters: blocks of later phases and the faded-out to_rgb/from_rgb.
    # Default buffer sync broadcasts rank 0's spectral-norm u/v on every forward.
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


@dataclass
class Outcome:
    summary: dict[str, Any]  # final images seen and held-out figures (rank 0)
    networks: Networks  # this rank's final state


def train(config: Config, session: Session) -> Outcome:
    """Run (or resume) training to the end of the schedule."""
    device = pick_device(config)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(config.train.threads or max(1, (cores or 1) // session.local_world_size))
    rank0 = session.rank == 0
    if config.train.eval_every_images:
        check_eval(config)  # unknown metrics or missing weights fail now, not hours in
    total = total_images(config.schedule)
    latent_size = config.model.latent_size
    precision = resolve_precision(config.train.precision, device)
    autocast = precision_autocast(precision, device)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format

    # Networks, optimizers and where to resume.
    nets = build(config, device)
    restored = session.restore()
    if restored is not None:
        nets.load_state_dict(checkpoint.load(restored, map_location=device).state)
    if config.train.compile:
        compile_networks(nets)
    encoder_ddp, decoder_ddp = _ddp(nets.encoder, device), _ddp(nets.decoder, device)

    # Data: each worker streams its own part; batches are a function of images seen.
    data = open_dataset(config.data, tuple(p.resolution for p in config.schedule))
    if data.crop != config.data.crop:  # a prepared dataset fixed its crop: checkpoints say so
        config = replace(config, data=replace(config.data, crop=data.crop))
    stream = Stream(
        data,
        config.train.seed,
        config.data.flip,
        session.rank,
        session.world_size,
        config.data.shuffle_window_mb,
    )
    grid_count = config.train.grid_size * config.train.grid_rows
    grid_generator = torch.Generator().manual_seed(seed_of(config.train.seed, "grid"))
    grid_latents = sample_latents(grid_count, latent_size, grid_generator, device)
    run = RunDir.at(session.run_dir)
    run_dir = run.local  # rank 0 writes here first; run.push copies to an s3:// run dir
    if rank0:
        run.start()
        _trim_metrics(run_dir / "metrics.jsonl", nets.images_seen)
        start = f"resuming at {nets.images_seen:,} images" if restored else "starting fresh"
        print(
            f"pioneer: {data.description}: {data.train_rows:,} training / "
            f"{data.holdout_rows:,} held-out ({data.skipped:,} skipped), "
            f"{session.world_size} worker(s), "
            f"{device.type}, {precision}; {start}",
            flush=True,
        )

    def latents(tag: str, n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(
            seed_of(config.train.seed, tag, nets.images_seen, session.rank, nets.guard["reseed"])
        )
        return sample_latents(n, latent_size, generator, device)

    eval_nets: dict[str, torch.nn.Module] = {}  # feature networks, loaded once
    board = _tensorboard(run_dir, nets.images_seen) if rank0 else None
    good = _snapshot(nets)  # the last state saved before any sign of collapse
    bad_since: int | None = None  # images seen when the KL gap first left the guard bound
    sums: dict[str, torch.Tensor] = {}
    steps_in_window, window_images, window_start = 0, 0, time.perf_counter()
    quality: dict[str, float] = {}  # held-out figures at the latest checkpoint
    pushed = time.monotonic()  # when metrics last went up to an s3:// run dir

    while nets.images_seen < total:
        now = _remedied(progress_at(config.schedule, nets.images_seen), nets.guard)
        phase, alpha, batch = now.phase, now.alpha, now.batch
        if phase > nets.ema_synced_phase:
            copy_block(nets.decoder_ema, nets.decoder, phase)
            nets.ema_synced_phase = phase
        set_lr(nets.optimizer_encoder, now.lr)
        set_lr(nets.optimizer_decoder, now.lr)

        # Fetch training data.
        x = stream.get(nets.images_seen, batch, now.resolution).to(device)
        x = blend_real(x, alpha).contiguous(memory_format=memory_format)

        step = train_step(nets, encoder_ddp, decoder_ddp, x, now, config, latents, autocast)

        # EMA.
        nets.images_seen += batch
        beta = ema_beta(
            nets.images_seen, batch, config.train.ema_halflife_images, config.train.ema_rampup
        )
        update_ema(nets.decoder_ema, nets.decoder, beta)

        for key, value in step.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float()
        steps_in_window += 1
        window_images += batch

        # Report (and checkpoint) on boundaries every rank computes alike.
        seen = nets.images_seen
        crossed = _crossed(seen, batch, config.train.report_images)
        phase_done = seen >= now.phase_end or seen >= total
        save = phase_done or _crossed(seen, batch, config.train.checkpoint_images)
        every = config.train.eval_every_images
        evaluate = every > 0 and (_crossed(seen, batch, every) or seen >= total)
        if not (crossed or save or evaluate):
            continue
        elapsed = time.perf_counter() - window_start
        metrics: dict[str, Any] = {
            "images_seen": seen,
            "phase": phase,
            "resolution": now.resolution,
            "alpha": round(alpha, 4),
            "lr": now.lr,
            "margin": now.margin,
            "ema_beta": beta,
            "images_per_s": window_images / max(elapsed, 1e-9),
            **{k: (v / steps_in_window).item() for k, v in sums.items()},
        }
        # Collapse guard: the same decision on every rank (figures averaged across ranks).
        gap, finite = _agreed(metrics["kl_gap"], all(math.isfinite(metrics[k]) for k in step))
        beyond = config.train.guard_gap > 0 and not abs(gap) <= config.train.guard_gap
        bad_since = (
            (bad_since if bad_since is not None else seen - window_images) if beyond else None
        )
        stuck = bad_since is not None and seen - bad_since >= config.train.guard_images
        if not finite and config.train.guard_gap == 0:
            raise FloatingPointError(
                f"training diverged at {seen:,} images (phase {phase}): non-finite loss "
                f"{ {k: metrics[k] for k in step} }"
            )
        if not finite or stuck:
            cause = "non-finite losses"
            if finite:
                bound, lasted = config.train.guard_gap, seen - bad_since
                cause = f"KL gap {gap:+.2f} beyond ±{bound} for {lasted:,} images"
            event = _roll_back(nets, good, config, cause, seen)
            if rank0:
                _trim_metrics(run_dir / "metrics.jsonl", nets.images_seen)
                with open(run_dir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(event) + "\n")
                print(f"pioneer: {event['message']}", flush=True)
                if board is not None:
                    board.add_scalar("guard/rollbacks", event["rollback"], seen)
                run.push("metrics.jsonl")
            session.report(event, None)
            bad_since, sums, steps_in_window, window_images = None, {}, 0, 0
            window_start = time.perf_counter()
            continue
        checkpoint_dir = None
        if save or evaluate:
            power_iterate(nets.decoder_ema, iterations=10)  # settle the EMA's sigmas, all ranks
        if save and bad_since is None:
            good = _snapshot(nets)  # every rank keeps the same rollback point
        if rank0:
            if evaluate:
                metrics.update(periodic_eval(nets, data, now, config, eval_nets))
            if save:
                quality = heldout_quality(nets, data, now)
                metrics.update(quality)
                if phase_done:
                    tags = [f"phase{phase}_{now.resolution}px"] + (
                        ["final"] if seen >= total else []
                    )
                    run.push(*write_grids(nets, data, grid_latents, now, config, run_dir, tags))
                attempt = int(nets.guard["rollbacks"])
                checkpoint_dir = checkpoint.save(
                    run_dir / ".staging" / checkpoint.checkpoint_name(seen, attempt),
                    config,
                    {**_progress(nets, config), "metrics": quality},
                    nets.state_dict(),
                )
            with open(run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
            _board_scalars(board, metrics)
            print(_progress_line(metrics, total), flush=True)
            # Metrics go up before the checkpoint they lead to: a resume trims any excess.
            if run.remote and (save or time.monotonic() - pushed > config.train.sync_seconds):
                board.flush()
                run.push("metrics.jsonl", "tensorboard")
                pushed = time.monotonic()
        session.report(metrics, checkpoint_dir)
        if rank0 and checkpoint_dir is not None:  # the session has stored it: prune
            t = config.train
            checkpoint.prune(run.uri, t.keep_checkpoints, t.keep_best, t.keep_best_mode)
        sums, steps_in_window, window_images = {}, 0, 0
        window_start = time.perf_counter()

    stream.close()
    if board is not None:
        board.close()

    # The end: held-out figures of the last checkpoint (computed now for a run that was
    # already finished when this process started; its final grids are already written).
    final = progress_at(config.schedule, nets.images_seen)
    summary = {"images_seen": nets.images_seen, "resolution": final.resolution}
    if rank0:
        summary.update(quality or heldout_quality(nets, data, final))
        t = config.train
        champion = checkpoint.best(run.uri, t.keep_best, t.keep_best_mode)
        summary["best_checkpoint"] = Path(champion).name if champion else None
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        run.push("metrics.jsonl", "tensorboard", "summary.json")
    return Outcome(summary, nets)


def train_step(
    nets: Networks,
    encoder_train: nn.Module,
    decoder_train: nn.Module,
    x: torch.Tensor,
    now: Progress,
    config: Config,
    latents: Callable[[str, int], torch.Tensor],
    autocast: AbstractContextManager,
) -> dict[str, torch.Tensor]:
    """One encoder update and `decoder_steps` decoder updates on real batch x (b, 3, R, R).

    encoder_train / decoder_train are the (possibly DDP-wrapped) nets used for their own
    update; while frozen, each net is called unwrapped. Returns detached loss terms.
    """
    phase, alpha, n = now.phase, now.alpha, x.shape[0]
    weights = config.loss
    share = config.train.share_fake

    # The encoder step's fake batch theta(z). Shared, it is built with its graph and reused
    # by the first decoder step: the decoder is not updated in between, so theta(z) is the
    # same tensor either way, and one decoder forward per step is saved.
    z_fake = latents("z_encoder", n)
    if share:
        nets.decoder.requires_grad_(True)
        with autocast:
            x_generated = decoder_train(z_fake, phase, alpha)
        x_fake = x_generated.detach()
    else:
        with torch.no_grad(), autocast:
            x_fake = nets.decoder(z_fake, phase, alpha)

    # Encoder step (Eq. 5): decoder frozen, the L1 gradient flows through it into phi.
    nets.encoder.requires_grad_(True)
    nets.decoder.requires_grad_(False)
    with autocast:
        codes = encoder_train(torch.cat([x, x_fake.to(x.dtype)]), phase, alpha)
        codes_real, codes_fake = codes[:n], codes[n:]
        x_reconstructed = nets.decoder(codes_real, phase, alpha)
    kl_real, kl_fake = kl_n01(codes_real), kl_n01(codes_fake)
    recon = reconstruction_l1(x, x_reconstructed)
    loss_e = encoder_loss(
        kl_real, kl_fake, recon, now.margin, weights.kl_weight, weights.recon_weight
    )
    nets.optimizer_encoder.zero_grad(set_to_none=True)
    loss_e.backward()
    nets.optimizer_encoder.step()

    # Decoder steps (Eq. 2): encoder frozen.
    nets.encoder.requires_grad_(False)
    nets.decoder.requires_grad_(True)
    for k in range(config.train.decoder_steps):
        if share and k == 0:
            z = z_fake
        else:
            z = latents(f"z_decoder{k}", n)
            with autocast:
                x_generated = decoder_train(z, phase, alpha)
        with autocast:
            codes_generated = nets.encoder(x_generated, phase, alpha)
        kl_generated = kl_n01(codes_generated)
        latent = latent_cosine(z, codes_generated)
        loss_d = decoder_loss(kl_generated, latent, weights.kl_weight, weights.latent_weight)
        nets.optimizer_decoder.zero_grad(set_to_none=True)
        loss_d.backward()
        nets.optimizer_decoder.step()
    nets.encoder.requires_grad_(True)

    terms = {
        "kl_real": kl_real,
        "kl_fake": kl_fake,
        "kl_gap": kl_real - kl_fake,
        "l1": recon,
        "z_cos": latent,
        "kl_generated": kl_generated,
        "loss_encoder": loss_e,
        "loss_decoder": loss_d,
    }
    return {key: value.detach() for key, value in terms.items()}


def _crossed(seen: int, batch: int, every: int) -> bool:
    """True when the last step passed a multiple of `every` images."""
    return every > 0 and (seen // every) > ((seen - batch) // every)


def _progress(nets: Networks, config: Config) -> dict[str, Any]:
    now = progress_at(config.schedule, nets.images_seen)
    return {
        "images_seen": nets.images_seen,
        "phase": now.phase,
        "alpha": now.alpha,
        "resolution": now.resolution,
        "total_images": total_images(config.schedule),
    }


def _trim_metrics(path: Path, images_seen: int) -> None:
    """On resume, drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["images_seen"] <= images_seen
    ]
    path.write_text("".join(line + "\n" for line in kept))


@contextmanager
def _evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode (spectral norm uses its stored u/v, no power iteration), then restore."""
    was_training = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, was_training, strict=True):
            module.train(mode)


def _tensorboard(run_dir: Path, images_seen: int):
    """TensorBoard event files in run_dir/tensorboard; a resumed run purges later steps."""
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=images_seen or None)


def _board_scalars(board, metrics: dict[str, Any]) -> None:
    """Every numeric figure of a report, grouped (kl/, loss/, heldout/, eval/, train/)."""
    if board is None:
        return
    step = metrics["images_seen"]
    for key, value in metrics.items():
        if key == "images_seen" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        group = next(
            (g for p, g in (("kl_", "kl"), ("loss_", "loss"), ("heldout_", "heldout"),
                            ("eval_", "eval")) if key.startswith(p)),
            "train",
        )  # fmt: skip
        board.add_scalar(f"{group}/{key}", value, step)
    board.flush()


class CollapseError(RuntimeError):
    """Training collapsed more often than train.guard_rollbacks allows."""


def _snapshot(nets: Networks) -> dict[str, Any]:
    return copy.deepcopy(nets.state_dict())


def _remedied(now: Progress, guard: dict[str, float]) -> Progress:
    """The schedule's phase with the guard's remedies applied (lr scale, added margin)."""
    margin = now.margin
    if guard["margin_add"]:
        margin = (margin or 0.0) + guard["margin_add"]
    return dataclasses.replace(now, lr=now.lr * guard["lr_scale"], margin=margin)


def _agreed(gap: float, finite: bool) -> tuple[float, bool]:
    """The KL gap averaged over ranks, and whether every rank's losses were finite."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return gap, finite
    values = torch.tensor([gap if math.isfinite(gap) else 0.0, 0.0 if finite else 1.0])
    if dist.get_backend() == "nccl":
        values = values.cuda()
    dist.all_reduce(values)
    return values[0].item() / dist.get_world_size(), values[1].item() == 0


def _roll_back(
    nets: Networks, good: dict[str, Any], config: Config, cause: str, seen: int
) -> dict[str, Any]:
    """Restore the last good state, apply one more remedy, and describe the event."""
    t = config.train
    guard = dict(nets.guard)
    if guard["rollbacks"] >= t.guard_rollbacks:
        raise CollapseError(
            f"training collapsed at {seen:,} images ({cause}) after {int(guard['rollbacks'])} "
            f"rollback(s) with remedy {t.guard_remedy!r}; giving up (train.guard_rollbacks="
            f"{t.guard_rollbacks}). Try a larger margin or a lower learning rate."
        )
    guard["rollbacks"] += 1
    if t.guard_remedy == "lr":
        guard["lr_scale"] *= t.guard_lr_factor
    elif t.guard_remedy == "margin":
        guard["margin_add"] += t.guard_margin_step
    else:
        guard["reseed"] += 1
    nets.load_state_dict(copy.deepcopy(good))
    nets.guard = guard
    remedy = {
        "lr": f"learning rates x{guard['lr_scale']:.3g}",
        "margin": f"margin +{guard['margin_add']:.3g}",
        "reseed": f"new latent seed #{int(guard['reseed'])}",
    }[t.guard_remedy]
    return {
        "event": "collapse_rollback",
        "images_seen": nets.images_seen,
        "collapsed_at": seen,
        "cause": cause,
        "remedy": remedy,
        "rollback": int(guard["rollbacks"]),
        "message": (
            f"collapse at {seen:,} images ({cause}): rolled back to {nets.images_seen:,} images, "
            f"{remedy} (rollback {int(guard['rollbacks'])} of {t.guard_rollbacks})"
        ),
    }


class _TrainingSubject:
    """The nets being trained, as an evaluation subject (encoder + EMA decoder)."""

    name = "model"

    def __init__(self, nets: Networks, now: Progress, latent_size: int):
        self.nets, self.now = nets, now
        self.resolution, self.latent_size = now.resolution, latent_size

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with _evaluating(self.nets.encoder):
            return self.nets.encoder(x, self.now.phase, self.now.alpha).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z.float(), dim=1)
        return self.nets.decoder_ema(z, self.now.phase, self.now.alpha).float().clamp(-1, 1)


def check_eval(config: Config) -> None:
    """Refuse unknown periodic metrics, and metrics whose weights are not on this machine."""
    from pioneer import features
    from pioneer.evaluation import EvalOptions

    EvalOptions(metrics=config.train.eval_metrics).validate()
    if "fid" in config.train.eval_metrics:
        features.find_weights(features.INCEPTION)
    if {"lpips", "ppl"} & set(config.train.eval_metrics):
        features.find_weights(features.LPIPS_BACKBONES[EvalOptions.lpips_net])


def periodic_eval(
    nets: Networks, data: Dataset, now: Progress, config: Config, cache: dict
) -> dict[str, float]:
    """train.eval_metrics on the current nets at the current resolution, as eval_* figures."""
    from pioneer.evaluation import EvalOptions, Evaluator

    n = config.train.eval_images
    device = next(nets.encoder.parameters()).device
    options = EvalOptions(
        metrics=config.train.eval_metrics,
        images=n,
        probe_images=n,
        ppl_samples=n,
        device=device.type,
    )
    ev = Evaluator.from_dataset(data, now.resolution, options, **cache)
    report = ev.run([_TrainingSubject(nets, now, config.model.latent_size)])
    cache.update(inception=ev.inception_net, lpips=ev.lpips_net)
    if report["errors"]:
        raise RuntimeError(f"periodic evaluation failed: {report['errors']}")
    figures = {
        f"eval_{k}": v for k, v in report["subjects"]["model"].items() if not _per_attribute(k)
    }
    figures.update({f"eval_{k}": v for k, v in report["reference"].items()})
    return figures


def _per_attribute(key: str) -> bool:
    return key.startswith("probe_") and key not in ("probe_accuracy", "probe_majority")


@torch.no_grad()
def heldout_quality(nets: Networks, data: Dataset, now: Progress) -> dict[str, float]:
    """PSNR of held-out reconstructions (EMA and live decoder) against the mean face."""
    device = next(nets.encoder.parameters()).device
    x = to_unit_range(data.holdout(now.resolution))
    ema, live = [], []
    with _evaluating(nets.encoder, nets.decoder):
        for chunk in x.split(256):
            codes = nets.encoder(chunk.to(device), now.phase, now.alpha)
            ema.append(nets.decoder_ema(codes, now.phase, now.alpha).float().cpu())
            live.append(nets.decoder(codes, now.phase, now.alpha).float().cpu())
    return {
        "heldout_psnr_ema": psnr(x, torch.cat(ema)),
        "heldout_psnr_live": psnr(x, torch.cat(live)),
        "heldout_psnr_mean_face": psnr(x, data.mean_face(now.resolution).expand_as(x)),
    }


@torch.no_grad()
def write_grids(
    nets: Networks,
    data: Dataset,
    latents: torch.Tensor,
    now: Progress,
    config: Config,
    run_dir: Path,
    tags: list[str],
) -> list[str]:
    """Samples from fixed latents, and fixed held-out faces above their EMA reconstructions.
    Returns the names of the files written."""
    row = config.train.grid_size
    real = to_unit_range(data.holdout(now.resolution)[:row])
    device = next(nets.encoder.parameters()).device
    with _evaluating(nets.encoder):
        codes = nets.encoder(real.to(device), now.phase, now.alpha)
    samples = grid_image(nets.decoder_ema(latents, now.phase, now.alpha), nrow=row)
    reconstructed = nets.decoder_ema(codes, now.phase, now.alpha).float().cpu()
    pairs = grid_image(torch.cat([real, reconstructed]), nrow=row)
    written = []
    for tag in tags:
        written += [f"samples_{tag}.png", f"reconstructions_{tag}.png"]
        save_png(samples, run_dir / written[-2])
        save_png(pairs, run_dir / written[-1])
    return written


def _progress_line(m: dict[str, Any], total: int) -> str:
    line = (
        f"[{100 * m['images_seen'] / total:5.1f}%] {m['images_seen']:>9,}/{total:,} img | "
        f"phase {m['phase']} {m['resolution']}px a={m['alpha']:.2f} | "
        f"{m['images_per_s']:6.1f} img/s | KL real {m['kl_real']:.3f} fake {m['kl_fake']:.3f} "
        f"gap {m['kl_gap']:+.3f} | L1 {m['l1']:.4f} | 1-cos {m['z_cos']:.4f}"
    )
    shown = [k for k in m if k.startswith("eval_") and k.count("_") <= 2][:5]
    if shown:
        line += " | eval " + " ".join(f"{k[5:]} {m[k]:.4g}" for k in shown)
    if "heldout_psnr_ema" in m:
        line += (
            f" | held-out PSNR ema {m['heldout_psnr_ema']:.2f} live {m['heldout_psnr_live']:.2f}"
            f" mean-face {m['heldout_psnr_mean_face']:.2f} dB"
        )
    return line
