"""`pioneer` command line: prepare datasets; sample, reconstruct and interpolate from a checkpoint.

    pioneer prepare SRC OUT --resolutions 4,8,16,32,64 [--attributes FILE] [--crop face]
    pioneer eval CKPT [--data PATH] --metrics psnr,ssim,ms_swd,probe,fid,lpips,ppl --out m.json
    pioneer attributes CKPT [--data PATH] [--attributes FILE] [--per-set 64] [--out FILE]
    pioneer edit CKPT IMAGE --attribute Smiling[=1.5] [--attribute ...] [--vectors FILE] --out e.png
    pioneer figures CKPT [--data PATH] [--attributes FILE] --out DIR
    pioneer plot RUN_DIR [--out training.png]
    pioneer sample CKPT --n 16 --seed 0 --out samples.png
    pioneer reconstruct CKPT IMAGE... --out recon.png
    pioneer interpolate CKPT IMAGE_A IMAGE_B --steps 8 --out path.png

SRC and OUT are local folders or s3://bucket/prefix URIs. CKPT is a checkpoint directory or
a run directory (its latest checkpoint is used).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from pioneer.checkpoint import CheckpointError
from pioneer.evaluation import EvalOptions
from pioneer.figures import DEFAULT_EDITS
from pioneer.precision import PRECISIONS
from pioneer.prepare import PrepareOptions


def _add_precision(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the networks' forward passes (auto: bf16 where the CPU/GPU has it natively)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pioneer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = PrepareOptions()
    prepare = commands.add_parser("prepare", help="image folder / s3 prefix -> Parquet shards")
    prepare.add_argument("src", help="image folder or s3://bucket/prefix (read recursively)")
    prepare.add_argument("out", help="output folder or s3://bucket/prefix (resumes if present)")
    prepare.add_argument(
        "--resolutions", default=",".join(map(str, defaults.resolutions)), help="e.g. 4,8,16,32"
    )
    prepare.add_argument("--attributes", help="CelebA-style attribute file (list_attr_celeba.txt)")
    prepare.add_argument("--crop", default=defaults.crop, choices=("face", "center", "none"))
    prepare.add_argument(
        "--shard-size", type=int, default=defaults.shard_size, help="images per shard (0: auto)"
    )
    prepare.add_argument(
        "--workers", type=int, default=defaults.workers, help="processes (0: one per core)"
    )
    prepare.add_argument(
        "--upscale", action="store_true", help="upscale small images instead of skipping them"
    )
    prepare.add_argument("--max-aspect", type=float, default=defaults.max_aspect)

    options = EvalOptions()
    evaluate = commands.add_parser("eval", help="metrics of a checkpoint and its baselines")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data", help="prepared dataset or image folder (default: the run's)")
    evaluate.add_argument("--attributes", help="CelebA-style attribute file (image folders)")
    evaluate.add_argument("--metrics", default=",".join(options.metrics), help="comma-separated")
    evaluate.add_argument("--out", default="metrics.json")
    evaluate.add_argument("--images", type=int, default=options.images, help="N for FID, MS-SWD")
    evaluate.add_argument("--ppl-samples", type=int, default=options.ppl_samples)
    evaluate.add_argument("--probe-images", type=int, default=options.probe_images)
    evaluate.add_argument("--batch", type=int, default=options.batch)
    evaluate.add_argument("--seed", type=int, default=options.seed)
    evaluate.add_argument("--no-baselines", action="store_true", help="skip mean face and PCA")
    evaluate.add_argument("--inception-weights", help="Inception-v3 weights file (FID)")
    evaluate.add_argument("--lpips-weights", help="LPIPS backbone weights file (LPIPS, PPL)")
    evaluate.add_argument(
        "--lpips-net", default=options.lpips_net, choices=("alex", "vgg", "squeeze")
    )
    evaluate.add_argument("--device", default=options.device, choices=("auto", "cpu", "cuda"))
    _add_precision(evaluate)

    attributes = commands.add_parser("attributes", help="attribute vectors for editing (Eq. 6)")
    attributes.add_argument("checkpoint")
    attributes.add_argument("--data", help="prepared dataset or image folder (default: the run's)")
    attributes.add_argument("--attributes", help="CelebA-style attribute file (image folders)")
    attributes.add_argument("--per-set", type=int, default=64, help="images with / without each")
    attributes.add_argument("--seed", type=int, default=0)
    attributes.add_argument("--out", help="default: attributes.pt beside the checkpoint")

    edit = commands.add_parser("edit", help="input, reconstruction and attribute edits")
    edit.add_argument("checkpoint")
    edit.add_argument("image")
    edit.add_argument(
        "--attribute", action="append", required=True, help="NAME or NAME=STRENGTH, repeatable"
    )
    edit.add_argument("--strength", type=float, default=1.0, help="for names without =STRENGTH")
    edit.add_argument("--vectors", help="attribute file (default: the one beside the checkpoint)")
    edit.add_argument("--out", default="edit.png")

    figures = commands.add_parser("figures", help="the paper's figures for a checkpoint")
    figures.add_argument("checkpoint")
    figures.add_argument("--data", help="prepared dataset or image folder (default: the run's)")
    figures.add_argument("--attributes", help="CelebA-style attribute file (image folders)")
    figures.add_argument("--edits", default=",".join(DEFAULT_EDITS), help="attributes to show")
    figures.add_argument("--seed", type=int, default=0)
    figures.add_argument("--out", default="figures")

    plot = commands.add_parser("plot", help="KL terms, gap, losses and img/s of a run")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default="training.png")

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
    for command in (attributes, edit, figures, sample, reconstruct, interpolate):
        _add_precision(command)
    return parser


def _prepare(args: argparse.Namespace) -> str:
    from pioneer.prepare import prepare

    try:
        resolutions = tuple(int(r) for r in args.resolutions.split(","))
    except ValueError:
        raise ValueError(
            f"--resolutions must be comma-separated integers, got {args.resolutions!r}"
        ) from None
    options = PrepareOptions(
        resolutions=resolutions,
        crop=args.crop,
        attributes=args.attributes,
        shard_size=args.shard_size,
        upscale=args.upscale,
        max_aspect=args.max_aspect,
        workers=args.workers,
    )
    manifest = prepare(args.src, args.out, options)
    counts = manifest["counts"]
    skipped = {k: v for k, v in counts["skipped"].items() if v}
    print(
        f"prepare: wrote {counts['written']:,} of {counts['read']:,} images in "
        f"{len(manifest['shards'])} shards; skipped {json.dumps(skipped)}; "
        f"converted {json.dumps(counts['converted'])}; upscaled {counts['upscaled']}",
        file=sys.stderr,
    )
    return args.out


def _eval(args: argparse.Namespace) -> str:
    from pioneer.evaluation import evaluate_checkpoint
    from pioneer.images import atomic_write_text

    options = EvalOptions(
        metrics=tuple(m for m in args.metrics.split(",") if m),
        images=args.images,
        ppl_samples=args.ppl_samples,
        probe_images=args.probe_images,
        batch=args.batch,
        seed=args.seed,
        baselines=not args.no_baselines,
        inception_weights=args.inception_weights,
        lpips_weights=args.lpips_weights,
        lpips_net=args.lpips_net,
        device=args.device,
        precision=args.precision,
    )
    report = evaluate_checkpoint(args.checkpoint, args.data, args.attributes, options)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    subjects = report["subjects"]
    keys = [k for k in next(iter(subjects.values())) if not k.startswith("probe_")]
    keys += [k for k in ("probe_accuracy", "probe_majority") if k in next(iter(subjects.values()))]
    print(f"{'':>16}" + "".join(f"{name:>12}" for name in subjects), file=sys.stderr)
    for key in dict.fromkeys(keys):
        row = "".join(f"{subjects[n].get(key, float('nan')):12.4g}" for n in subjects)
        print(f"{key:>16}{row}", file=sys.stderr)
    for name, value in report["reference"].items():
        print(f"{name:>16}{value:12.4g}  (real vs real)", file=sys.stderr)
    if report["errors"]:
        lines = "; ".join(f"{k}: {v}" for k, v in report["errors"].items())
        raise MetricFailed(f"{lines} (the other metrics are in {args.out})")
    return args.out


class MetricFailed(RuntimeError):
    pass


def _attributes(args: argparse.Namespace) -> str:

    from pioneer import checkpoint, storage
    from pioneer.api import Pioneer
    from pioneer.data import to_unit_range
    from pioneer.dataset import open_run_data
    from pioneer.editing import VECTORS_FILE, AttributeVectors, attribute_vectors

    if args.per_set < 1:
        raise ValueError(f"--per-set must be >= 1, got {args.per_set}")
    model = Pioneer.from_checkpoint(args.checkpoint, precision=args.precision)
    dataset = open_run_data(model.config.data, args.data, model.resolution)
    names, labels = dataset.attributes(args.attributes)
    if not names:
        raise ValueError(f"{dataset.description} has no attribute columns: pass --attributes FILE")
    rows = labels[: dataset.train_rows]  # the held-out rows stay unseen

    used, vectors, counts, skipped = attribute_vectors(
        model.encode,
        lambda ids: to_unit_range(dataset.images(ids, model.resolution)),
        rows,
        names,
        args.per_set,
        args.seed,
    )
    identity = checkpoint.identity(model.checkpoint_dir)
    out = args.out or storage.join(model.checkpoint_dir, VECTORS_FILE)
    AttributeVectors(used, vectors, counts, identity).save(out)
    print(f"attributes: {len(used)} vectors from up to {args.per_set} images each", file=sys.stderr)
    if skipped:
        print(
            f"attributes: skipped, no images with or without: {', '.join(skipped)}", file=sys.stderr
        )
    return str(out)


def _figures(args: argparse.Namespace) -> str:
    from pioneer.api import Pioneer
    from pioneer.dataset import open_run_data
    from pioneer.figures import write_figures

    model = Pioneer.from_checkpoint(args.checkpoint, precision=args.precision)
    dataset = open_run_data(model.config.data, args.data, model.resolution)
    edits = tuple(n for n in args.edits.split(",") if n)
    written = write_figures(model, dataset, args.out, args.attributes, edits, args.seed)
    for name, path in written.items():
        print(f"figures: {name}: {path}", file=sys.stderr)
    return args.out


def _edits(args: argparse.Namespace) -> dict[str, float]:
    edits = {}
    for item in args.attribute:
        name, _, value = item.partition("=")
        try:
            edits[name] = float(value) if value else args.strength
        except ValueError:
            raise ValueError(f"--attribute {item!r}: the strength must be a number") from None
    return edits


def _edit(args: argparse.Namespace) -> Path:
    from pioneer.api import Pioneer
    from pioneer.images import save_grid

    if not Path(args.image).is_file():
        raise ValueError(f"image {args.image!r} does not exist")
    model = Pioneer.from_checkpoint(args.checkpoint, precision=args.precision)
    model.load_attributes(args.vectors)
    edits = _edits(args)
    x = model.load_images([args.image])
    rows = [x, model.reconstruct(x)]
    rows += [model.edit(x, name, amount) for name, amount in edits.items()]
    if len(edits) > 1:
        rows.append(model.edit(x, edits))  # all of them at once
    return save_grid(torch.cat(rows), args.out, nrow=len(rows))


def _run(args: argparse.Namespace) -> Path | str:
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "attributes":
        return _attributes(args)
    if args.command == "edit":
        return _edit(args)
    if args.command == "figures":
        return _figures(args)
    if args.command == "plot":
        from pioneer.figures import training_plot

        return training_plot(args.run_dir, args.out)
    from pioneer.api import Pioneer
    from pioneer.images import save_grid

    for path in getattr(args, "images", []) + [
        getattr(args, n, None) for n in ("image_a", "image_b")
    ]:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"image {path!r} does not exist")
    model = Pioneer.from_checkpoint(args.checkpoint, precision=args.precision)
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
    except (CheckpointError, ValueError, OSError, MetricFailed) as error:
        print(f"pioneer: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\npioneer: interrupted; the same command resumes where it stopped", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
