"""Shared fixtures: tiny configs on a small folder of real bundled faces, all on CPU."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pioneer.config import BUNDLED_FACES, Config, DataConfig, preset

FACES = sorted((BUNDLED_FACES / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory) -> Path:
    """48 real CelebA faces in a folder of their own."""
    folder = tmp_path_factory.mktemp("faces")
    for path in FACES[:48]:
        shutil.copy(path, folder / path.name)
    return folder


def tiny_config(face_dir: Path, **train) -> Config:
    """The smoke preset (tiny widths, 4 -> 16 px) on the 48-face folder."""
    config = preset("smoke")
    return replace(
        config,
        data=DataConfig(path=str(face_dir), holdout=8),
        train=replace(config.train, **train),
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, face_dir) -> Path:
    """A finished smoke run (plain process) whose checkpoints the API and CLI tests load."""
    from pioneer.training import LocalSession, train

    run_dir = tmp_path_factory.mktemp("run")
    train(tiny_config(face_dir), LocalSession(run_dir))
    return run_dir
