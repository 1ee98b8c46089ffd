"""Ray Tune sweeps: each trial a full Ray Train run of the library loop (Train V2 pattern: a
Tune function drives a TorchTrainer; Train's reports reach Tune through a callback).

    RUN_DIR/
        tune/           Tune's experiment state (an interrupted sweep resumes from it)
        trials/<id>/    each trial's run dir: checkpoints, metrics.jsonl, grids
        results.csv     one row per trial: hyperparameters, final metrics, checkpoint
        best/           a copy of the best trial's best checkpoint
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from pioneer import checkpoint, storage
from pioneer.config import Config, from_dict, to_dict
from pioneer.ray_train import make_trainer
from pioneer.rundir import RunDir
from pioneer.schedule import total_images
from pioneer.space import Space, config_for

DRIVER_CPU = 0.1  # a trial's driver function only waits on its TorchTrainer


@dataclass(frozen=True)
class SweepOptions:
    run_dir: str  # local folder or s3://bucket/prefix/name
    trials: int = 2  # number of trials (Tune's num_samples)
    metric: str = "heldout_psnr_ema"  # what the scheduler and the table rank by
    mode: str = "max"  # max or min
    scheduler: str = "asha"  # asha (early stopping on the metric) or none
    search: str = "random"  # random or optuna
    workers_per_trial: int = 1  # Ray Train workers in each trial
    use_gpu: bool = False  # one GPU per worker
    seed: int = 0  # for the search algorithm


def _distribution(param) -> Any:
    low, high = param.args[0], param.args[min(1, len(param.args) - 1)]
    return {
        "uniform": lambda: tune.uniform(low, high),
        "loguniform": lambda: tune.loguniform(low, high),
        "quniform": lambda: tune.quniform(low, high, param.args[2]),
        "randint": lambda: tune.randint(low, high),
        "choice": lambda: tune.choice(list(param.args)),
    }[param.kind]()


class CarryForward(TuneReportCallback):
    """Every report to Tune carries the latest value of each figure: held-out metrics are
    measured at checkpoints only, but a scheduler needs its metric in every result. Reports
    before the metric's first measurement are not forwarded."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric
        self.latest: dict[str, Any] = {}

    def after_report(self, run_context, metrics, checkpoint):
        if "event" in metrics[0]:  # collapse-guard events: not a training result
            return
        self.latest.update(metrics[0])
        if self.metric in self.latest:
            super().after_report(run_context, [dict(self.latest)], checkpoint)


def _trial(
    params: dict[str, Any], base: dict, run_dir: str, workers: int, use_gpu: bool, metric: str
):
    config = config_for(from_dict(base), params)
    trial_dir = storage.join(run_dir, "trials", tune.get_context().get_trial_id())
    report = CarryForward(metric)
    make_trainer(config, trial_dir, workers, use_gpu, cpus_per_worker=1, callbacks=[report]).fit()


def sweep(base: Config, space: Space, options: SweepOptions) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns the results table, best first."""
    run_dir = RunDir.at(options.run_dir).uri
    # A trial holds DRIVER_CPU + one CPU per worker (or one GPU per worker): a 2-core box
    # runs one trial at a time (its worker then uses both cores), a cluster several.
    resources = ray.cluster_resources()
    concurrent = math.floor(resources.get("CPU", 1) / (DRIVER_CPU + options.workers_per_trial))
    if options.use_gpu:
        concurrent = int(resources.get("GPU", 0)) // options.workers_per_trial
    concurrent = max(1, concurrent)
    if concurrent > 1 and not base.train.threads:  # trials side by side: a thread per CPU
        base = replace(base, train=replace(base.train, threads=1))
    trainable = tune.with_parameters(
        _trial,
        base=to_dict(base),
        run_dir=run_dir,
        workers=options.workers_per_trial,
        use_gpu=options.use_gpu,
        metric=options.metric,
    )
    trainable = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
    experiment = storage.join(run_dir, "tune")
    if tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={p.key: _distribution(p) for p in space.params},
            tune_config=tune.TuneConfig(
                metric=options.metric,
                mode=options.mode,
                num_samples=options.trials,
                scheduler=_scheduler(base, options),
                search_alg=_search(options),
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=run_dir),
        )
    results = tuner.fit()
    return _table(results, space, options)


def _scheduler(base: Config, options: SweepOptions):
    if options.scheduler == "none":
        return None
    total = total_images(base.schedule)
    if options.scheduler == "asha":
        grace = max(1, base.schedule[0].images)  # every trial gets its first phase
        return ASHAScheduler(time_attr="images_seen", max_t=total, grace_period=grace)
    raise ValueError(f"unknown scheduler {options.scheduler!r}")


def _search(options: SweepOptions):
    if options.search == "random":
        return None
    if options.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=options.seed)
    raise ValueError(f"unknown search {options.search!r}")


def _table(results, space: Space, options: SweepOptions) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        row = {"trial": trial_id, "status": "error" if result.error else "done"}
        row.update({f"param:{p.key}": (result.config or {}).get(p.key) for p in space.params})
        for key in (options.metric, "images_seen", "heldout_psnr_ema", "kl_gap", "l1"):
            row[key] = metrics.get(key)
        row["checkpoint"] = metrics.get("checkpoint_path")
        rows.append(row)
    sign = -1 if options.mode == "max" else 1

    def order(row):
        value = row[options.metric]
        return (value is None, sign * value if value is not None else 0.0)

    rows.sort(key=order)
    _write_csv(rows, storage.join(options.run_dir, "results.csv"))
    best = next((r for r in rows if r["checkpoint"]), None)
    if best is not None:
        target = storage.join(options.run_dir, "best")
        storage.delete_tree(target)
        trial_run = storage.parent(best["checkpoint"])
        source = checkpoint.best(trial_run, options.metric, options.mode) or best["checkpoint"]
        storage.copy_tree(source, target)
        best["best_dir"] = target
    return rows


def _write_csv(rows: list[dict[str, Any]], uri: str) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(uri, buffer.getvalue().encode())
