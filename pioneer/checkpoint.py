"""Checkpoints: one self-contained directory of config + state dicts + progress.

    checkpoint_0000123456/
        config.json     the run's Config (the model rebuilds from this alone)
        progress.json   images seen, phase, alpha, resolution
        state.pt        encoder, decoder, decoder_ema, both optimizers (state dicts)

A directory is written under a temporary name and renamed into place, so a reader never
sees a half-written checkpoint. A run directory holds several; the latest is the one with
the most images seen. Run dirs and checkpoints may live on S3 (s3://bucket/prefix/...):
they are read there, through a local cached copy of the files a load needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch

from pioneer import storage
from pioneer.config import Config, ConfigError, from_dict, to_json

FORMAT_VERSION = 1
PREFIX = "checkpoint_"


class CheckpointError(ValueError):
    """A path that is not a loadable checkpoint or run directory."""


@dataclass
class Loaded:
    location: str  # as found: a local path or an s3:// URI
    path: Path  # a local folder with its files (for s3://, a cached copy)
    config: Config
    progress: dict[str, Any]
    state: dict[str, Any]


def checkpoint_name(images_seen: int, attempt: int = 0) -> str:
    """checkpoint_<images seen>; after a collapse-guard rollback, -r<attempt> is added so
    a retaken checkpoint never overwrites one that Ray's checkpoint manager still tracks."""
    return f"{PREFIX}{images_seen:010d}" + (f"-r{attempt}" if attempt else "")


def save(directory: str | Path, config: Config, progress: dict[str, Any], state: dict) -> Path:
    """Write a checkpoint atomically to `directory` (replacing one already there)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        torch.save(state, staging / "state.pt")
        (staging / "config.json").write_text(to_json(config))
        (staging / "progress.json").write_text(
            json.dumps({"format": FORMAT_VERSION, **progress}, indent=2)
        )
        _fsync_dir(staging)
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as handle:
            os.fsync(handle.fileno())


FILES = ("config.json", "progress.json", "state.pt")


def is_checkpoint(location: str | Path) -> bool:
    fs, path = storage.filesystem(location)
    infos = fs.get_file_info([f"{path}/{name}" for name in FILES])
    return all(info.type == pyarrow.fs.FileType.File for info in infos)


def _progress_of(location: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(location, "progress.json")))


def list_checkpoints(run_dir: str | Path) -> list[str]:
    """Complete checkpoints in a run dir (local or s3://), oldest first (by images seen)."""
    found = []
    for name in storage.list_dirs(run_dir):
        location = storage.join(run_dir, name)
        if not name.startswith(PREFIX) or not is_checkpoint(location):
            continue
        try:
            seen = _progress_of(location)["images_seen"]
        except (OSError, ValueError, KeyError):
            continue
        found.append((seen, name, location))
    return [location for _, _, location in sorted(found)]


def resolve(path: str | Path) -> str:
    """A checkpoint dir as given, or the latest checkpoint of a run dir (local or s3://)."""
    path = str(path)
    try:
        if not storage.exists(path):
            raise CheckpointError(f"{path!r} does not exist")
        if not storage.is_dir(path):
            raise CheckpointError(f"{path!r} is not a directory (need a checkpoint or run dir)")
    except storage.StorageError as error:
        raise CheckpointError(str(error)) from None
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{path!r} is neither a checkpoint (config.json, progress.json, state.pt) "
            "nor a run directory holding checkpoint_* directories"
        )
    return found[-1]


def fetch(location: str) -> Path:
    """A local folder holding the checkpoint at `location`: itself, or for s3:// a copy in
    the cache, downloaded again only when the remote files changed (size or time)."""
    if not storage.is_remote(location):
        return Path(location)
    fs, path = storage.filesystem(location)
    infos = fs.get_file_info([f"{path}/{name}" for name in FILES])
    listing = {name: [info.size, str(info.mtime)] for name, info in zip(FILES, infos, strict=True)}
    local = storage.cache_path(location, "checkpoints")
    stamp = local / ".listing.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == listing:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    try:
        for name in FILES:
            storage.copy_tree(storage.join(location, name), staging / name)
        (staging / ".listing.json").write_text(json.dumps(listing))
        shutil.rmtree(local, ignore_errors=True)
        os.replace(staging, local)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return local


def load(
    path: str | Path, map_location: str | torch.device = "cpu", weights: bool = True
) -> Loaded:
    """Load a checkpoint dir, or the latest in a run dir (local or s3://); with
    weights=False only its config and progress (state is then empty)."""
    location = resolve(path)
    try:
        path = fetch(location)
        config = from_dict(json.loads((path / "config.json").read_text()))
        progress = json.loads((path / "progress.json").read_text())
        state = (
            torch.load(path / "state.pt", map_location=map_location, weights_only=True)
            if weights
            else {}
        )
    except (OSError, ValueError, ConfigError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"checkpoint {location!r} is unreadable: {error}") from None
    if progress.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {location!r} has unknown format {progress.get('format')}"
        )
    return Loaded(location=location, path=path, config=config, progress=progress, state=state)


def identity(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: what derived files (attribute vectors) bind to."""
    digest = hashlib.sha256()
    with open(fetch(resolve(path)) / "state.pt", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def best(run_dir: str | Path, metric: str, mode: str = "max") -> str | None:
    """The checkpoint with the best `metric` (from its progress.json) among those at the
    resolution of the latest checkpoint, or None if none recorded it."""
    found = list_checkpoints(run_dir)
    if not found or not metric:
        return None
    progress = [_progress_of(location) for location in found]
    resolution = progress[-1].get("resolution")
    scored = [
        (p["metrics"][metric], path)
        for p, path in zip(progress, found, strict=True)
        if p.get("resolution") == resolution and metric in p.get("metrics", {})
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda item: item[0])[1]


def prune(run_dir: str | Path, keep: int, best_metric: str = "", mode: str = "max") -> None:
    """Delete all but the `keep` latest checkpoints of a run dir, and the best by a metric."""
    kept = set(list_checkpoints(run_dir)[-keep:] if keep > 0 else [])
    champion = best(run_dir, best_metric, mode)
    if champion is not None:
        kept.add(champion)
    for old in list_checkpoints(run_dir):
        if old not in kept:
            storage.delete_tree(old)
