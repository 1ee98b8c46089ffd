"""Shared fixtures: tiny configs on a small folder of real bundled faces, all on CPU."""

from __future__ import annotations

import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from pioneer.config import BUNDLED_CELEBA, Config, DataConfig, preset

FACES = sorted((BUNDLED_CELEBA / "images").glob("*.jpg"))
ATTRIBUTES = BUNDLED_CELEBA / "list_attr_celeba.txt"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attribute_lines(names: list[str]) -> str:
    """The bundled attribute file cut down to the given image file names."""
    lines = ATTRIBUTES.read_text().splitlines()
    rows = [line for line in lines[2:] if line.split()[0] in set(names)]
    return "\n".join([str(len(rows)), lines[1], *rows]) + "\n"


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory) -> Path:
    """48 real CelebA faces in a folder of their own."""
    folder = tmp_path_factory.mktemp("faces")
    for path in FACES[:48]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def face_shards(tmp_path_factory, face_dir) -> Path:
    """The 48 faces prepared as Parquet shards (4-16 px, 4 shards) with their attributes."""
    from pioneer.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("shards")
    attributes = root / "attributes.txt"
    attributes.write_text(attribute_lines([p.name for p in FACES[:48]]))
    options = PrepareOptions(
        resolutions=(4, 8, 16), attributes=str(attributes), shard_size=12, workers=1
    )
    prepare(str(face_dir), str(root / "prepared"), options)
    return root / "prepared"


def tiny_config(data: Path, **train) -> Config:
    """The smoke preset (tiny widths, 4 -> 16 px) on the 48 faces (shards or folder)."""
    config = preset("smoke")
    return replace(
        config,
        data=DataConfig(path=str(data), holdout=8),
        train=replace(config.train, **train),
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, face_shards) -> Path:
    """A finished smoke run (plain process) whose checkpoints the API and CLI tests load."""
    from pioneer.training import LocalSession, train

    run_dir = tmp_path_factory.mktemp("run")
    train(tiny_config(face_shards), LocalSession(run_dir))
    return run_dir
