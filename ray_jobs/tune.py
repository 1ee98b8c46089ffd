"""Sweep hyperparameters with Ray Tune: each trial a full Ray Train run of the loop.

    python ray_jobs/tune.py --preset smoke --space ray_jobs/spaces/smoke.yaml --trials 2
        [--scheduler asha|pbt|none] [--search random|optuna] [--metric NAME --mode min|max]
        [--workers-per-trial K] [--gpu] [--run-dir PATH|s3://...] [--set key=value ...]
        [--perturbation-images N]

asha: each trial a Ray Train run with K workers, weak ones stopped early. pbt: a population
of single-worker trials, the weak ones restarted from the strong ones' checkpoints with
mutated margins and learning rates every N images (default: train.checkpoint_images).

The space file (see ray_jobs/spaces/paper.yaml) uses the same dotted keys as --set. At the
end: RUN_DIR/results.csv (trials sorted by the metric), a printed summary, and the best
trial's best checkpoint copied to RUN_DIR/best (`pioneer sample RUN_DIR/best`). The same
command again resumes an interrupted sweep without redoing finished trials.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    parser.add_argument("--space", required=True, help="search space YAML")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--scheduler", default="asha", choices=("asha", "pbt", "none"))
    parser.add_argument("--search", default="random", choices=("random", "optuna"))
    parser.add_argument("--metric", help="default: the space file's, else heldout_psnr_ema")
    parser.add_argument("--mode", choices=("min", "max"), help="default: the space file's; max")
    parser.add_argument("--workers-per-trial", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--data", help="dataset for every trial (default: the preset's)")
    parser.add_argument("--run-dir", help="default: runs/sweep-<preset>")
    parser.add_argument("--seed", type=int, default=0, help="search algorithm seed")
    parser.add_argument(
        "--perturbation-images", type=int, default=0,
        help="pbt: images between perturbations (default: train.checkpoint_images)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="fixed overrides of the base config, as for ray_jobs/train.py",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pioneer.ray_tune import SweepOptions, sweep
    from pioneer.space import check_mutable, load_space

    try:
        base = apply_overrides(preset(args.preset), args.overrides)
        if args.data:
            base = with_data(base, args.data)
        validate(base)
        space = load_space(args.space, base)
        if args.trials < 1 or args.workers_per_trial < 1:
            raise ConfigError("--trials and --workers-per-trial must be >= 1")
        options = SweepOptions(
            run_dir=args.run_dir or str(Path("runs") / f"sweep-{args.preset}"),
            trials=args.trials,
            metric=args.metric or space.metric or "heldout_psnr_ema",
            mode=args.mode or space.mode or "max",
            scheduler=args.scheduler,
            search=args.search,
            workers_per_trial=args.workers_per_trial,
            use_gpu=args.gpu,
            seed=args.seed,
            perturbation_images=args.perturbation_images,
        )
        options.check()
        if options.scheduler == "pbt":
            check_mutable(space)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from pioneer.data import DataError
    from pioneer.dataset import check_data
    from pioneer.rundir import RunDir

    try:
        print(f"data: {check_data(base.data, tuple(p.resolution for p in base.schedule))}")
        run = RunDir.at(options.run_dir)
        run.check_writable()
    except (DataError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import ray

    from pioneer.ray_train import WORKER_ENV

    options = replace(options, run_dir=run.uri)
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env={"env_vars": WORKER_ENV})
    rows = sweep(base, space, options)
    print(f"\n{len(rows)} trial(s), furthest trained first, then by {options.metric}:")
    for row in rows:
        params = " ".join(f"{k[6:]}={_short(v)}" for k, v in row.items() if k.startswith("param:"))
        metric = _short(row[options.metric])
        print(f"  {row['trial']}  images {row['images_seen']}  {options.metric}={metric}  {params}")
    print(f"table: {run.uri}/results.csv")
    if rows and rows[0].get("best_dir"):
        print(f"best checkpoint: {rows[0]['best_dir']}  (pioneer sample {rows[0]['best_dir']})")
    return 0


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
