"""Every option of a run, defined once.

A run is described by one frozen `Config`. The CLI (`--set loss.recon_weight=20`), JSON
checkpoints and, later, Tune search spaces all address the same dotted names; the schedule
is addressed by phase index (`schedule.3.lr=0.002`). Presets live at the bottom.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

# The 4,000 bundled CelebA faces (non-commercial research use only, see data/celeba/SOURCE.md):
# the JPEGs with their attribute file, and the same faces prepared as Parquet shards (4-32 px).
BUNDLED_CELEBA = Path(__file__).resolve().parent.parent / "data" / "celeba"
BUNDLED_FACES = BUNDLED_CELEBA / "prepared"

# Channels per resolution in the paper's architecture, 4x4 first (supplement A).
PAPER_CHANNELS = (512, 512, 512, 512, 256, 128, 64, 32, 16)


class ConfigError(ValueError):
    """A bad option: unknown key, wrong type or an inconsistent value."""


@dataclass(frozen=True)
class ModelConfig:
    latent_size: int = 512  # dimension of z; codes live on the unit sphere in R^latent_size
    channels: tuple[int, ...] = PAPER_CHANNELS[:7]  # conv width per resolution, 4x4 first
    mode: Literal["balanced", "baseline"] = "balanced"  # balanced: SN in both nets (Sec. 3.2)
    # Spectral norm on the 1x1 to_rgb/from_rgb too. Off as in the official code: with it on,
    # the signal cannot grow past the biases and training collapsed at 8x8 here.
    rgb_spectral_norm: bool = False


@dataclass(frozen=True)
class LossConfig:
    # Scale: 10x the official code's (KL x0.1, L1 x1, z-cos x100), so the KL terms enter
    # with weight 1 and the margin is in the paper's units (0.2 / 0.4 / 0.6 nats of KL gap).
    kl_weight: float = 1.0  # weight of the KL terms in both losses (Eq. 2, 5)
    recon_weight: float = 10.0  # lambda_X, on the per-pixel mean L1 in [-1, 1] units (Eq. 3)
    latent_weight: float = 1000.0  # lambda_Z, on the batch mean of 1 - cos(z, phi(theta(z)))


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # seeds initial weights, data order, flips and latents
    decoder_steps: int = 2  # decoder updates per encoder update (official code: 2)
    # The first decoder update reuses the encoder step's theta(z) (same z, graph kept): one
    # decoder forward fewer per step (~5% faster in bf16). Off (default, as the official
    # code): each update draws its own z, until a quality comparison shows sharing is free.
    share_fake: bool = False
    adam_betas: tuple[float, float] = (0.0, 0.99)  # paper Sec. 4
    adam_eps: float = 1e-8
    ema_halflife_images: float = 10_000.0  # half-life of the decoder EMA, in images seen
    ema_rampup: float = 0.05  # early on, half-life <= ema_rampup * images seen (0: off)
    # Forward-pass precision: bf16 autocast, fp32, or auto (bf16 where the device has native
    # bf16: AVX512-BF16/AMX CPUs, most GPUs). Weights, EMA, SN and losses stay fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True  # NHWC memory format for the conv nets
    # torch.compile the encoder and decoder: +8% img/s at 32 px on a 2-core CPU (bf16), for
    # about a minute of compilation per phase and fade/stable switch: for long runs.
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    threads: int = 0  # torch intra-op threads per worker (0: cores / workers)
    report_images: int = 4_000  # report metrics every this many images seen
    # s3:// run dirs: metrics and TensorBoard files go up at every checkpoint and at least
    # this often in between (a resume drops lines after its checkpoint anyway).
    sync_seconds: float = 60.0
    # Collapse guard (Sec. 3.1, Fig. 3): an encoder overpowering the decoder shows as a KL gap
    # running away (or non-finite losses); roll back to the last good checkpoint and remedy.
    guard_gap: float = 3.0  # |KL gap| bound in nats (0: guard off, non-finite losses stop)
    guard_images: int = 8_000  # ... that the gap must stay beyond for this many images
    guard_remedy: Literal["lr", "margin", "reseed"] = "lr"  # what changes after a rollback
    guard_lr_factor: float = 0.5  # remedy lr: both learning rates times this, per rollback
    guard_margin_step: float = 0.2  # remedy margin: the Eq. 5 margin plus this, per rollback
    guard_rollbacks: int = 3  # give up after this many rollbacks
    eval_every_images: int = 0  # run eval_metrics (rank 0) every this many images (0: off)
    eval_metrics: tuple[str, ...] = ("psnr", "ssim", "ms_swd")  # names as in `pioneer eval`
    eval_images: int = 1_000  # N for periodic FID / MS-SWD (samples and training images)
    checkpoint_images: int = 50_000  # checkpoint every this many images (and at phase ends)
    keep_checkpoints: int = 3  # checkpoints kept in the run dir (latest ones)
    # Also keep the best checkpoint by this held-out figure among those at the latest
    # checkpoint's resolution (figures at different resolutions do not compare); "": off.
    keep_best: str = "heldout_psnr_ema"
    keep_best_mode: Literal["max", "min"] = "max"  # max: higher is better
    grid_size: int = 8  # samples / reconstructions per grid row
    grid_rows: int = 4  # rows of samples in the sample grid


@dataclass(frozen=True)
class DataConfig:
    # A prepared dataset (`pioneer prepare` output: local dir or s3://bucket/prefix) or a
    # local image folder (jpg/png/webp, recursive, decoded in memory at the start).
    path: str = str(BUNDLED_FACES)
    crop: Literal["face", "center", "none"] = "face"  # image folders only; prepare fixes it
    holdout: int = 400  # last N images (sorted by id) never trained on
    flip: bool = True  # random horizontal flips
    shuffle_window_mb: float = 512  # per worker: shuffle within windows of this many MB of pixels


@dataclass(frozen=True)
class Phase:
    """One resolution of progressive growing; progress is counted in images seen."""

    resolution: int  # output side in pixels: 4, 8, 16, ...
    fade_images: int  # images over which the new block fades in (alpha 0 -> 1)
    stable_images: int  # images trained at alpha = 1 after the fade
    batch: int  # global batch size (split across workers)
    lr: float  # Adam learning rate of both networks
    margin: float | None = None  # Eq. 5 bound M on the KL gap; None: no hinge (Eq. 1)
    # Images into this phase before its margin applies; until then the previous phase's
    # margin does (none for the first). Lets a sweep place the switch-on (or the raise)
    # anywhere inside a phase rather than only at phase boundaries.
    margin_after_images: int = 0

    @property
    def images(self) -> int:
        return self.fade_images + self.stable_images


@dataclass(frozen=True)
class Config:
    name: str = "default"  # run name: runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: tuple[Phase, ...] = ()  # one record per resolution, 4x4 first

    def __post_init__(self) -> None:
        validate(self)


def validate(config: Config) -> None:
    """Reject inconsistent configs before any work starts."""
    if not config.schedule:
        raise ConfigError("schedule is empty: give at least one phase")
    if len(config.schedule) > len(config.model.channels):
        raise ConfigError(
            f"schedule has {len(config.schedule)} phases but model.channels only "
            f"{len(config.model.channels)} widths"
        )
    for index, phase in enumerate(config.schedule):
        if phase.resolution != 4 * 2**index:
            raise ConfigError(
                f"schedule.{index}.resolution must be {4 * 2**index}, got {phase.resolution}"
            )
        if phase.fade_images < 0 or phase.stable_images < 0 or phase.images == 0:
            raise ConfigError(f"schedule.{index}: fade/stable images must be >= 0, sum > 0")
        if index == 0 and phase.fade_images:
            raise ConfigError("schedule.0.fade_images must be 0: nothing to fade in at 4x4")
        if phase.batch < 1 or phase.lr <= 0:
            raise ConfigError(f"schedule.{index}: batch must be >= 1 and lr > 0")
        if phase.margin is not None and phase.margin < 0:
            raise ConfigError(f"schedule.{index}.margin must be >= 0 or None")
        if not 0 <= phase.margin_after_images <= phase.images:
            raise ConfigError(
                f"schedule.{index}.margin_after_images must be in [0, {phase.images}] "
                "(the phase's images)"
            )
    if min(config.model.channels) < 1 or config.model.latent_size < 1:
        raise ConfigError("model.channels and model.latent_size must be positive")
    if config.model.mode not in ("balanced", "baseline"):
        raise ConfigError(f"model.mode must be balanced or baseline, got {config.model.mode!r}")
    if config.train.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(
            f"train.precision must be auto, fp32 or bf16, got {config.train.precision!r}"
        )
    if config.data.crop not in ("face", "center", "none"):
        raise ConfigError(f"data.crop must be face, center or none, got {config.data.crop!r}")
    if config.train.decoder_steps < 1:
        raise ConfigError("train.decoder_steps must be >= 1")
    if config.train.ema_halflife_images <= 0:
        raise ConfigError("train.ema_halflife_images must be > 0")
    t = config.train
    if t.guard_gap < 0 or t.guard_images < 0 or t.guard_rollbacks < 0:
        raise ConfigError("train.guard_gap, guard_images and guard_rollbacks must be >= 0")
    if t.guard_remedy not in ("lr", "margin", "reseed"):
        raise ConfigError(
            f"train.guard_remedy must be lr, margin or reseed, got {t.guard_remedy!r}"
        )
    if not 0 < t.guard_lr_factor < 1 or t.guard_margin_step <= 0:
        raise ConfigError("train.guard_lr_factor must be in (0, 1) and guard_margin_step > 0")
    if t.sync_seconds < 0:
        raise ConfigError("train.sync_seconds must be >= 0")
    if t.keep_best_mode not in ("max", "min"):
        raise ConfigError(f"train.keep_best_mode must be max or min, got {t.keep_best_mode!r}")
    if config.train.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints must be >= 1 (--keep)")
    if config.train.eval_every_images < 0 or config.train.eval_images < 2:
        raise ConfigError("train.eval_every_images must be >= 0 and train.eval_images >= 2")


# Dotted overrides and JSON.


def to_dict(config: Config) -> dict[str, Any]:
    """Plain JSON form (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2)


def with_data(config: Config, path: str) -> Config:
    """The config reading `path` (a local path, made absolute, or an s3:// URI)."""
    path = path if "://" in path else str(Path(path).resolve())
    return replace(config, data=replace(config.data, path=path))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `dotted.key=value` strings; values are parsed as JSON, else taken as strings."""
    data = to_dict(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        _set_dotted(data, key.strip(), _parse_value(raw.strip()), key)
    return from_dict(data)


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set_dotted(data: Any, key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    if isinstance(data, list):
        indices = _indices(head, len(data), full_key)
        if len(indices) > 1 or not head.isdigit():  # schedule.*.lr, schedule.4-6.margin
            for index in indices:
                _set_dotted(data, f"{index}.{rest}" if rest else str(index), value, full_key)
            return
        slot: Any = indices[0]
    elif isinstance(data, dict):
        if head not in data:
            known = ", ".join(sorted(data))
            raise ConfigError(f"unknown key {full_key!r}: {head!r} is not one of {known}")
        slot = head
    else:
        raise ConfigError(f"unknown key {full_key!r}: {head!r} has no sub-keys")
    if rest:
        _set_dotted(data[slot], rest, value, full_key)
    else:
        data[slot] = value


def _indices(head: str, length: int, full_key: str) -> list[int]:
    """A list index in a dotted key: N, * (every one), A-B (inclusive) or A- (A to the end)."""
    if head == "*":
        return list(range(length))
    first, dash, last = head.partition("-")
    if first.isdigit() and (not dash or last == "" or last.isdigit()):
        low = int(first)
        high = int(last) if last else (length - 1 if dash else low)
        if low <= high < length:
            return list(range(low, high + 1))
    raise ConfigError(
        f"unknown key {full_key!r}: index {head!r} out of range 0-{length - 1} (N, A-B, A- or *)"
    )


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key {where + sorted(unknown)[0]!r}")
    kwargs = {}
    for name in names & set(data):
        kwargs[name] = _coerce(hints[name], data[name], where + name)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {error}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
        return tuple(
            _coerce(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args, value, strict=False))
        )
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported option type {hint!r}")  # pragma: no cover


# Presets.


def _phases(
    resolutions: int, images: int, batch: int, lr: float, margin: float | None = None
) -> list[Phase]:
    """Equal phases up to 4 * 2**(resolutions-1): the first half of each is the fade-in."""
    out = [Phase(4, 0, images, batch, lr, margin)]
    for index in range(1, resolutions):
        out.append(Phase(4 * 2**index, images // 2, images - images // 2, batch, lr, margin))
    return out


def _celebahq256() -> Config:
    # The paper (Sec. 4, supplement A): 2.4M images per phase up to 32x32, 3.5-6.2M at 64 and
    # 128, margin 0.2 after the 64x64 pre-training, 0.4 with lr 0.002 from 256 on; batch
    # halving from 64 to 16 at 256x256.
    million = 1_000_000
    early = [
        replace(p, batch=b)
        for p, b in zip(_phases(4, 2_400_000, 64, 0.001), (64, 64, 64, 32), strict=False)
    ]
    return Config(
        name="celebahq256",
        model=ModelConfig(channels=PAPER_CHANNELS[:7]),
        train=TrainConfig(ema_halflife_images=10_000, checkpoint_images=500_000),
        data=DataConfig(crop="center"),
        schedule=(
            *early,
            Phase(64, 1_200_000, 2_300_000, 32, 0.001),
            Phase(128, 1_200_000, 2 * million + 800_000, 32, 0.001, margin=0.2),
            Phase(256, 1_200_000, 6 * million, 16, 0.002, margin=0.4),
        ),
    )


def _celeba64() -> Config:
    # An overnight CPU run on the bundled faces: 4x4 -> 64x64 at reduced widths. The bundled
    # shards stop at 32 px, so this reads the bundled JPEGs (or --data a prepared 64 px set).
    return Config(
        name="celeba64",
        model=ModelConfig(channels=(128, 128, 128, 128, 64)),
        data=DataConfig(path=str(BUNDLED_CELEBA / "images")),
        train=TrainConfig(ema_halflife_images=10_000),
        schedule=(
            *_phases(4, 200_000, 32, 0.001),
            Phase(64, 200_000, 600_000, 32, 0.001, margin=0.2),
        ),
    )


def _default() -> Config:
    # `make train`: under 30 minutes on 2 CPU cores (measured: ~300 / 160 / 100 / 48 img/s at
    # 4 / 8 / 16 / 32 px). Held-out PSNR plateaus within ~15k images at 8 and 16 px, so the
    # low resolutions are short and most of the budget goes to the 32x32 phase.
    return Config(
        name="default",
        model=ModelConfig(channels=(128, 128, 64, 64)),
        train=TrainConfig(ema_halflife_images=5_000, checkpoint_images=25_000),
        schedule=(
            Phase(4, 0, 15_000, 32, 0.001),
            Phase(8, 6_000, 14_000, 32, 0.001),
            Phase(16, 10_000, 15_000, 32, 0.001),
            Phase(32, 12_000, 38_000, 32, 0.001),
        ),
    )


def _smoke() -> Config:
    # Seconds on a CPU: tiny widths, 4x4 -> 16x16, for tests and quick checks.
    return Config(
        name="smoke",
        model=ModelConfig(latent_size=32, channels=(16, 16, 8)),
        train=TrainConfig(
            ema_halflife_images=200,
            report_images=64,
            checkpoint_images=256,
            precision="fp32",
            grid_size=4,
            grid_rows=2,
        ),
        data=DataConfig(holdout=16),
        schedule=(
            Phase(4, 0, 128, 16, 0.002),
            Phase(8, 64, 64, 16, 0.002),
            Phase(16, 64, 64, 8, 0.002, margin=0.2),
        ),
    )


PRESETS = {
    "default": _default,
    "smoke": _smoke,
    "celeba64": _celeba64,
    "celebahq256": _celebahq256,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
