"""Per-trial overhead of a sweep: the same smoke training alone vs as one Tune trial.

    python bench/tune_overhead.py [--preset smoke] [--trials 2] [--repeats 2]

Times, in this same run, (a) `ray_jobs/train.py` and (b) `ray_jobs/tune.py` with a space
that pins every trial to the base config's own learning rates (so each trial trains
exactly what (a) trains), --scheduler none, and (c) the same with --scheduler pbt (single-
process trials side by side, a thread each; every perturbation pauses all trials and
restarts the weak ones from a strong one's checkpoint, which costs a process start). All
are whole processes (Ray start-up included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pioneer.config import preset

    lr = preset(args.preset).schedule[0].lr
    alone, swept, pbt, restarts = [], [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            space = Path(folder, "space.yaml")
            space.write_text(f"params:\n  schedule.0.lr: {{choice: [{lr}]}}\n")
            train = [sys.executable, "ray_jobs/train.py", "--preset", args.preset]
            alone.append(wall([*train, "--run-dir", f"{folder}/alone"])[0])
            sweep = [
                sys.executable, "ray_jobs/tune.py", "--preset", args.preset,
                "--space", str(space), "--trials", str(args.trials),
            ]  # fmt: skip
            swept.append(wall([*sweep, "--scheduler", "none", "--run-dir", f"{folder}/s"])[0])
            seconds, out = wall([*sweep, "--scheduler", "pbt", "--run-dir", f"{folder}/p"])
            pbt.append(seconds)
            restarts.append(out.count("trial continues from"))
    a, b, c = statistics.median(alone), statistics.median(swept), statistics.median(pbt)
    print(f"{args.preset}: training alone {a:.1f} s (median of {args.repeats}); "
          f"sweep of {args.trials} trial(s) {b:.1f} s; pbt sweep {c:.1f} s")  # fmt: skip
    print(f"  per trial {b / args.trials:.1f} s = {b / args.trials / a:.2f}x the run alone; "
          f"sweep / (trials x alone) = {b / (args.trials * a):.2f}")  # fmt: skip
    print(f"  pbt: {c / (args.trials * a):.2f}x (trials x alone), "
          f"{statistics.median(restarts):.0f} trial restart(s) from checkpoints")  # fmt: skip


if __name__ == "__main__":
    main()
