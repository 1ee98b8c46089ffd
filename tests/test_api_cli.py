"""The Python API and the `pioneer` CLI on a finished smoke run."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from pioneer import Pioneer
from pioneer.cli import main
from tests.conftest import FACES


@pytest.fixture(scope="module")
def model(trained_run):
    return Pioneer.from_checkpoint(trained_run)


def test_from_checkpoint_gives_the_final_phase(model):
    assert model.resolution == 16 and model.phase == 2 and model.alpha == 1.0
    assert model.latent_size == 32


def test_encode_decode_generate_reconstruct(model):
    x = model.load_images(FACES[:3])
    assert x.shape == (3, 3, 16, 16) and -1 <= x.min() and x.max() <= 1
    z = model.encode(x)
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert model.decode(z).shape == (3, 3, 16, 16)
    assert model.reconstruct(x).shape == (3, 3, 16, 16)
    a, b = model.generate(4, seed=7), model.generate(4, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, model.generate(4, seed=8))
    # Other sizes are resized to the model's resolution.
    assert model.encode(torch.zeros(2, 3, 40, 40)).shape == (2, 32)


def test_inference_precision_bf16_is_close_to_fp32(trained_run):
    fp32 = Pioneer.from_checkpoint(trained_run, precision="fp32")
    bf16 = Pioneer.from_checkpoint(trained_run, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert Pioneer.from_checkpoint(trained_run).precision in ("fp32", "bf16")  # auto
    x = fp32.load_images(FACES[:4])
    z32, z16 = fp32.encode(x), bf16.encode(x)
    assert z16.dtype == torch.float32 and (z32 * z16).sum(dim=1).min() > 0.99  # cosine
    images32, images16 = fp32.decode(z32), bf16.decode(z32)
    assert images16.dtype == torch.float32 and not torch.equal(images32, images16)
    assert (images32 - images16).abs().mean() < 0.02  # of a [-1, 1] range
    with pytest.raises(ValueError, match="precision must be one of"):
        Pioneer.from_checkpoint(trained_run, precision="half")


def test_interpolate_is_spherical_with_the_endpoints_included(model):
    z = model.encode(model.load_images(FACES[:2]))
    path = model.interpolate(z[0], z[1], steps=5)
    assert path.shape == (5, 3, 16, 16)
    torch.testing.assert_close(path[0], model.decode(z[:1])[0])
    torch.testing.assert_close(path[-1], model.decode(z[1:])[0])


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(3, 16, 16), r"\(N, 3, H, W\)"),
        (torch.zeros(1, 1, 16, 16), r"\(N, 3, H, W\)"),
        (torch.zeros(1, 3, 16, 20), "square"),
        (torch.full((1, 3, 16, 16), 255.0), r"in \[-1, 1\]"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_clear_errors(model, bad, message):
    with pytest.raises(ValueError, match=message):
        model.encode(bad)


def test_bad_latents_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        model.decode(torch.zeros(2, 31))
    with pytest.raises(ValueError, match="NaN"):
        model.decode(torch.full((1, 32), float("inf")))
    with pytest.raises(ValueError, match="2 steps"):
        model.interpolate(torch.ones(32), torch.ones(32), steps=1)


def test_cli_sample_reconstruct_interpolate(trained_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(trained_run), "--n", "9", "--seed", "1", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 3 * 16
    out = tmp_path / "r.png"
    assert (
        main(["reconstruct", str(trained_run), str(FACES[0]), str(FACES[1]), "--out", str(out)])
        == 0
    )
    assert out.stat().st_size > 0
    out = tmp_path / "i.png"
    args = ["interpolate", str(trained_run), str(FACES[0]), str(FACES[1]), "--steps", "6"]
    assert main([*args, "--out", str(out)]) == 0
    assert Image.open(out).size[0] > Image.open(out).size[1]
    out = tmp_path / "s32.png"
    assert main(["sample", str(trained_run), "--precision", "fp32", "--out", str(out)]) == 0
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["sample", str(trained_run), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "{tmp}/nowhere"], "does not exist"),
        (["sample", "{tmp}"], "neither a checkpoint"),
        (["reconstruct", "{run}", "{tmp}/missing.jpg"], "missing.jpg' does not exist"),
        (["reconstruct", "{run}", "{tmp}/notes.jpg"], "cannot read image"),
        (["sample", "{run}", "--n", "0"], "--n must be in"),
        (["interpolate", "{run}", "{face}", "{face}", "--steps", "1"], "--steps must be in"),
    ],
)
def test_cli_errors_are_one_line_and_nonzero(trained_run, tmp_path, capsys, args, message):
    (tmp_path / "notes.jpg").write_text("not a jpeg")
    filled = [a.format(tmp=tmp_path, run=trained_run, face=FACES[0]) for a in args]
    assert main(filled) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("pioneer: error:")


@pytest.mark.slow
def test_console_script_is_installed(trained_run, tmp_path):
    out = tmp_path / "s.png"
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "pioneer"), "sample", str(trained_run), "--n", "4", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_plot_draws_the_training_curves(trained_run, tmp_path, capsys):
    out = tmp_path / "training.png"
    assert main(["plot", str(trained_run), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (880, 1100)
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
