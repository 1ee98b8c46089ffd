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

import numpy as np
import torch

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


def kl_traces(metrics_file: Path, out: Path) -> Path | None:
    """KL(q(z|x)||N) and KL(q(z|x_hat)||N) against images seen, phase changes marked."""
    if not metrics_file.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    seen = [m["images_seen"] for m in lines]
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=120)
    axis.plot(seen, [m["kl_real"] for m in lines], label="KL real  q(z|x)")
    axis.plot(seen, [m["kl_fake"] for m in lines], label="KL fake  q(z|x̂)")
    for before, after in zip(lines, lines[1:], strict=False):
        if after["phase"] != before["phase"]:
            axis.axvline(after["images_seen"], color="grey", lw=0.6, ls=":")
            axis.text(
                after["images_seen"], axis.get_ylim()[1], f"{after['resolution']}px", fontsize=7
            )
    axis.set_xlabel("images seen")
    axis.set_ylabel("KL (nats)")
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
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
        traces = kl_traces(model.checkpoint_dir.parent / "metrics.jsonl", out_dir / "kl_traces.png")
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

    def images(ids: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(dataset.gather(ids, model.resolution))
        return to_unit_range(pixels.permute(0, 3, 1, 2))

    used, vectors, counts, _ = attribute_vectors(
        model.encode, images, labels[: dataset.train_rows], names, 64, seed
    )
    return AttributeVectors(used, vectors, counts, "")
