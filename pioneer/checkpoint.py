"""Checkpoints: one self-contained directory of config + state dicts + progress.

    checkpoint_0000123456/
        config.json     the run's Config (the model rebuilds from this alone)
        progress.json   images seen, phase, alpha, resolution
        state.pt        encoder, decoder, decoder_ema, both optimizers (state dicts)

A directory is written under a temporary name and renamed into place, so a reader never
sees a half-written checkpoint. A run directory holds several; the latest is the one with
the most images seen.
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

import torch

from pioneer.config import Config, ConfigError, from_dict, to_json

FORMAT_VERSION = 1
PREFIX = "checkpoint_"


class CheckpointError(ValueError):
    """A path that is not a loadable checkpoint or run directory."""


@dataclass
class Loaded:
    path: Path
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


def is_checkpoint(path: Path) -> bool:
    return all((path / name).is_file() for name in ("config.json", "progress.json", "state.pt"))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in a run dir, oldest first (by images seen)."""
    run_dir = Path(run_dir)
    found = []
    for child in run_dir.glob(f"{PREFIX}*"):
        if child.is_dir() and is_checkpoint(child):
            try:
                seen = json.loads((child / "progress.json").read_text())["images_seen"]
            except (OSError, ValueError, KeyError):
                continue
            found.append((seen, child.name, child))
    return [path for _, _, path in sorted(found)]


def resolve(path: str | Path) -> Path:
    """A checkpoint dir as given, or the latest checkpoint of a run dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a directory (need a checkpoint or run dir)")
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(
            f"{str(path)!r} is neither a checkpoint (config.json, progress.json, state.pt) "
            "nor a run directory holding checkpoint_* directories"
        )
    return found[-1]


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint dir, or the latest in a run dir."""
    path = resolve(path)
    try:
        config = from_dict(json.loads((path / "config.json").read_text()))
        progress = json.loads((path / "progress.json").read_text())
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except (OSError, ValueError, ConfigError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {error}") from None
    if progress.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has unknown format {progress.get('format')}"
        )
    return Loaded(path=path, config=config, progress=progress, state=state)


def identity(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file: what derived files (attribute vectors) bind to."""
    digest = hashlib.sha256()
    with open(resolve(path) / "state.pt", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def best(run_dir: str | Path, metric: str, mode: str = "max") -> Path | None:
    """The checkpoint with the best `metric` (from its progress.json) among those at the
    resolution of the latest checkpoint, or None if none recorded it."""
    found = list_checkpoints(run_dir)
    if not found or not metric:
        return None
    progress = [json.loads((path / "progress.json").read_text()) for path in found]
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
            shutil.rmtree(old, ignore_errors=True)
