"""`pioneer figures`: the paper's figures for one checkpoint, as PNG files.

samples.png (Fig. 5), reconstructions.png (Fig. 2), interpolation.png (4-corner spherical
interpolation between reconstructions of held-out faces, Fig. 1 / supplement C),
attributes.png (input, reconstruction, one edit per attribute, Fig. 6),
attribute_sweep.png (one attribute from strength -2 to 2, Fig. 7) and kl_traces.png (the
KL terms over training from the run's metrics.jsonl, Fig. 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pioneer import storage
from pioneer.data import to_unit_range
from pioneer.editing import AttributeVectors, attribute_vectors
from pioneer.images import grid_image, save_png
from pioneer.sampling import slerp

DEFAULT_EDITS = ("Smiling", "Eyeglasses", "Male", "Blond_Hair", "Young", "Heavy_Makeup")


def interpolation_grid(model, corners: torch.Tensor, steps: int) -> torch.Tensor:
    """Decodings over a steps x steps grid spanned by 4 codes (top-left, top-right,
    bottom-left, bottom-right): slerp along the top and bottom edges, then down each column."""
    t = torch.linspace(0, 1, steps)
    top = slerp(corners[0], corners[1], t)  # (steps, D)
    bottom = slerp(corners[2], corners[3], t)
    rows = [model.decode(slerp(top[i], bottom[i], t)) for i in range(steps)]  # columns
    return torch.stack(rows, dim=1).flatten(0, 1)  # (steps * steps, 3, R, R), row-major


def read_metrics(metrics_file: str | Path) -> list[dict]:
    """The report lines of a run's metrics.jsonl, local or s3:// (events left out)."""
    text = storage.read_bytes(metrics_file).decode()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [m for m in lines if "event" not in m]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _phase_marks(axis, lines: list[dict]) -> None:
    top = axis.get_ylim()[1]
    for before, after in zip(lines, lines[1:], strict=False):
        if after["phase"] != before["phase"]:
            axis.axvline(after["images_seen"], color="grey", lw=0.6, ls=":")
            axis.text(after["images_seen"], top, f"{after['resolution']}px", fontsize=7)


def _kl_panel(axis, lines: list[dict]) -> None:
    seen = [m["images_seen"] for m in lines]
    axis.plot(seen, [m["kl_real"] for m in lines], label="KL real  q(z|x)")
    axis.plot(seen, [m["kl_fake"] for m in lines], label="KL fake  q(z|x̂)")
    axis.set_ylabel("KL (nats)")
    axis.legend(loc="best", fontsize=8)
    _phase_marks(axis, lines)


def kl_traces(metrics_file: str | Path, out: Path) -> Path | None:
    """KL(q(z|x)||N) and KL(q(z|x_hat)||N) against images seen, phase changes marked (Fig. 3)."""
    if not storage.exists(metrics_file):
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=120)
    _kl_panel(axis, read_metrics(metrics_file))
    axis.set_xlabel("images seen")
    figure.tight_layout()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out


def training_plot(run_dir: str | Path, out: str | Path) -> Path:
    """`pioneer plot`: KL terms, their gap (and margin), losses and img/s against images seen."""
    metrics_file = storage.join(run_dir, "metrics.jsonl")
    if not storage.exists(metrics_file):
        raise ValueError(f"no metrics.jsonl in {str(run_dir)!r}: not a run dir, or nothing yet")
    lines = read_metrics(metrics_file)
    if not lines:
        raise ValueError(f"{metrics_file} is empty")
    seen = [m["images_seen"] for m in lines]
    plt = _pyplot()
    figure, axes = plt.subplots(4, 1, figsize=(8, 10), dpi=110, sharex=True)
    _kl_panel(axes[0], lines)
    axes[1].plot(seen, [m["kl_gap"] for m in lines], label="KL gap (real - fake)")
    margins = [-m["margin"] if m.get("margin") is not None else float("nan") for m in lines]
    axes[1].plot(seen, margins, ls="--", color="red", label="-margin (Eq. 5 bound)")
    axes[1].axhline(0, color="black", lw=0.5)
    axes[1].set_ylabel("nats")
    for key, label, scale in (("loss_encoder", "encoder loss", 1), ("l1", "L1 x 10", 10)):
        axes[2].plot(seen, [m[key] * scale for m in lines], label=label)
    axes[2].plot(seen, [m["z_cos"] for m in lines], label="1 - cos")
    axes[2].set_ylabel("loss")
    axes[3].plot(seen, [m["images_per_s"] for m in lines], label="img/s")
    axes[3].set_ylabel("img/s")
    axes[3].set_xlabel("images seen")
    for axis in axes[1:]:
        axis.legend(loc="best", fontsize=8)
        _phase_marks(axis, lines)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, format="png")
    plt.close(figure)
    return out


def write_figures(
    model,
    dataset,
    out_dir: str | Path,
    attributes_file: str | None = None,
    edits: tuple[str, ...] = DEFAULT_EDITS,
    seed: int = 0,
    rows: int = 8,
) -> dict[str, str]:
    """Every figure into out_dir; returns {figure: path} (attribute figures need labels)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resolution = model.resolution
    holdout = to_unit_range(dataset.holdout(resolution))
    written: dict[str, str] = {}

    def save(name: str, images: torch.Tensor, nrow: int) -> None:
        written[name] = str(save_png(grid_image(images, nrow=nrow), out_dir / f"{name}.png"))

    save("samples", model.generate(rows * 4, seed=seed), rows)
    inputs = holdout[:rows]
    save("reconstructions", torch.cat([inputs, model.reconstruct(inputs)]), len(inputs))
    corners = model.encode(holdout[[0, 1, 2, 3] if len(holdout) >= 4 else [0] * 4])
    save("interpolation", interpolation_grid(model, corners, rows), rows)

    vectors = _vectors(model, dataset, attributes_file, seed)
    if vectors is not None:
        chosen = [name for name in edits if name in vectors.names] or vectors.names[:4]
        faces = holdout[: min(4, len(holdout))]
        tiles = []
        for face in faces.split(1):
            tiles += [face, model.reconstruct(face)]
            tiles += [model.edit(face, vectors.vector(name), 1.5) for name in chosen]
        save("attributes", torch.cat(tiles), 2 + len(chosen))
        strengths = torch.linspace(-2, 2, 9).tolist()
        sweep = [model.edit(faces[:1], vectors.vector(chosen[0]), s) for s in strengths]
        save("attribute_sweep", torch.cat([faces[:1], *sweep]), 1 + len(strengths))
        written["attribute_names"] = ",".join(chosen)
    if model.checkpoint_dir is not None:
        metrics_file = storage.join(storage.parent(model.checkpoint_dir), "metrics.jsonl")
        traces = kl_traces(metrics_file, out_dir / "kl_traces.png")
        if traces is not None:
            written["kl_traces"] = str(traces)
    return written


def _vectors(model, dataset, attributes_file: str | None, seed: int) -> AttributeVectors | None:
    """Vectors saved beside the checkpoint, else computed now from the data's labels."""
    try:
        return model.load_attributes()
    except ValueError:
        pass
    names, labels = dataset.attributes(attributes_file)
    if not names:
        return None

    used, vectors, counts, _ = attribute_vectors(
        model.encode,
        lambda ids: to_unit_range(dataset.images(ids, model.resolution)),
        labels[: dataset.train_rows],
        names,
        64,
        seed,
    )
    return AttributeVectors(used, vectors, counts, "")
