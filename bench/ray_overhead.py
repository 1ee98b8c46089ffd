"""Ray Train overhead: the training loop as a plain process vs Ray Train with 1 and 2 workers.

    python bench/ray_overhead.py [--resolutions 32,64] [--images 3840,1536]

Every mode runs the same library loop (`pioneer.training.train`) on the bundled faces at the
default preset's widths, with the measured resolution as the last phase (earlier phases
one step each). img/s is the median of the report windows at that resolution after the
first (warm-up). FLOPs per training image are counted with FlopCounterMode on one step;
the conv peak is the fastest 3x3 conv forward+backward among the network's own shapes,
measured in this same run, so utilisation is a ratio of two figures from one machine state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pioneer.config import BUNDLED_CELEBA, Config, Phase, preset  # noqa: E402
from pioneer.data import seed_of  # noqa: E402
from pioneer.sampling import sample_latents  # noqa: E402
from pioneer.schedule import progress_at  # noqa: E402
from pioneer.training import LocalSession, build, train, train_step  # noqa: E402

WIDTHS = (128, 128, 64, 64, 32, 32)  # the default preset's, plus 32 channels at 64 and 128
BATCH = 32


def bench_config(resolution: int, images: int) -> Config:
    phases = resolution.bit_length() - 2  # 4 -> 1 phase, 32 -> 4, 64 -> 5
    base = preset("default")
    schedule = tuple(
        Phase(4 * 2**i, 0, BATCH if i < phases - 1 else images, BATCH, 0.001) for i in range(phases)
    )
    # The bundled shards stop at 32 px; above that, the bundled JPEGs (decoded in memory).
    data = (
        base.data if resolution <= 32 else replace(base.data, path=str(BUNDLED_CELEBA / "images"))
    )
    return replace(
        base,
        name=f"bench{resolution}",
        data=data,
        model=replace(base.model, channels=WIDTHS[:phases]),
        train=replace(base.train, report_images=8 * BATCH, checkpoint_images=10**9),
        schedule=schedule,
    )


def measured_rate(run_dir: Path, resolution: int) -> float:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["images_per_s"] for m in lines if m["resolution"] == resolution][1:]
    return statistics.median(rates)


def flops_per_image(config: Config) -> float:
    nets = build(config, torch.device("cpu"))
    now = progress_at(config.schedule, sum(p.images for p in config.schedule) - 1)
    x = torch.rand(BATCH, 3, now.resolution, now.resolution) * 2 - 1
    x = x.contiguous(memory_format=torch.channels_last)

    def latents(tag: str, n: int) -> torch.Tensor:
        return sample_latents(
            n, config.model.latent_size, torch.Generator().manual_seed(seed_of(tag))
        )

    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(nets, nets.encoder, nets.decoder, x, now, config, latents, autocast)
    return counter.get_total_flops() / BATCH


def conv_peak(resolution: int, channels: int, bf16: bool) -> float:
    """GFLOP/s of a 3x3 conv forward+backward at this size, as the loop runs it."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, channels, resolution, resolution, requires_grad=True)
    x = x.contiguous(memory_format=torch.channels_last).detach().requires_grad_()
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def run():
        with context:
            y = conv(x)
        y.float().sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    for _ in range(3):
        run()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0:
        run()
        count += 1
    return counter.get_total_flops() * count / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="32,64")
    parser.add_argument("--images", default="3840,1536", help="images at each resolution")
    parser.add_argument("--modes", default="plain,ray1,ray2")
    args = parser.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",")]
    images = [int(n) for n in args.images.split(",")]
    modes = args.modes.split(",")
    torch.set_num_threads(2)

    rows = []
    for resolution, count in zip(resolutions, images, strict=True):
        config = bench_config(resolution, count)
        flops = flops_per_image(config)
        # The peak: the fastest of the network's own 3x3 conv shapes (width at each resolution).
        phases = resolution.bit_length() - 2
        peak = max(conv_peak(4 * 2**i, WIDTHS[i], bf16=True) for i in range(phases))
        rows.append({"resolution": resolution, "config": config, "flops": flops, "peak": peak})

    scratch = Path(tempfile.mkdtemp(prefix="pioneer-bench-"))
    if "plain" in modes:
        for row in rows:
            run_dir = scratch / f"plain{row['resolution']}"
            train(row["config"], LocalSession(run_dir))
            row["plain"] = measured_rate(run_dir, row["resolution"])
    ray_modes = [m for m in modes if m.startswith("ray")]
    if ray_modes:
        import ray

        from pioneer.ray_train import WORKER_ENV, fit

        ray.init(num_cpus=2, runtime_env={"env_vars": WORKER_ENV})
        for mode in ray_modes:
            for row in rows:
                run_dir = scratch / f"{mode}_{row['resolution']}"
                fit(row["config"], run_dir, workers=int(mode[3:]))
                row[mode] = measured_rate(run_dir, row["resolution"])
        ray.shutdown()

    print(f"\ntraining img/s, batch {BATCH}, widths {WIDTHS}, bf16 + channels_last, 2 cores")
    header = f"{'res':>4} {'GFLOP/img':>9} {'conv peak':>9} " + " ".join(
        f"{m:>8} {'util':>5}" for m in modes
    )
    print(header + "  " + "  ".join(f"{m}/plain" for m in modes if m != "plain"))
    for row in rows:
        cells = []
        for mode in modes:
            rate = row[mode]
            cells.append(f"{rate:8.1f} {rate * row['flops'] / 1e9 / row['peak']:5.0%}")
        ratios = "  ".join(
            f"{row[m] / row['plain']:8.2f}" for m in modes if m != "plain" and "plain" in row
        )
        print(
            f"{row['resolution']:>4} {row['flops'] / 1e9:9.2f} {row['peak']:7.0f} G "
            + " ".join(cells)
            + "  "
            + ratios
        )
    print("util: achieved FLOP/s over the bf16 3x3 conv peak measured above (GFLOP/s)")


if __name__ == "__main__":
    main()
