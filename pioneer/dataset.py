"""Training data: a prepared Parquet dataset (local or s3://) or a plain image folder, streamed.

Both kinds look alike to the training loop: rows in shards (a folder is one in-memory
shard), the last `data.holdout` rows held out, and a `Stream` per worker.

The stream is a pure function of (seed, images seen, rank, world size): each epoch shuffles
the shard order and the rows inside each shard, cuts that sequence into one contiguous
part per worker (so a worker reads about 1/world_size of the shards, and the parts are
disjoint), and shuffles each part within windows of `data.shuffle_window_mb` of decoded
pixels. A resumed run therefore sees exactly the images the uninterrupted run would have,
with no reader state to save; a window is read ahead on a thread while the step runs.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from abc import ABC, abstractmethod
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pioneer import storage
from pioneer.config import DataConfig
from pioneer.data import DataError, list_images, seed_of, to_unit_range
from pioneer.prepare import (
    FORMAT,
    MANIFEST,
    attribute_column,
    image_column,
    images_of,
    read_attributes,
)
from pioneer.transform import ImageSkip, transform

log = logging.getLogger(__name__)

MEAN_FACE_IMAGES = 4096  # the mean-face baseline averages up to this many training images


class Dataset(ABC):
    """Rows in shards; `read(shard, resolution)` gives uint8 (n, R, R, 3)."""

    description: str  # for log lines: what was opened and how many rows
    resolutions: tuple[int, ...]
    shard_rows: list[int]
    skipped: int  # inputs left out (unreadable files, or skips recorded by prepare)

    def __init__(self, holdout: int):
        self.rows = sum(self.shard_rows)
        self.holdout_rows = holdout
        self.train_rows = self.rows - holdout
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self._eval: dict[tuple[str, int], torch.Tensor] = {}

    @abstractmethod
    def read(self, shard: int, resolution: int) -> np.ndarray:
        """One shard's images at a resolution, uint8 (n, R, R, 3)."""

    @abstractmethod
    def sources(self) -> list[str]:
        """Each row's source file (path below the data root)."""

    def attributes(self, attributes_file: str | None = None) -> tuple[list[str], np.ndarray]:
        """(names, int8 (rows, A) of +1 / -1, 0 unknown): from a CelebA-style file matched by
        source file name, else from a prepared dataset's attribute columns."""
        if attributes_file:
            names, table = read_attributes(attributes_file)
            labels = np.zeros((self.rows, len(names)), np.int8)
            for row, source in enumerate(self.sources()):
                values = table.get(source) or table.get(posixpath.basename(source))
                if values is not None:
                    labels[row] = values
            return names, labels
        return self._own_attributes()

    def _own_attributes(self) -> tuple[list[str], np.ndarray]:
        return [], np.zeros((self.rows, 0), np.int8)

    def check_resolutions(self, needed: tuple[int, ...]) -> None:
        missing = sorted(set(needed) - set(self.resolutions))
        if missing:
            raise DataError(
                f"{self.description} has resolutions {list(self.resolutions)} but the schedule "
                f"needs {missing}: re-run `pioneer prepare` with --resolutions "
                f"{','.join(str(r) for r in sorted(set(needed) | set(self.resolutions)))}"
            )

    def gather(
        self, rows: np.ndarray, resolution: int, cache: ShardCache | None = None
    ) -> np.ndarray:
        """Global row ids -> uint8 (n, R, R, 3) in the given order."""
        out = np.empty((len(rows), resolution, resolution, 3), np.uint8)
        shards = np.searchsorted(self.offsets, rows, side="right") - 1
        for shard in np.unique(shards):
            mask = shards == shard
            images = (
                cache.get(self, int(shard), resolution)
                if cache
                else self.read(int(shard), resolution)
            )
            out[mask] = images[rows[mask] - self.offsets[shard]]
        return out

    def images(self, rows: np.ndarray, resolution: int) -> torch.Tensor:
        """Global row ids -> uint8 (n, 3, R, R) tensor."""
        return _to_nchw(self.gather(np.asarray(rows, dtype=np.int64), resolution))

    def holdout(self, resolution: int) -> torch.Tensor:
        """The held-out rows (the last ones), uint8 (H, 3, R, R); never trained on."""
        key = ("holdout", resolution)
        if key not in self._eval:
            self._eval[key] = self.images(np.arange(self.train_rows, self.rows), resolution)
        return self._eval[key]

    def mean_face(self, resolution: int) -> torch.Tensor:
        """Mean of (up to MEAN_FACE_IMAGES) training images in [-1, 1], (3, R, R): a baseline."""
        key = ("mean", resolution)
        if key not in self._eval:
            rows = np.arange(min(self.train_rows, MEAN_FACE_IMAGES))
            images = self.gather(rows, resolution).astype(np.float64).mean(axis=0)
            self._eval[key] = to_unit_range(torch.from_numpy(images).permute(2, 0, 1))
        return self._eval[key]


class PreparedDataset(Dataset):
    """A `pioneer prepare` output: manifest.json plus Parquet shards, read column by column."""

    def __init__(self, path: str, manifest: dict, holdout: int):
        self.path = path
        self.manifest = manifest
        self.resolutions = tuple(manifest["resolutions"])
        self.shard_rows = [s["rows"] for s in manifest["shards"]]
        self.skipped = sum(manifest["counts"]["skipped"].values())
        self.crop = manifest["crop"]
        self.description = f"prepared dataset {path} ({sum(self.shard_rows):,} images)"
        super().__init__(holdout)

    def read(self, shard: int, resolution: int) -> np.ndarray:
        entry = self.manifest["shards"][shard]
        uri = storage.join(self.path, entry["path"])
        try:
            fs, inside = storage.filesystem(uri)
            table = pq.read_table(
                inside,
                columns=[image_column(resolution)],
                filesystem=fs,
                page_checksum_verification=True,  # a damaged shard fails loudly, not as noise
            )
        except Exception as error:  # pyarrow raises OSError / ArrowInvalid for bad files
            raise DataError(f"cannot read shard {uri}: {error}; re-run `pioneer prepare`") from None
        if table.num_rows != entry["rows"]:
            raise DataError(
                f"shard {uri} has {table.num_rows} rows, the manifest says {entry['rows']}: "
                "it changed after prepare; re-run `pioneer prepare`"
            )
        return images_of(table, resolution)

    def _columns(self, columns: list[str]) -> list[pa.Table]:
        tables = []
        for entry in self.manifest["shards"]:
            fs, inside = storage.filesystem(storage.join(self.path, entry["path"]))
            tables.append(pq.read_table(inside, columns=columns, filesystem=fs))
        return tables

    def sources(self) -> list[str]:
        return [s for t in self._columns(["source"]) for s in t.column("source").to_pylist()]

    def _own_attributes(self) -> tuple[list[str], np.ndarray]:
        if not hasattr(self, "_labels"):
            self._labels = self._read_attributes()
        return self._labels

    def _read_attributes(self) -> tuple[list[str], np.ndarray]:
        names = list(self.manifest.get("attributes", []))
        if not names:
            return [], np.zeros((self.rows, 0), np.int8)
        tables = self._columns([attribute_column(n) for n in names])
        columns = [
            np.concatenate([t.column(i).to_numpy(zero_copy_only=False) for t in tables])
            for i in range(len(names))
        ]
        labels = np.nan_to_num(np.stack(columns, axis=1).astype(np.float64), nan=0.0)
        return names, labels.astype(np.int8)


class FolderDataset(Dataset):
    """A plain image folder, decoded once at every needed resolution (small datasets)."""

    def __init__(self, path: str, crop: str, resolutions: tuple[int, ...], holdout: int):
        files = list_images(path)
        images: dict[int, list[np.ndarray]] = {r: [] for r in resolutions}
        self.skipped = 0
        self.files: list[str] = []  # loaded files, relative to the folder
        for file in files:
            try:
                result = transform(Path(file).read_bytes(), crop, resolutions, upscale=True)
            except (ImageSkip, OSError) as error:
                self.skipped += 1
                log.warning("skipping %s: %s", file, error)
                continue
            for size, array in result.images.items():
                images[size].append(array)
            self.files.append(Path(file).relative_to(path).as_posix())
        count = len(images[resolutions[0]])
        self.arrays = {
            r: np.stack(v) if v else np.zeros((0, r, r, 3), np.uint8) for r, v in images.items()
        }
        self.resolutions = tuple(resolutions)
        self.shard_rows = [count]
        self.crop = crop
        self.description = f"image folder {path} ({count:,} readable images)"
        super().__init__(holdout)

    def read(self, shard: int, resolution: int) -> np.ndarray:
        return self.arrays[resolution]

    def sources(self) -> list[str]:
        return list(self.files)


def read_manifest(path: str) -> dict | None:
    """The manifest of a prepared dataset at path, or None when path has none."""
    uri = storage.join(path, MANIFEST)
    try:
        if not storage.exists(uri):
            return None
        manifest = json.load(io.BytesIO(storage.read_bytes(uri)))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {uri}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{uri} is not a pioneer prepare manifest")
    return manifest


def open_dataset(config: DataConfig, resolutions: tuple[int, ...]) -> Dataset:
    """Open config.path (prepared dataset or image folder) for the given resolutions."""
    path = config.path
    manifest = read_manifest(path)
    if manifest is not None:
        dataset: Dataset = PreparedDataset(path, manifest, config.holdout)
        dataset.check_resolutions(resolutions)
    elif storage.is_remote(path):
        raise DataError(
            f"{path} has no {MANIFEST}: remote data must be prepared first "
            f"(pioneer prepare SRC {path})"
        )
    else:
        dataset = FolderDataset(path, config.crop, tuple(sorted(set(resolutions))), config.holdout)
    if dataset.train_rows < 1:
        raise DataError(
            f"{dataset.description}: need more than data.holdout={config.holdout} images"
        )
    return dataset


def open_run_data(trained: DataConfig, path: str | None, resolution: int) -> Dataset:
    """A checkpoint's data (or another at path) with the run's crop and held-out split."""
    config = DataConfig(path=path or trained.path, crop=trained.crop, holdout=trained.holdout)
    return open_dataset(config, (resolution,))


def check_data(config: DataConfig, resolutions: tuple[int, ...]) -> str:
    """Cheap checks before a run starts (no decoding): a line describing the data."""
    manifest = read_manifest(config.path)
    if manifest is None:
        if storage.is_remote(config.path):
            open_dataset(config, resolutions)  # raises the "prepare first" error
        count = len(list_images(config.path))
        if count <= config.holdout:
            raise DataError(
                f"{count} images under {config.path!r}, "
                f"need more than data.holdout={config.holdout}"
            )
        return f"image folder {config.path} ({count:,} files)"
    dataset = PreparedDataset(config.path, manifest, config.holdout)
    dataset.check_resolutions(resolutions)
    if dataset.train_rows < 1:
        raise DataError(f"{dataset.description}: need more than data.holdout={config.holdout}")
    return dataset.description


class ShardCache:
    """Recently read shard columns, up to a byte budget (the whole dataset when it is small)."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def get(self, dataset: Dataset, shard: int, resolution: int) -> np.ndarray:
        key = (shard, resolution)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        images = dataset.read(shard, resolution)
        self.items[key] = images
        while len(self.items) > 1 and sum(v.nbytes for v in self.items.values()) > self.budget:
            self.items.popitem(last=False)
        return images


class Stream:
    """This worker's batches, a pure function of images seen (see the module docstring)."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        flip: bool,
        rank: int,
        world_size: int,
        window_mb: int = DataConfig.shuffle_window_mb,
    ):
        self.dataset = dataset
        self.seed = seed
        self.flip = flip
        self.rank = rank
        self.world_size = world_size
        self.window_bytes = int(window_mb * 2**20)
        self.length = dataset.train_rows // world_size  # images per worker per epoch
        if self.length < 1:
            raise DataError(
                f"{dataset.train_rows} training images cannot be split across {world_size} workers"
            )
        self.cache = ShardCache(self.window_bytes)
        self._orders: dict[int, np.ndarray] = {}
        self._windows: dict[tuple[int, int, int], Future] = {}
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="pioneer-data")

    def order(self, epoch: int) -> np.ndarray:
        """This worker's global row ids for an epoch, before window shuffling."""
        if epoch not in self._orders:
            self._orders = {e: v for e, v in self._orders.items() if e >= epoch - 1}
            data = self.dataset
            shards = np.random.default_rng(seed_of(self.seed, "shards", epoch)).permutation(
                len(data.shard_rows)
            )
            parts = []
            for shard in shards:
                start = data.offsets[shard]
                stop = min(data.offsets[shard + 1], data.train_rows)  # held-out rows stay out
                if stop > start:
                    rng = np.random.default_rng(seed_of(self.seed, "rows", epoch, int(shard)))
                    parts.append(start + rng.permutation(stop - start))
            sequence = np.concatenate(parts)
            self._orders[epoch] = sequence[self.rank * self.length : (self.rank + 1) * self.length]
        return self._orders[epoch]

    def window_size(self, resolution: int) -> int:
        return max(1, self.window_bytes // (3 * resolution * resolution))

    def _build(self, epoch: int, window: int, resolution: int) -> np.ndarray:
        size = self.window_size(resolution)
        rows = self.order(epoch)[window * size : (window + 1) * size]
        rng = np.random.default_rng(seed_of(self.seed, "window", epoch, self.rank, window))
        return self.dataset.gather(rows[rng.permutation(len(rows))], resolution, self.cache)

    def _window(self, epoch: int, window: int, resolution: int) -> np.ndarray:
        key = (epoch, window, resolution)
        if key not in self._windows:
            self._windows[key] = self._reader.submit(self._build, *key)
        images = self._windows[key].result()
        # Keep this window, read the next one ahead, forget the rest.
        upcoming = (epoch, window + 1, resolution)
        if (window + 1) * self.window_size(resolution) >= self.length:
            upcoming = (epoch + 1, 0, resolution)
        self._windows = {k: v for k, v in self._windows.items() if k in (key, upcoming)}
        if upcoming not in self._windows:
            self._windows[upcoming] = self._reader.submit(self._build, *upcoming)
        return images

    def get(self, images_seen: int, batch: int, resolution: int) -> torch.Tensor:
        """This worker's share of the global batch at images_seen: float (b, 3, R, R) in [-1, 1]."""
        if batch % self.world_size:
            raise ValueError(f"batch {batch} is not divisible by {self.world_size} workers")
        local = batch // self.world_size
        positions = np.arange(
            images_seen // self.world_size, images_seen // self.world_size + local
        )
        epochs, offsets = positions // self.length, positions % self.length
        size = self.window_size(resolution)
        out = np.empty((local, resolution, resolution, 3), np.uint8)
        for epoch, window in sorted(
            {(int(e), int(o // size)) for e, o in zip(epochs, offsets, strict=True)}
        ):
            mask = (epochs == epoch) & (offsets // size == window)
            out[mask] = self._window(epoch, window, resolution)[offsets[mask] % size]
        x = to_unit_range(_to_nchw(out))
        if self.flip:
            generator = torch.Generator().manual_seed(
                seed_of(self.seed, "flip", images_seen, self.rank)
            )
            mirror = torch.rand(local, generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, R, R, 3) -> uint8 (N, 3, R, R), contiguous."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
