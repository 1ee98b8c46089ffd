"""Train a Balanced PIONEER autoencoder with Ray Train.

    python ray_jobs/train.py [--preset default] [--data PATH] [--run-dir runs/NAME]
                             [--workers N] [--set dotted.key=value ...]

PATH is a prepared dataset (`pioneer prepare` output, local or s3://) or an image folder.
Re-running the same command with the same run dir resumes from its latest checkpoint. The
run dir may be s3://bucket/prefix (AWS credentials and endpoint from the usual AWS_*
variables or an instance profile): then no node needs a shared file system.
Also works as `ray job submit --working-dir . -- python ray_jobs/train.py ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pioneer.config import (  # noqa: E402
    PRESETS,
    ConfigError,
    apply_overrides,
    preset,
    validate,
    with_data,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument(
        "--data",
        help="prepared dataset (dir or s3://) or image folder (default: the bundled CelebA faces)",
    )
    parser.add_argument(
        "--run-dir",
        help="where checkpoints, grids and metrics go: a folder or s3://bucket/prefix "
        "(default runs/<name>)",
    )
    parser.add_argument("--name", help="run name (default: the preset's)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="restarts of the worker group after a worker dies (from the last checkpoint)",
    )
    parser.add_argument("--keep", type=int, help="latest checkpoints kept (train.keep_checkpoints)")
    parser.add_argument(
        "--eval-every",
        type=float,
        metavar="KIMG",
        help="run train.eval_metrics every KIMG thousand images (sets train.eval_every_images)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an option, e.g. --set loss.recon_weight=20 --set schedule.3.lr=0.002",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = apply_overrides(preset(args.preset), args.overrides)
        if args.name:
            config = replace(config, name=args.name)
        if args.data:
            config = with_data(config, args.data)
        if args.keep is not None:
            config = replace(config, train=replace(config.train, keep_checkpoints=args.keep))
        if args.max_failures < 0:
            raise ConfigError("--max-failures must be >= 0")
        if args.eval_every is not None:
            every = int(args.eval_every * 1000)
            config = replace(config, train=replace(config.train, eval_every_images=every))
        validate(config)  # the flags above set config fields: check them like --set
        if args.workers < 1:
            raise ConfigError("--workers must be >= 1")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from pioneer.data import DataError
    from pioneer.dataset import check_data
    from pioneer.rundir import RunDir

    try:  # fail here, not inside a worker
        print(f"data: {check_data(config.data, tuple(p.resolution for p in config.schedule))}")
        if config.train.eval_every_images:
            from pioneer.training import check_eval

            check_eval(config)
        run = RunDir.at(args.run_dir or Path("runs") / config.name)
        run.check_writable()
    except (DataError, OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import ray

    from pioneer.ray_train import WORKER_ENV, fit

    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": WORKER_ENV})
    started = time.perf_counter()
    try:
        result = fit(
            config, run.uri, workers=args.workers, use_gpu=args.gpu, max_failures=args.max_failures
        )
    except Exception as error:  # Ray wraps worker errors: the traceback, then the cause in one line
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print("\n".join(lines), file=sys.stderr)
        print(f"error: training failed: {lines[-1]}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - started:.0f} s; run dir: {run.uri}")
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
