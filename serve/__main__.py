"""python -m serve --checkpoint PATH [--vectors attributes.pt] [--host H] [--port N] [--set k=v]

Starts Ray (or joins RAY_ADDRESS), runs the service and serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run dir, or s3://")
    parser.add_argument("--vectors", help="attributes.pt (default: the one beside the checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every address")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a service option (serve/options.py), e.g. --set max_batch_size=16",
    )
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> dict:
    from serve.options import OptionsError

    options: dict = {"checkpoint": args.checkpoint}
    if args.vectors:
        options["vectors"] = args.vectors
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise OptionsError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value  # a plain string
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pioneer.checkpoint import CheckpointError
    from serve.options import OptionsError, ServeOptions

    try:
        ServeOptions.from_args(options_of(args))
    except (OptionsError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    from serve.app import build

    try:
        app = build(options_of(args))
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    ray.init(address=os.environ.get("RAY_ADDRESS"))
    # Ray's core worker installs a SIGTERM handler that aborts the process: replace it, so
    # that SIGTERM (also while the app is still starting) shuts the service down cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="pioneer", route_prefix="/")
        print(f"pioneer: serving on http://{args.host}:{args.port}/ (docs at /docs)", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    print("pioneer: shutting down", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
