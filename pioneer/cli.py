"""`pioneer` command line: sample, reconstruct and interpolate from a checkpoint.

    pioneer sample CKPT --n 16 --seed 0 --out samples.png
    pioneer reconstruct CKPT IMAGE... --out recon.png
    pioneer interpolate CKPT IMAGE_A IMAGE_B --steps 8 --out path.png

CKPT is a checkpoint directory or a run directory (its latest checkpoint is used).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from pioneer.checkpoint import CheckpointError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pioneer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="a grid of random faces")
    sample.add_argument("checkpoint")
    sample.add_argument("--n", type=int, default=16, help="number of samples")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")

    reconstruct = commands.add_parser("reconstruct", help="images (top row) and reconstructions")
    reconstruct.add_argument("checkpoint")
    reconstruct.add_argument("images", nargs="+")
    reconstruct.add_argument("--out", default="reconstructions.png")

    interpolate = commands.add_parser("interpolate", help="spherical path between two images")
    interpolate.add_argument("checkpoint")
    interpolate.add_argument("image_a")
    interpolate.add_argument("image_b")
    interpolate.add_argument("--steps", type=int, default=8)
    interpolate.add_argument("--out", default="interpolation.png")
    return parser


def _run(args: argparse.Namespace) -> Path:
    from pioneer.api import Pioneer
    from pioneer.images import save_grid

    for path in getattr(args, "images", []) + [
        getattr(args, n, None) for n in ("image_a", "image_b")
    ]:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"image {path!r} does not exist")
    model = Pioneer.from_checkpoint(args.checkpoint)
    if args.command == "sample":
        if not 1 <= args.n <= 1024:
            raise ValueError(f"--n must be in 1..1024, got {args.n}")
        images = model.generate(args.n, seed=args.seed)
        return save_grid(images, args.out, nrow=max(1, math.ceil(math.sqrt(args.n))))
    if args.command == "reconstruct":
        real = model.load_images(args.images)
        return save_grid(torch.cat([real, model.reconstruct(real)]), args.out, nrow=len(real))
    if not 2 <= args.steps <= 64:
        raise ValueError(f"--steps must be in 2..64, got {args.steps}")
    real = model.load_images([args.image_a, args.image_b])
    z = model.encode(real)
    path = model.interpolate(z[0], z[1], steps=args.steps)
    return save_grid(path, args.out, nrow=args.steps)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = _run(args)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"pioneer: error: {error}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
