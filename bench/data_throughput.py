"""Data throughput: images/s delivered to one worker vs what its training step consumes.

    python bench/data_throughput.py [--resolutions 32,64,128] [--epochs 2]

The bundled JPEGs are prepared once (upscaled to 128 px: their face crop is ~70 px) into a
scratch dir, timed. Then, per resolution, for one worker:
  folder   - what a plain image-folder loader does per image: read the file, decode, crop,
             resize (pioneer.transform, the code prepare runs), in this process; on the
             bundled 89x109 JPEGs, and on 1024x1024 JPEGs (64 faces upscaled, quality 95)
             as CelebA-HQ sources are
  shards   - pioneer's Stream over the Parquet shards (the training loop's reader), float
             batches of 32 in [-1, 1] with flips, read-ahead thread included
  ray_data - Ray Data read_parquet(columns=[image_R]) -> map_batches(decode) ->
             iter_torch_batches(32, local shuffle buffer) -> float in [-1, 1]
  train    - the training step's own img/s at that resolution (batch 32, bf16 +
             channels_last, the throughput benchmark's widths), on one fixed batch
Each reader's rate counts every image after its first batch (startup excluded, reported
apart). Ratios are loader img/s over the step's; the goal is >= 5x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_overhead import BATCH, bench_config  # noqa: E402

from pioneer.config import BUNDLED_CELEBA, DataConfig  # noqa: E402
from pioneer.data import seed_of, to_unit_range  # noqa: E402
from pioneer.dataset import Stream, open_dataset  # noqa: E402
from pioneer.prepare import PrepareOptions, prepare  # noqa: E402
from pioneer.sampling import sample_latents  # noqa: E402
from pioneer.schedule import progress_at, total_images  # noqa: E402
from pioneer.training import build, train_step  # noqa: E402
from pioneer.transform import transform  # noqa: E402


def rate(batches, limit: int) -> tuple[float, float]:
    """(startup seconds to the first batch, img/s after it) over up to `limit` images."""
    start = time.perf_counter()
    iterator = iter(batches)
    first = len(next(iterator))
    ready = time.perf_counter()
    count = 0
    for batch in iterator:
        count += len(batch)
        if count + first >= limit:
            break
    return ready - start, count / (time.perf_counter() - ready)


def folder_batches(files: list[Path], resolution: int):
    while True:
        for i in range(0, len(files) - BATCH + 1, BATCH):
            images = [
                transform(f.read_bytes(), "face", (resolution,), upscale=True).images[resolution]
                for f in files[i : i + BATCH]
            ]
            x = to_unit_range(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
            yield x


def shard_batches(path: str, resolution: int):
    dataset = open_dataset(DataConfig(path=path, holdout=400), (resolution,))
    stream = Stream(dataset, seed=0, flip=True, rank=0, world_size=1)
    seen = 0
    while True:
        yield stream.get(seen, BATCH, resolution)
        seen += BATCH


def ray_data_batches(path: str, resolution: int):
    import ray.data

    column = f"image_{resolution}"

    def decode(batch: dict) -> dict:
        values = batch[column]
        images = np.frombuffer(b"".join(values), np.uint8)
        return {"image": images.reshape(len(values), resolution, resolution, 3)}

    dataset = (
        ray.data.read_parquet(path)
        .select_columns([column])
        .map_batches(decode, batch_format="numpy")
    )
    while True:
        for batch in dataset.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=1024):
            yield to_unit_range(batch["image"].permute(0, 3, 1, 2))


def train_rate(resolution: int, steps: int) -> float:
    config = bench_config(resolution, 10 * BATCH)
    nets = build(config, torch.device("cpu"))
    now = progress_at(config.schedule, total_images(config.schedule) - 1)
    x = (torch.rand(BATCH, 3, resolution, resolution) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )

    def latents(tag: str, n: int) -> torch.Tensor:
        return sample_latents(
            n, config.model.latent_size, torch.Generator().manual_seed(seed_of(tag))
        )

    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    for _ in range(2):
        train_step(nets, nets.encoder, nets.decoder, x, now, config, latents, autocast)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(nets, nets.encoder, nets.decoder, x, now, config, latents, autocast)
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="32,64,128")
    parser.add_argument("--epochs", type=float, default=2.0, help="of the 3,600 training faces")
    parser.add_argument("--folder-images", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=8)
    args = parser.parse_args()
    resolutions = tuple(int(r) for r in args.resolutions.split(","))
    torch.set_num_threads(2)

    scratch = Path(tempfile.mkdtemp(prefix="pioneer-data-bench-"))
    shards = str(scratch / "celeba")
    started = time.perf_counter()
    manifest = prepare(
        str(BUNDLED_CELEBA / "images"),
        shards,
        PrepareOptions(resolutions, upscale=True, shard_size=500, workers=2),
    )
    prepare_seconds = time.perf_counter() - started
    written = manifest["counts"]["written"]
    print(
        f"prepare: {written:,} images at {list(resolutions)} px in {prepare_seconds:.1f} s "
        f"({written / prepare_seconds:,.0f} img/s, 2 processes), "
        f"{sum(s['bytes'] for s in manifest['shards']) / 2**20:.0f} MB in "
        f"{len(manifest['shards'])} shards"
    )

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    files = sorted((BUNDLED_CELEBA / "images").glob("*.jpg"))
    (scratch / "hq").mkdir()
    for path in files[:64]:
        with Image.open(path) as image:
            image.resize((1024, 1024), Image.Resampling.BICUBIC).save(
                scratch / "hq" / path.name, quality=95
            )
    hq_files = sorted((scratch / "hq").glob("*.jpg"))
    limit = int(args.epochs * 3600)
    rows = []
    for resolution in resolutions:
        row = {"resolution": resolution}
        row["folder"] = rate(folder_batches(files, resolution), args.folder_images)
        row["folder_hq"] = rate(folder_batches(hq_files, resolution), 256)
        row["shards"] = rate(shard_batches(shards, resolution), limit)
        row["ray_data"] = rate(ray_data_batches(shards, resolution), limit)
        row["train"] = train_rate(resolution, args.train_steps)
        rows.append(row)
        print(f"  {resolution} px done", flush=True)
    ray.shutdown()

    print(f"\nimg/s delivered to one worker (batch {BATCH}), 2 cores; startup s in brackets")
    readers = ("folder", "folder_hq", "shards", "ray_data")
    print(
        f"{'res':>4} "
        + " ".join(f"{k:>16}" for k in readers)
        + f" {'train step':>10}   "
        + " ".join(f"{k + '/train':>16}" for k in readers)
        + "  shards/ray_data"
    )
    for row in rows:
        train = row["train"]
        cells = " ".join(f"{row[k][1]:>9,.0f} ({row[k][0]:4.1f})" for k in readers)
        ratios = " ".join(f"{row[k][1] / train:16.1f}" for k in readers)
        shards_vs_ray = row["shards"][1] / row["ray_data"][1]
        print(f"{row['resolution']:>4} {cells} {train:>10.1f}   {ratios}  {shards_vs_ray:15.2f}")


if __name__ == "__main__":
    main()
