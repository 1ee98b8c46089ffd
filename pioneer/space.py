"""Search spaces for sweeps: YAML over the same dotted keys as `--set`, checked up front.

    metric: heldout_psnr_ema        # optional: the default --metric / --mode
    mode: max
    params:
      schedule.*.lr: {loguniform: [0.001, 0.002]}   # every phase (N, A-B, A- or *)
      schedule.4-.margin: {uniform: [0.2, 0.6]}     # 64 px and up
      schedule.3.margin: {choice: [null, 0.2]}      # switch the margin on at 32 px, or not
      schedule.5.margin_after_images: {randint: [0, 1200001]}  # where in 128 px it starts
      loss.recon_weight: {choice: [5, 10, 20]}
      train.decoder_steps: {randint: [1, 3]}        # 1 or 2 (upper bound excluded)

Kinds: uniform [low, high], loguniform [low, high] (low > 0), quniform [low, high, q],
randint [low, high) and choice [values...]. Every key is tried with its extreme values on
the base config (and the config validated) before any trial starts, so a typo or a bad
range fails with the key named. Free of Ray: pioneer.ray_tune turns a Space into Tune's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pioneer.config import Config, ConfigError, apply_overrides, validate

KINDS = {"uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2, "choice": None}


@dataclass(frozen=True)
class Param:
    key: str  # a dotted config key, as for --set
    kind: str  # one of KINDS
    args: tuple  # the kind's arguments


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    metric: str | None = None  # the space file's suggestion for --metric
    mode: str | None = None  # and --mode


def load_space(path: str | Path, base: Config) -> Space:
    """Read and check a space file against the config that the trials start from."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the space file {str(path)!r}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"space file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise ConfigError(f"space file {str(path)!r} needs a `params:` mapping of keys")
    unknown = sorted(set(data) - {"params", "metric", "mode"})
    if unknown:
        raise ConfigError(f"space file {str(path)!r}: unknown top-level key(s) {unknown}")
    if data.get("mode") not in (None, "min", "max"):
        raise ConfigError(f"space file {str(path)!r}: mode must be min or max")
    params = tuple(_param(key, spec) for key, spec in data["params"].items())
    if not params:
        raise ConfigError(f"space file {str(path)!r} has no params")
    for param in params:
        for value in extremes(param):
            try:
                validate(config_for(base, {param.key: value}))
            except ConfigError as error:
                raise ConfigError(f"space key {param.key!r} = {value!r}: {error}") from None
    return Space(params, data.get("metric"), data.get("mode"))


def _param(key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"space key {key!r} must be a dotted config key")
    if not isinstance(spec, dict) or len(spec) != 1:
        kinds = ", ".join(KINDS)
        raise ConfigError(f"space key {key!r}: give one of {kinds}, e.g. {{uniform: [0.2, 0.6]}}")
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"space key {key!r}: unknown kind {kind!r} (use {', '.join(KINDS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"space key {key!r}: {kind} needs a list of values")
    count = KINDS[kind]
    if count is not None:
        if len(args) != count or not all(_number(a) for a in args):
            raise ConfigError(f"space key {key!r}: {kind} needs {count} numbers, got {args!r}")
        low, high = args[0], args[1]
        if not low < high:
            raise ConfigError(f"space key {key!r}: {kind} range needs low < high, got {args!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"space key {key!r}: loguniform needs low > 0, got {low}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"space key {key!r}: randint needs integers, got {args!r}")
        if kind == "quniform" and args[2] <= 0:
            raise ConfigError(f"space key {key!r}: quniform needs q > 0, got {args[2]}")
    return Param(key, kind, tuple(args))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def extremes(param: Param) -> list[Any]:
    """The values a check tries: both ends of a range, every choice."""
    if param.kind == "choice":
        return list(param.args)
    if param.kind == "randint":
        return [param.args[0], param.args[1] - 1]
    return [param.args[0], param.args[1]]


# Keys that population-based training may change mid-run: they steer the optimisation, not
# the networks' shapes or the schedule's length, so one trial's checkpoint continues under
# another trial's values.
MUTABLE = re.compile(
    r"schedule\.[^.]+\.(lr|margin|margin_after_images)|loss\.[a-z_]+|train\.decoder_steps"
)


def check_mutable(space: Space) -> None:
    """Refuse a space that PBT cannot mutate during training, naming the first bad key."""
    for param in space.params:
        if not MUTABLE.fullmatch(param.key):
            raise ConfigError(
                f"space key {param.key!r} cannot change during training (pbt mutates only "
                "schedule.<phases>.lr, .margin, .margin_after_images, loss.* and "
                "train.decoder_steps); use --scheduler asha to search it"
            )


def clip(param: Param, value: Any) -> Any:
    """A mutated value brought back into the param's range and grid (PBT multiplies
    numbers by 0.8 or 1.2, which can leave both)."""
    if param.kind == "choice" or value is None:
        return value
    low, high = extremes(param)
    value = min(max(value, low), high)
    if param.kind == "quniform":
        value = round(value / param.args[2]) * param.args[2]
    return int(round(value)) if param.kind == "randint" else value


def config_for(base: Config, values: dict[str, Any]) -> Config:
    """The base config with a trial's values set (keys as for --set)."""

    def plain(value: Any) -> Any:
        value = value.item() if hasattr(value, "item") else value  # Tune samples numpy scalars
        if isinstance(value, float) and value.is_integer():
            return int(value)  # quniform's 300000.0 for an integer key (float keys take ints)
        return value

    return apply_overrides(
        base, [f"{key}={json.dumps(plain(value))}" for key, value in values.items()]
    )
