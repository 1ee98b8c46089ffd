"""Ray Train (V2) around the Ray-free loop: the only module that imports ray.train.

The run directory `runs/<name>` (or s3://bucket/prefix/<name>) is Ray's storage_path/name,
so Ray keeps the checkpoints there (checkpoint_<images seen>/) next to the grids and metrics
that rank 0 writes, and a second `fit` with the same run dir resumes from the latest
checkpoint (V2 restoration).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from pioneer.config import Config, from_dict, to_dict
from pioneer.rundir import RunDir
from pioneer.training import train


def local_directory(found: Checkpoint) -> Path:
    """A Ray checkpoint as a local folder: itself if local, else downloaded."""
    if isinstance(found.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(found.path)
    return Path(found.to_directory(tempfile.mkdtemp(prefix="pioneer-restore-")))


class RaySession:
    """The loop's Session under Ray Train."""

    def __init__(self, run_dir: str):
        # Train logs every report at INFO through the root logger; the progress lines suffice.
        logging.getLogger().setLevel(logging.WARNING)
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_world_size = context.get_local_world_size()
        self.run_dir = run_dir

    def restore(self) -> Path | None:
        found = ray.train.get_checkpoint()
        return None if found is None else local_directory(found)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
            return
        try:
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(str(checkpoint_dir)),
                checkpoint_dir_name=checkpoint_dir.name,
            )
        finally:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    config = from_dict(loop_config["config"])
    train(config, RaySession(loop_config["run_dir"]))


# Worker environment: Train's print patch would echo every progress line twice.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def make_trainer(
    config: Config,
    run_dir: str | Path,
    workers: int = 1,
    use_gpu: bool = False,
    max_failures: int = 0,
    cpus_per_worker: float | None = None,
    callbacks: list | None = None,
) -> TorchTrainer:
    """A TorchTrainer for `config` whose run dir (local or s3://) is `run_dir`; it resumes
    the run found there. cpus_per_worker: default, the free CPUs shared among workers."""
    run = RunDir.at(run_dir)
    for phase in config.schedule:
        if phase.batch % workers:
            raise ValueError(f"batch {phase.batch} of every phase must divide by {workers} workers")
    if cpus_per_worker is None:
        free = int(ray.available_resources().get("CPU", 1))
        cpus_per_worker = 1 if use_gpu else max(1, free // workers)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "run_dir": run.uri},
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=run.name,
            storage_path=run.parent,
            # Rank 0 prunes (latest K plus the best by train.keep_best): Ray keeps them all.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our progress lines suffice
            callbacks=callbacks or [],
        ),
    )


def fit(
    config: Config,
    run_dir: str | Path,
    workers: int = 1,
    use_gpu: bool = False,
    max_failures: int = 0,
) -> ray.train.Result:
    """Train `config` with `workers` Ray Train workers; resumes if `run_dir` has a run.

    run_dir may be s3://bucket/prefix/name: Ray then stores checkpoints there itself, and
    every node can resume the run, with no shared file system."""
    return make_trainer(config, run_dir, workers, use_gpu, max_failures).fit()
