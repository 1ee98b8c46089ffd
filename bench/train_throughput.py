"""Training speed at the paper's widths: precision, memory format, shared passes, compile.

    python bench/train_throughput.py [--resolutions 32,64] [--steps 2] [--rows ...]

One training step (`pioneer.training.train_step`: one encoder update, two decoder updates)
at batch 32, alpha 1, on the paper's architecture (512 channels up to 32 px, 256 at 64 px),
timed per row after one warm-up step (two for compiled rows). Rows:

    fp32-nchw-unshared   fp32, NCHW, no pass shared: the official code's arithmetic
    fp32-nchw            fp32, NCHW, the encoder step's theta(z) reused by decoder step 1
    fp32-cl              fp32, channels_last
    bf16-cl-unshared     bf16 autocast, channels_last, no pass shared (the default on
                         bf16 hardware)
    bf16-cl              the same with theta(z) shared (train.share_fake=true)
    bf16-cl-compiled     the same with torch.compile on both networks

FLOPs per training image are counted (FlopCounterMode) for each step of the algorithm; the
conv peak is the fastest 3x3 conv forward+backward among the network's own shapes at each
precision and layout, measured in this same run. Each row prints img/s, achieved GFLOP/s,
its share of the peak for its precision, and its ratio to the first row; the last column
compares with the paper's official code on this CPU (0.71 img/s at 32 px, 0.24 at 64 px,
measured for issue 8 with the same batch, widths and steps; that code is not bundled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pioneer.config import PAPER_CHANNELS, Config, Phase, preset  # noqa: E402
from pioneer.data import seed_of  # noqa: E402
from pioneer.precision import autocast  # noqa: E402
from pioneer.sampling import sample_latents  # noqa: E402
from pioneer.schedule import progress_at, total_images  # noqa: E402
from pioneer.training import build, compile_networks, train_step  # noqa: E402

BATCH = 32
PAPER_CODE_IMG_S = {32: 0.71, 64: 0.24}  # official implementation, this CPU (issue 8)
ROWS = {  # name: (precision, channels_last, share_fake, compiled)
    "fp32-nchw-unshared": ("fp32", False, False, False),
    "fp32-nchw": ("fp32", False, True, False),
    "fp32-cl": ("fp32", True, True, False),
    "bf16-cl-unshared": ("bf16", True, False, False),
    "bf16-cl": ("bf16", True, True, False),
    "bf16-cl-compiled": ("bf16", True, True, True),
}


def paper_config(resolution: int, precision: str, channels_last: bool, share: bool) -> Config:
    phases = resolution.bit_length() - 2  # 32 px -> 4 phases
    base = preset("celebahq256")
    schedule = tuple(Phase(4 * 2**i, 0, BATCH, BATCH, 0.001) for i in range(phases))
    return replace(
        base,
        model=replace(base.model, channels=PAPER_CHANNELS[:phases]),
        train=replace(
            base.train, precision=precision, channels_last=channels_last, share_fake=share
        ),
        schedule=schedule,
    )


def step_runner(config: Config, compiled: bool):
    """A closure running one training step on fixed random data, the data, the networks."""
    device = torch.device("cpu")
    nets = build(config, device)
    if compiled:
        compile_networks(nets)  # as train.compile does
    now = progress_at(config.schedule, total_images(config.schedule) - 1)  # alpha 1
    layout = torch.channels_last if config.train.channels_last else torch.contiguous_format
    x = (torch.rand(BATCH, 3, now.resolution, now.resolution) * 2 - 1).contiguous(
        memory_format=layout
    )
    context = autocast(config.train.precision, device)

    def latents(tag: str, n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_of(tag))
        return sample_latents(n, config.model.latent_size, generator)

    def run(batch: torch.Tensor = x):
        train_step(nets, nets.encoder, nets.decoder, batch, now, config, latents, context)

    return run, x, nets


def flops_per_image(config: Config) -> tuple[float, list[float]]:
    """FLOPs of one training step per image, in total and per update: the encoder's (with
    the theta(z) it needs), then each decoder update's. Counted on a batch of 2 (they scale
    with it); an update's count is read when its optimizer steps."""
    run, x, nets = step_runner(config, compiled=False)
    counter = FlopCounterMode(display=False)
    marks: list[int] = []
    for optimizer in (nets.optimizer_encoder, nets.optimizer_decoder):

        def step(*args, original=optimizer.step, **kwargs):
            marks.append(counter.get_total_flops())
            return original(*args, **kwargs)

        optimizer.step = step  # this instance only
    with counter:
        run(x[:2])
    updates = [after - before for before, after in zip([0, *marks[:-1]], marks, strict=True)]
    return counter.get_total_flops() / 2, [u / 2 for u in updates]


def conv_peak(resolution: int, precision: str, channels_last: bool, backward: bool = True) -> float:
    """GFLOP/s of the fastest 3x3 conv forward (+backward) among the network's shapes."""
    best = 0.0
    context = autocast(precision, torch.device("cpu"))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    grad = torch.enable_grad if backward else torch.inference_mode
    for phase in range(resolution.bit_length() - 2):
        side, width = 4 * 2**phase, PAPER_CHANNELS[phase]
        conv = torch.nn.Conv2d(width, width, 3, padding=1).to(memory_format=layout)
        x = torch.randn(BATCH, width, side, side).contiguous(memory_format=layout)
        x.requires_grad_(backward)

        def run(conv=conv, x=x):
            with grad(), context:
                y = conv(x)
            if backward:
                y.float().sum().backward()

        counter = FlopCounterMode(display=False)
        with counter:
            run()
        run()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 1.5:
            run()
            count += 1
        best = max(best, counter.get_total_flops() * count / (time.perf_counter() - start) / 1e9)
    return best


def print_peaks(peaks: dict[tuple[str, bool], float], label: str) -> None:
    for (precision, channels_last), peak in peaks.items():
        layout = "channels_last" if channels_last else "NCHW"
        print(f"  {label} {precision} {layout}: {peak:.0f} GFLOP/s")


def save(results: list[dict], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="32,64")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    results = []
    for resolution in (int(r) for r in args.resolutions.split(",")):
        peaks = {}
        widths = PAPER_CHANNELS[: resolution.bit_length() - 2]
        print(f"\n{resolution} px, batch {BATCH}, widths {widths}, {args.threads} threads")
        print(f"  {'row':20s} {'GFLOP/img':>9} {'img/s':>7} {'GFLOP/s':>8} {'of peak':>8} "
              f"{'x row 1':>8} {'x paper code':>12}   GFLOP/img by update: encoder + "
              "decoder steps", flush=True)  # fmt: skip
        first = None
        for name in rows:
            precision, channels_last, share, compiled = ROWS[name]
            config = paper_config(resolution, precision, channels_last, share)
            key = (precision, channels_last)
            if key not in peaks:
                peaks[key] = conv_peak(resolution, precision, channels_last)
            flops, by_update = flops_per_image(config)
            run, _, _ = step_runner(config, compiled)
            started = time.perf_counter()
            for _ in range(2 if compiled else 1):
                run()  # warm-up (and compilation)
            warm_s = time.perf_counter() - started
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            rate = BATCH / statistics.median(times)
            first = first or rate
            achieved = rate * flops / 1e9
            row = {
                "resolution": resolution,
                "row": name,
                "gflop_per_image": flops / 1e9,
                "gflop_per_image_by_update": [f / 1e9 for f in by_update],  # E, D1, D2
                "img_per_s": rate,
                "gflop_per_s": achieved,
                "conv_peak_gflop_per_s": peaks[key],
                "of_peak": achieved / peaks[key],
                "vs_first_row": rate / first,
                "vs_paper_code": rate / PAPER_CODE_IMG_S.get(resolution, float("nan")),
                "warm_up_s": warm_s,
            }
            results.append(row)
            print(f"  {name:20s} {row['gflop_per_image']:9.1f} {rate:7.3f} {achieved:8.1f} "
                  f"{row['of_peak']:8.0%} {row['vs_first_row']:8.2f} "
                  f"{row['vs_paper_code']:12.2f}   "
                  + " + ".join(f"{f:.1f}" for f in row["gflop_per_image_by_update"]),
                  flush=True)  # fmt: skip
        print_peaks(peaks, "conv peak")
    save(results, args.out)


if __name__ == "__main__":
    main()
