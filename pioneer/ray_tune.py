"""Ray Tune sweeps over the library loop, two ways:

- asha / none: each trial a full Ray Train run (Train V2 pattern: a Tune function drives a
  TorchTrainer; Train's reports reach Tune through a callback), any number of workers.
- pbt: each trial one process running the loop itself with a TuneSession, so Tune holds
  its checkpoints and can restart it from another trial's with mutated margins and rates.

    RUN_DIR/
        tune/           Tune's experiment state (an interrupted sweep resumes from it);
                        pbt: tune/<id>/checkpoint_*/ are the trials' checkpoints
        trials/<id>/    each trial's run dir: metrics.jsonl, grids (asha: checkpoints too)
        results.csv     one row per trial: hyperparameters, final metrics, checkpoint
        best/           a copy of the best trial's best checkpoint
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

from pioneer import checkpoint, storage
from pioneer.config import Config, ConfigError, from_dict, to_dict
from pioneer.ray_train import local_directory, make_trainer
from pioneer.rundir import RunDir
from pioneer.schedule import total_images
from pioneer.space import Param, Space, check_mutable, clip, config_for
from pioneer.training import train

DRIVER_CPU = 0.1  # a trial's driver function only waits on its TorchTrainer


@dataclass(frozen=True)
class SweepOptions:
    run_dir: str  # local folder or s3://bucket/prefix/name
    trials: int = 2  # number of trials (Tune's num_samples)
    metric: str = "heldout_psnr_ema"  # what the scheduler and the table rank by
    mode: str = "max"  # max or min
    scheduler: str = "asha"  # asha (early stopping on the metric), pbt, or none
    search: str = "random"  # random or optuna
    workers_per_trial: int = 1  # Ray Train workers in each trial
    use_gpu: bool = False  # one GPU per worker
    seed: int = 0  # for the search algorithm
    # pbt: images seen between perturbations (0: the base config's train.checkpoint_images,
    # so that every perturbation compares fresh held-out figures and clones a fresh checkpoint)
    perturbation_images: int = 0

    def check(self) -> None:
        """Refuse combinations that cannot run, before any trial starts."""
        if self.scheduler not in ("asha", "pbt", "none"):
            raise ConfigError(f"unknown scheduler {self.scheduler!r} (asha, pbt or none)")
        if self.search not in ("random", "optuna"):
            raise ConfigError(f"unknown search {self.search!r} (random or optuna)")
        if self.scheduler != "pbt":
            return
        if self.workers_per_trial != 1:
            raise ConfigError("--scheduler pbt runs single-worker trials: --workers-per-trial 1")
        if self.search != "random":
            raise ConfigError("--scheduler pbt explores by itself: use --search random")
        if self.metric.startswith("eval_"):
            raise ConfigError(
                f"--scheduler pbt compares trials at checkpoints, where {self.metric} is not "
                "always measured: use a heldout_* figure (or a training one such as kl_gap)"
            )
        if self.perturbation_images < 0:
            raise ConfigError("--perturbation-images must be >= 0")


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


class TuneSession:
    """The loop's Session in a single-process Tune trial (pbt). Only checkpoint reports
    reach Tune: Tune stores each checkpoint in the trial's Tune directory, PBT clones the
    best trials' latest ones into the weak trials, and every result it compares carries a
    fresh held-out figure."""

    rank, world_size, local_world_size = 0, 1, 1

    def __init__(self, run_dir: str, metric: str):
        self.run_dir = run_dir
        self.metric = metric
        self.latest: dict[str, Any] = {}  # each figure's latest value (eval_* come rarely)

    def restore(self) -> Path | None:
        found = tune.get_checkpoint()  # own (resumed, paused) or a better trial's (exploit)
        if found is None:
            return None
        print(f"pioneer: trial continues from {found.path}", flush=True)
        return local_directory(found)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if "event" in metrics:  # collapse-guard events: not a training result
            return
        self.latest.update(metrics)
        if checkpoint_dir is None:
            return
        try:
            if self.metric not in self.latest:
                raise RuntimeError(
                    f"pbt ranks trials by {self.metric!r} at every checkpoint, but the loop "
                    f"reported no such figure (it has {sorted(self.latest)})"
                )
            found = tune.Checkpoint.from_directory(str(checkpoint_dir))
            tune.report(dict(self.latest), checkpoint=found)
        finally:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _pbt_trial(params: dict[str, Any], base: dict, run_dir: str, metric: str):
    config = config_for(from_dict(base), params)
    trial_dir = storage.join(run_dir, "trials", tune.get_context().get_trial_id())
    train(config, TuneSession(trial_dir, metric))


class _Clip:
    """PBT's custom_explore_fn: mutated values back inside the space's ranges."""

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return {**config, **{p.key: clip(p, config[p.key]) for p in self.params}}


class _PBT(PopulationBasedTraining):
    """PBT that leaves a trial's last result alone: an exploit there would only hand the
    finished trial another's final checkpoint and result."""

    def __init__(self, total_images: int, **kwargs):
        super().__init__(**kwargs)
        self.total_images = total_images

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._time_attr, 0) >= self.total_images:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _trial_dirname(trial) -> str:
    return trial.trial_id  # RUN_DIR/tune/<id> beside RUN_DIR/trials/<id>


def sweep(base: Config, space: Space, options: SweepOptions) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns the results table, best first."""
    options.check()
    if options.scheduler == "pbt":
        check_mutable(space)
    run_dir = RunDir.at(options.run_dir).uri
    # An asha trial holds DRIVER_CPU + one CPU per worker (or one GPU per worker): a 2-core
    # box runs one at a time (its worker then uses both cores), a cluster several. A pbt
    # trial is one process holding one CPU (or GPU): a population of 2 runs side by side.
    resources = ray.cluster_resources()
    pbt = options.scheduler == "pbt"
    per_trial = 1 if pbt else DRIVER_CPU + options.workers_per_trial
    concurrent = math.floor(resources.get("CPU", 1) / per_trial)
    if options.use_gpu:
        concurrent = int(resources.get("GPU", 0)) // options.workers_per_trial
    concurrent = max(1, concurrent)
    if concurrent > 1 and not base.train.threads:  # trials side by side: a thread per CPU
        base = replace(base, train=replace(base.train, threads=1))
    if pbt:
        if options.use_gpu:
            base = replace(base, train=replace(base.train, device="cuda"))
        trainable = tune.with_parameters(
            _pbt_trial, base=to_dict(base), run_dir=run_dir, metric=options.metric
        )
        trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": int(options.use_gpu)})
    else:
        trainable = tune.with_parameters(
            _trial,
            base=to_dict(base),
            run_dir=run_dir,
            workers=options.workers_per_trial,
            use_gpu=options.use_gpu,
            metric=options.metric,
        )
        trainable = tune.with_resources(trainable, {"cpu": DRIVER_CPU})
    # pbt: Tune keeps the latest checkpoints of each trial; a clone is taken from a paused
    # trial's latest, so a few suffice (the exploiting trial starts before many more).
    keep = max(4, base.train.keep_checkpoints) if pbt else None
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
                scheduler=_scheduler(base, space, options),
                search_alg=_search(options),
                max_concurrent_trials=concurrent,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=run_dir,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
            ),
        )
    results = tuner.fit()
    return _table(results, space, options)


def _scheduler(base: Config, space: Space, options: SweepOptions):
    if options.scheduler == "none":
        return None
    total = total_images(base.schedule)
    if options.scheduler == "asha":
        grace = max(1, base.schedule[0].images)  # every trial gets its first phase
        return ASHAScheduler(time_attr="images_seen", max_t=total, grace_period=grace)
    if options.scheduler == "pbt":
        # Synchronous: every trial pauses at each perturbation until all have reached it, so
        # scores compare at the same images seen (and so the same resolution), and a
        # population larger than the machine takes turns. Choices shift to a neighbour;
        # numbers are scaled by 0.8 or 1.2 (or resampled, p=0.25), then clipped to range.
        return _PBT(
            total_images=total,
            time_attr="images_seen",
            perturbation_interval=options.perturbation_images or base.train.checkpoint_images,
            hyperparam_mutations={
                p.key: list(p.args) if p.kind == "choice" else _distribution(p)
                for p in space.params
            },
            custom_explore_fn=_Clip(space.params),
            synch=True,
            log_config=True,
        )
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
        trial_id = Path(result.path).name  # _trial_dirname
        row = {"trial": trial_id, "status": "error" if result.error else "done"}
        row.update({f"param:{p.key}": (result.config or {}).get(p.key) for p in space.params})
        for key in (options.metric, "images_seen", "heldout_psnr_ema", "kl_gap", "l1"):
            row[key] = metrics.get(key)
        # asha: the Train run's checkpoint path; pbt: the trial's latest Tune checkpoint
        found = metrics.get("checkpoint_path") or (result.checkpoint and result.checkpoint.path)
        row["checkpoint"] = found and _location(found, options.run_dir)
        rows.append(row)
    sign = -1 if options.mode == "max" else 1

    def order(row):  # furthest trained first: ASHA's stopped trials scored at a lower
        # resolution, and held-out figures at different resolutions do not compare
        value = row[options.metric]
        seen = row["images_seen"] or 0
        return (value is None, -seen, sign * value if value is not None else 0.0)

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


def _location(path: str, run_dir: str) -> str:
    """A checkpoint path as Ray gives it (pyarrow's: no s3:// scheme) as a storage location."""
    if storage.is_remote(run_dir) and not storage.is_remote(path):
        return "s3://" + path.lstrip("/")
    return path


def _write_csv(rows: list[dict[str, Any]], uri: str) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(uri, buffer.getvalue().encode())
